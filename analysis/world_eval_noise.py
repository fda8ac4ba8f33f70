"""`python analysis/world_eval_noise.py ` — measure the pinned evaluation's own sampling error on the embedded world.  The code is analysis.campaign.world_eval_noise (analysis/campaign/world_eval_noise.py)."""
import sys

from analysis.campaign.world_eval_noise import main

if __name__ == "__main__":
    main()
