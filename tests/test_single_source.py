"""STYLE property 1: transition formulas live in flowdppo/sde.py and nowhere else (docs/failure_modes.md: step-0 σ, CPS scale).

Every .py under flowdppo/ and analysis/ other than flowdppo/sde.py is scanned.  Comments and string
literals (docstrings that *describe* a formula) are blanked first with `tokenize`, then the remaining
code is matched against regexes for the pieces of transition math that have been copied, and then
diverged, in published code:
  * the per-step std factor √(−dt) / √(σ − σ_next) (the Flow-SDE/Dance std);
  * CPS's mixing angle sin/cos(η·π/2);
  * the σ = 1 rule: a 0.99 clamp (clamp/clip/min/where(…0.99…), max=0.99, σ < 0.99), `sigmas[1]` as a
    substitute, or a `σ == 1` / `σ >= 1` test on a σ;
  * Flow-SDE's pre-factor η·√(σ/(1 − σ)).
`find_violations` is exercised on planted snippets (each must be caught, prose must not be) so the test
cannot pass vacuously.
"""
from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("flowdppo", "analysis")
THE_SOURCE = REPO / "flowdppo" / "sde.py"

_SIGMA = r"(?:sigma|sig|s|t|σ)\w*(?:\s*\[[^\]]*\])?"
_SIGMA_NAME = r"(?:sigma\w*|sig\b|sig_\w+|σ\w*)(?:\s*\[[^\]]*\])?"   # names that can only mean a σ
_NEXT = r"(?:sigma_?next|sigma_prev|next_sigma|sig_?n|s_?next|t_?next|sigmas\[\s*\w+\s*\+\s*1\s*\]|σ_?next|σ')\w*"
_SQRT = r"(?:math\.|torch\.|np\.|numpy\.)?sqrt"
PATTERNS: dict[str, re.Pattern] = {
    "std factor sqrt(-dt)": re.compile(rf"{_SQRT}\s*\(\s*-\s*\(?\s*dt\b|{_SQRT}\s*\(\s*(?:neg_dt|minus_dt|abs_dt)\b"
                                       rf"|{_SQRT}\s*\(\s*(?:torch\.|math\.)?abs\s*\(\s*dt\b"),
    "std factor sqrt(sigma - sigma_next)": re.compile(
        rf"{_SQRT}\s*\(\s*\(?\s*{_SIGMA}\s*-\s*{_NEXT}|\(\s*{_SIGMA}\s*-\s*{_NEXT}\s*\)\s*\*\*\s*0?\.5"
        rf"|\(\s*-\s*dt\s*\)\s*\*\*\s*0?\.5"),
    "CPS angle sin/cos(eta*pi/2)": re.compile(
        r"\b(?:sin|cos)\s*\(\s*\(?\s*(?:eta|noise_level|η)\w*\s*\*\s*(?:math\.|torch\.|np\.)?(?:pi|π)\s*/\s*2"
        r"|\b(?:sin|cos)\s*\(\s*(?:math\.|torch\.|np\.)?(?:pi|π)\s*/\s*2\s*\*\s*(?:eta|noise_level|η)"
        r"|(?:eta|noise_level|η)\w*\s*\*\s*(?:math\.|torch\.|np\.)?(?:pi|π)\s*/\s*2"),
    "sigma=1 rule: 0.99 clamp": re.compile(
        rf"(?:clamp|clip|min|minimum|where)\s*\([^()]*\b0\.99\b(?!\d)|max\s*=\s*0\.99\b(?!\d)"
        rf"|\b{_SIGMA_NAME}\s*[<>]=?\s*0\.99\b(?!\d)"),
    "sigma=1 rule: sigmas[1] substitute": re.compile(r"\bsigmas\s*\[\s*1\s*\]"),
    "sigma=1 rule: sigma == 1 / >= 1": re.compile(rf"\b{_SIGMA_NAME}\s*(?:==|>=)\s*1(?:\.0*)?\b(?!\.\d)"),
    "Flow-SDE prefactor eta*sqrt(sigma/(1-sigma))": re.compile(
        rf"{_SQRT}\s*\(\s*{_SIGMA}\s*/\s*\(\s*1(?:\.0*)?\s*-\s*{_SIGMA}"),
    # the coefficients of the means: Flow-SDE's score drift s²(1 − σ)/(2σ) on v (Eq. 2, Eq. 21) and CPS's
    # −(1 − σ')σ + σ'(1 − σ)cos(ηπ/2) on v (Eq. 3, Eq. 22), and CPS's std σ'·sin(ηπ/2) squared
    "score-drift factor (1-sigma)/(2*sigma)": re.compile(
        rf"\(\s*1(?:\.0*)?\s*-\s*{_SIGMA}\s*\)\s*/\s*\(\s*2(?:\.0*)?\s*\*\s*{_SIGMA}"),
    "CPS mean coefficient (1-sigma_next)*sigma": re.compile(
        rf"\(\s*1(?:\.0*)?\s*-\s*{_NEXT}\s*\)\s*\*\s*{_SIGMA}"
        rf"|{_SIGMA}\s*\*\s*\(\s*1(?:\.0*)?\s*-\s*{_NEXT}\s*\)"),
    "CPS std sigma_next*sin": re.compile(rf"\b{_NEXT}(?:\s*\*\*\s*2)?\s*\*\s*(?:math\.|torch\.)?\w*sin\w*"),
}


