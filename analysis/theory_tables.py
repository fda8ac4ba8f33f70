"""`python analysis/theory_tables.py ` — print the theory tables (Theorem 2 tightness, ratio noise, marginals).  The code is analysis.theory.tables (analysis/theory/tables.py)."""
import sys
from pathlib import Path

if __package__ in (None, ""):          # run as a script from a checkout: make `analysis` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.theory.tables import main  # noqa: E402

if __name__ == "__main__":
    main()
