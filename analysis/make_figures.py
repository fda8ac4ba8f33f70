"""`python analysis/make_figures.py [--runs DIR] [--campaign DIR] [--out DIR]` — regenerate every paper figure, table
and claim verdict from the committed runs.  The code is analysis.runs.report (analysis/runs/report.py)."""
import sys

from analysis.runs.report import main

if __name__ == "__main__":
    sys.exit(main())