def code_only(source: str) -> str:
    """The source with comments and string literals blanked (line structure kept for line numbers)."""
    lines = source.splitlines(keepends=True)
    blanks: list[tuple[tuple[int, int], tuple[int, int]]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.COMMENT, tokenize.STRING):
                blanks.append((tok.start, tok.end))
    except (tokenize.TokenError, IndentationError):
        return source                      # unparsable file: scan it raw rather than skip it
    out = [list(line) for line in lines]
    for (r0, c0), (r1, c1) in blanks:
        for r in range(r0, r1 + 1):
            row = out[r - 1]
            start = c0 if r == r0 else 0
            end = c1 if r == r1 else len(row)
            for c in range(start, end):
                if row[c] != "\n":
                    row[c] = " "
    return "".join("".join(row) for row in out)


def find_violations(source: str) -> list[tuple[int, str, str]]:
    """(line number, pattern name, line text) for every transition formula in the code of `source`."""
    hits = []
    code_lines = code_only(source).splitlines()
    raw_lines = source.splitlines()
    for i, line in enumerate(code_lines, start=1):
        for name, pattern in PATTERNS.items():
            if pattern.search(line):
                hits.append((i, name, raw_lines[i - 1].strip()))
    return hits


def scanned_files() -> list[Path]:
    files = []
    for d in SCANNED_DIRS:
        files += [p for p in sorted((REPO / d).rglob("*.py")) if p.resolve() != THE_SOURCE.resolve()]
    return files


def test_no_transition_formula_outside_sde():
    """No .py under flowdppo/ or analysis/ (sde.py excepted) contains transition math."""
    report = []
    for path in scanned_files():
        for line, name, text in find_violations(path.read_text(encoding="utf-8")):
            report.append(f"{path.relative_to(REPO)}:{line}: {name}: {text}")
    assert not report, ("transition formulas outside flowdppo/sde.py — take (mean, std) from sde instead:\n"
                        + "\n".join(report))


def test_the_scan_sees_files_and_sde_itself_would_be_caught():
    """Sanity: the scan covers real files, and the patterns do fire on sde.py (the one allowed home)."""
    assert len(scanned_files()) >= 3
    names = {name for _, name, _ in find_violations(THE_SOURCE.read_text(encoding="utf-8"))}
    assert {"CPS angle sin/cos(eta*pi/2)", "sigma=1 rule: sigma == 1 / >= 1",
            "Flow-SDE prefactor eta*sqrt(sigma/(1-sigma))", "score-drift factor (1-sigma)/(2*sigma)",
            "CPS mean coefficient (1-sigma_next)*sigma"} <= names, names


