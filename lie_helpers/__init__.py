"""lie_helpers: training examples as vector fields on parameter space, and their Lie brackets.

The bracket engine is exported here; the rest lives in submodules:
`toy` (quadratics and small nets for the theory), `attributes` and `celeba` (CelebA's format, loading
and cache), `generated_celeba` (CelebA-format data drawn offline), `mxresnet` (model), `losses`,
`train` (training with checkpoints), `analysis` (brackets at checkpoints), `summaries`, `plots`,
`bracket_figures`, `hypothesis`, `stats` (tests and intervals over seeds) and `symmetry` (notebooks 03-05),
`example_sets` (stratified bracket examples and pushforward batches; a model's fit to the true posterior),
`order_effects` (real swaps of training steps), `chain` (the papermill chain),
`bench` (timing helpers of the benchmarks) and `gpu_check` (the GPU check, `make gpu-check`).
"""
__version__ = "0.1.0"

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent   # defined before the imports below: the sub-packages read them
REPO_DIR = PACKAGE_DIR.parent

from .engine.brackets import (
    BracketMatrix,
    bracket_matrix,
    gradient,
    hvp,
    lie_bracket,
    pushforward,
    relative_error,
    rms_per_tensor,
    swap_difference,
)
from .training.config import get_profile

__all__ = ["BracketMatrix", "bracket_matrix", "gradient", "hvp", "lie_bracket", "pushforward",
           "relative_error", "rms_per_tensor", "swap_difference", "get_profile"]
