"""The result record of one conformance property, and the printed report table."""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Optional

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Result:
    """One property's verdict.

    error / tolerance: the size of the measured discrepancy and the bound it is held to, both in the unit
    named by `error_unit` (e.g. "max |KL_mask / KL_sampler − 1|").  `meaning` is one line in the paper's
    terms; `details` are the per-step / per-cell numbers behind it.  `stat` states seed, sample count,
    z-tolerance and false-alarm rate for Monte-Carlo properties (None for deterministic ones)."""
    name: str
    equation: str
    status: str
    error: Optional[float]
    tolerance: Optional[float]
    error_unit: str
    meaning: str
    details: list[str] = field(default_factory=list)
    stat: Optional[dict] = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def _num(x: Optional[float]) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and 1 <= abs(x) < 1e6:       # counts (cells, samples)
        return str(int(x))
    return f"{x:.2e}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.3f}"


def format_report(results: list[Result], *, header: list[str], width: int = 118) -> str:
    """A fixed-width table (property, result, error, tolerance, meaning) and the details of each failure."""
    lines = list(header)
    cols = f"{'property':<26} {'paper':<10} {'result':<6} {'error':>9} {'tol':>9}  meaning"
    lines += ["", cols, "-" * min(width, max(len(cols), 100))]
    indent = " " * 65
    for r in results:
        head = f"{r.name:<26} {r.equation:<10} {r.status:<6} {_num(r.error):>9} {_num(r.tolerance):>9}  "
        wrapped = textwrap.wrap(r.meaning, width=max(40, width - len(head))) or [""]
        lines.append(head + wrapped[0])
        lines += [indent + w for w in wrapped[1:]]
    n_fail = sum(r.failed for r in results)
    n_pass = sum(r.passed for r in results)
    n_skip = sum(r.status == SKIP for r in results)
    lines += ["", f"{n_pass} passed, {n_fail} failed, {n_skip} skipped"]
    for r in results:
        if r.stat and r.status != SKIP:
            lines.append(f"Monte-Carlo {r.name}: " + ", ".join(f"{k}={v}" for k, v in r.stat.items()))
    for r in results:
        if not r.failed:
            continue
        lines += ["", f"[{r.status}] {r.name} ({r.equation}) — error = {r.error_unit}"]
        lines += ["  " + d for d in r.details]
    return "\n".join(lines)


@dataclass
class Report:
    """The results of one conformance run and their printed table (`text`)."""
    results: list[Result]
    header: list[str]

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.failed]

    def by_name(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    @property
    def text(self) -> str:
        return format_report(self.results, header=self.header)

    def assert_ok(self) -> None:
        """Raise AssertionError carrying the whole report when a property failed (for a user's pytest suite)."""
        if not self.ok:
            raise AssertionError("Flow-DPPO conformance failed:\n" + self.text)


def to_json(results: list[Result], *, header: list[str]) -> str:
    return json.dumps({"header": header, "results": [asdict(r) | {"passed": r.passed} for r in results]},
                      indent=1, ensure_ascii=False, default=str)
