"""`python analysis/make_figures.py [--runs DIR] [--out DIR]` — regenerate every paper figure and table from the logged runs.  The code is analysis.runs.figures (analysis/runs/figures.py)."""
import sys

from analysis.runs.figures import main

if __name__ == "__main__":
    sys.exit(main())
