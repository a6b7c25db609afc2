"""lie_helpers: training examples as vector fields on parameter space, and their Lie brackets.

The bracket engine is exported here (lie_bracket, bracket_matrix, ...). The rest lives in sub-packages,
in the order data flows (each imports only from those before it; tests/test_layers.py enforces it):

    engine     brackets (SGD's and Adam's), swap differences, toy problems, numerics
    data       CelebA's format and reading, the generated data, atomic storage
    training   profiles, MXResNet, losses, training with checkpoints, the run folder, results
    analysis   bracket records, first-order baselines, the RMS law, the currency, order effects, symmetry
    study      many runs: the study's design, records, contrasts, verdict, statistics, side runs
    figures    every figure a notebook saves, and the heatmap page
    pipeline   the notebook chain, distributed analysis, the GPU check, benchmarks, publishing
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
from .engine.adam import AdamState, adam_bracket, adam_bracket_matrix
from .training.config import get_profile

__all__ = ["BracketMatrix", "bracket_matrix", "gradient", "hvp", "lie_bracket", "pushforward",
           "relative_error", "rms_per_tensor", "swap_difference", "AdamState", "adam_bracket",
           "adam_bracket_matrix", "get_profile"]
