"""`python analysis/theory_tables.py ` — print the theory tables (Theorem 2 tightness, ratio noise, marginals).  The code is analysis.theory.tables (analysis/theory/tables.py)."""
import sys

from analysis.theory.tables import main

if __name__ == "__main__":
    main()