PLANTED = [
    ("std = s_t * torch.sqrt(-dt)\n", "std factor sqrt(-dt)"),
    ("std = s_t * math.sqrt(-(dt))\n", "std factor sqrt(-dt)"),
    ("std = eta * torch.sqrt(torch.abs(dt))\n", "std factor sqrt(-dt)"),
    ("std = eta * torch.sqrt(sigma - sigma_next)\n", "std factor sqrt(sigma - sigma_next)"),
    ("std = eta * (sigma - sigma_next) ** 0.5\n", "std factor sqrt(sigma - sigma_next)"),
    ("std = eta * np.sqrt(sigmas[i] - sigmas[i + 1])\n", "std factor sqrt(sigma - sigma_next)"),
    ("std = sigma_next * math.sin(eta * math.pi / 2)\n", "CPS angle sin/cos(eta*pi/2)"),
    ("c = torch.cos(noise_level * torch.pi / 2)\n", "CPS angle sin/cos(eta*pi/2)"),
    ("angle = eta * math.pi / 2.0\n", "CPS angle sin/cos(eta*pi/2)"),
    ("s = torch.clamp(sigma, max=0.99)\n", "sigma=1 rule: 0.99 clamp"),
    ("s = np.minimum(sigma, 0.99)\n", "sigma=1 rule: 0.99 clamp"),
    ("s = sigma if sigma < 0.99 else 0.99\n", "sigma=1 rule: 0.99 clamp"),
    ("den = 1 - torch.where(sigma == 1, sigmas[1], sigma)\n", "sigma=1 rule: sigmas[1] substitute"),
    ("den = torch.where(sigma >= 1.0, sigma_next, sigma)\n", "sigma=1 rule: sigma == 1 / >= 1"),
    ("s_t = eta * torch.sqrt(sigma / (1 - sigma))\n", "Flow-SDE prefactor eta*sqrt(sigma/(1-sigma))"),
    ("s_t = eta * math.sqrt(t / (1.0 - t_clamped))\n", "Flow-SDE prefactor eta*sqrt(sigma/(1-sigma))"),
    ("c = dt * (1 + s_t**2 * (1.0 - sigma) / (2.0 * sigma))\n", "score-drift factor (1-sigma)/(2*sigma)"),
    ("c = -(1.0 - sigma_next) * sigma + sigma_next * (1.0 - sigma) * cos_\n",
     "CPS mean coefficient (1-sigma_next)*sigma"),
    ("c = sigma * (1 - sigma_next)\n", "CPS mean coefficient (1-sigma_next)*sigma"),
    ("var = sigma_next**2 * sin_**2\n", "CPS std sigma_next*sin"),
    ("std = sigma_next * math.sin(a)\n", "CPS std sigma_next*sin"),
]

NOT_VIOLATIONS = [
    '"""The Flow-SDE std is eta * sqrt(sigma / (1 - sigma)) * sqrt(-dt)."""\n',
    "# we clamp at 0.99 in the old code: torch.sqrt(-dt)\n",
    "msg = 'cps uses sin(eta * pi / 2)'\n",
    "std = step.std  # from sde.step\n",
    "ratio = 0.995\n",
    "_QUANTILES = (0.5, 0.9, 0.99)\n",
    "n_steps = sigma_count >= 10\n",
    "if x.shape[1] == 1:\n",
]


def test_re_derived_velocity_kl_coefficients_are_caught():
    """divergence.py's velocity-space KLs as of d55510d re-derived the kernels' coefficients (Eq. 15–16):
    the Flow-SDE velocity coefficient and the CPS mean coefficient and std are each reported."""
    old = subprocess.run(["git", "show", "d55510d:flowdppo/divergence.py"], cwd=REPO, capture_output=True, text=True)
    if old.returncode:
        pytest.skip("history without d55510d (shallow clone)")
    names = {name for _, name, _ in find_violations(old.stdout)}
    assert {"score-drift factor (1-sigma)/(2*sigma)", "CPS mean coefficient (1-sigma_next)*sigma",
            "CPS std sigma_next*sin"} <= names, names


@pytest.mark.parametrize("snippet,name", PLANTED)
def test_a_planted_violation_is_caught(tmp_path, snippet, name):
    """Each planted snippet, written to a temporary .py, is reported under the expected pattern."""
    f = tmp_path / "planted.py"
    f.write_text("import math\nimport torch\n\n\ndef bad(sigma, sigma_next, sigmas, dt, eta, noise_level, t, "
                 "t_clamped, s_t, i, np):\n    " + snippet + "    return None\n", encoding="utf-8")
    names = {n for _, n, _ in find_violations(f.read_text(encoding="utf-8"))}
    assert name in names, (snippet, names)


@pytest.mark.parametrize("snippet", NOT_VIOLATIONS)
def test_prose_and_lookalikes_are_not_reported(snippet):
    assert find_violations(snippet) == []
