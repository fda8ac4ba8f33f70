"""`python analysis/make_figures.py [--runs DIR] [--out DIR]` — regenerate every paper figure and table from the logged runs.  The code is analysis.runs.figures (analysis/runs/figures.py)."""
import sys
from pathlib import Path

if __package__ in (None, ""):          # run as a script from a checkout: make `analysis` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.runs.figures import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
