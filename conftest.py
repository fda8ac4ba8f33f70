"""Repo-wide pytest setup: hypothesis profiles and a single torch thread.

Profiles (choose with the env var HYPOTHESIS_PROFILE, default "ci"):
  ci  — derandomized (the same examples on every run and machine), no deadline, the failing example's
        reproduction blob printed, a modest example count so `pytest proofs_check/` stays under a minute
        on 2 shared cores;
  dev — randomized, 10× the examples: run it locally to hunt for counterexamples.
Tests whose examples are expensive (Monte-Carlo through a sampler) scale their own example count
relative to the active profile with `proofs_check._common.examples`.
"""
import os

import torch
from hypothesis import HealthCheck, settings

CI_MAX_EXAMPLES = 25

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, max_examples=CI_MAX_EXAMPLES, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", deadline=None, print_blob=True, max_examples=10 * CI_MAX_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The test machines are small and shared; one intra-op thread per pytest process is also what makes
# float reductions reproducible run to run.
torch.set_num_threads(1)
