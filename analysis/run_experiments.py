"""`python analysis/run_experiments.py [--only KEYS] [--jobs N]` — run the experiment registry: start missing runs, resume killed ones, skip finished ones.  The code is analysis.campaign.runner (analysis/campaign/runner.py)."""
import sys
from pathlib import Path

if __package__ in (None, ""):          # run as a script from a checkout: make `analysis` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.campaign.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
