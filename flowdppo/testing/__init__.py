"""Small stand-ins for tests, notebooks and benchmarks: `toy` (a toy policy, prompts and reward that train in
seconds) and `tiny_pipelines` (diffusers pipelines of each supported family, built in code with random weights
and offline tokenizers, saved and loaded through the real loading path)."""
