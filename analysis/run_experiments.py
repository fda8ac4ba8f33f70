"""`python analysis/run_experiments.py [--campaign claims|pilot|first_world] [--only CELLS] [--jobs N]` — run the
claims campaign (default): start missing runs, resume killed ones, skip finished ones.  The code is
analysis.campaign.runner (analysis/campaign/runner.py)."""
import sys

from analysis.campaign.runner import main

if __name__ == "__main__":
    sys.exit(main())
