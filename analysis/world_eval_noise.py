"""`python analysis/world_eval_noise.py ` — measure the pinned evaluation's own sampling error on the embedded world.  The code is analysis.campaign.world_eval_noise (analysis/campaign/world_eval_noise.py)."""
import sys
from pathlib import Path

if __package__ in (None, ""):          # run as a script from a checkout: make `analysis` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.campaign.world_eval_noise import main  # noqa: E402

if __name__ == "__main__":
    main()
