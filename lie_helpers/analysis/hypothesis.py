"""What the study of notebook 04 measures with: comparable outputs for every loss, and its runs' helpers.

One currency for every model, whatever outputs it uses for an attribute (a sigmoid, or a
member of a softmax group: lie_helpers.losses): the Bernoulli marginal "attribute k is
present". The primary scale, `fisher`, measures its change in Fisher units, d log-odds ·
√(p_k(1 − p_k)) ≈ √(2 KL); a softmax group's logits are defined only up to a shared constant,
and every scale here removes it. Sensitivity checks: `log_odds` (the change of each
attribute's log-odds, log p_k/(1 − p_k)) and `log_prob` (of its log-probability).

`hypothesis_runs` / `train_and_analyse` train a run of each loss beside the main run (notebook 05
uses the categorical one for its softmax-symmetry check); the decisive test itself is
lie_helpers.study.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .records import analyse_run
from ..data.attributes import ATTRIBUTES
from ..training.config import Profile, data_dir
from ..data.generated_celeba import read_ground_truth
from ..training.losses import get_loss
from ..training.run_folder import RunPaths
from ..training.train import train

LOSS_NAMES = ("independent", "categorical_hair_matched")
HAIR_PAIR = ("Black_Hair", "Brown_Hair")            # exclusive and confusable (generated ground truth)
CORRELATED_CONTROLS = ("Heavy_Makeup", "Wearing_Lipstick")  # phi 0.83 in the generated data, never exclusive
PERTURBATION_SCALES = ("fisher", "log_odds", "log_prob")   # the first is primary


# ----------------------------------------------------------------------------- the runs

@dataclass(frozen=True)
class HypothesisRun:
    loss: str
    seed: int
    profile: Profile
    run_dir: Path


def hypothesis_profile(P: Profile, loss: str, seed: int, checkpoints: int = 5) -> Profile:
    """P with `loss` and `seed`, saving about `checkpoints` checkpoints instead of every P.checkpoint_every steps.

    The cadence is a multiple of P's, so every checkpoint also exists in the main run. It
    only thins what is saved (and analysed): checkpoints evaluate in eval mode without
    touching parameters, buffers or random state, so the trajectory is the same.
    """
    every = P.checkpoint_every * max(1, round(P.steps / checkpoints / P.checkpoint_every))
    return dataclasses.replace(P, loss=loss, seed=seed, checkpoint_every=every)


def hypothesis_runs(P: Profile, paths: RunPaths, checkpoints: int = 5) -> list[HypothesisRun]:
    """Both losses × P.seeds, each saving about `checkpoints` checkpoints (see hypothesis_profile).
    The main run (notebook 01) is reused, with all its checkpoints, where it has that loss and seed."""
    runs = []
    for loss in LOSS_NAMES:
        for seed in P.seeds:
            if loss == P.loss and seed == P.seed:
                runs.append(HypothesisRun(loss, seed, P, paths.root))
            else:
                runs.append(HypothesisRun(loss, seed, hypothesis_profile(P, loss, seed, checkpoints),
                                          paths.root / "hypothesis" / f"{loss}-seed{seed}"))
    return runs


def train_and_analyse(runs: list[HypothesisRun], train_split, valid_split, test_split, *,
                      progress: bool = True) -> dict:
    """Train every run (or resume, or skip if done) and store its bracket records; returns seconds per run."""
    seconds = {}
    for run in runs:
        start = time.perf_counter()
        train(run.profile, run.run_dir, (train_split.images, train_split.attributes),
              (valid_split.images, valid_split.attributes), fingerprint=train_split.fingerprint, progress=progress)
        analyse_run(run.profile, (test_split.images, test_split.attributes), run_dir=run.run_dir,
                    fingerprint=train_split.fingerprint, progress=progress)
        seconds[(run.loss, run.seed)] = time.perf_counter() - start
    return seconds


# ----------------------------------------------------------------------------- comparable outputs

def log_softmax_pushforward(d_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """d log softmax(z) = dz − Σ_k p_k dz_k (last dimension): invariant to a shared shift of dz."""
    p = logits.softmax(-1)
    return d_logits - (p * d_logits).sum(-1, keepdim=True)


def log_odds_pushforward(d_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """d log(p_k / (1 − p_k)) of a softmax = dz_k − Σ_{j≠k} q_j dz_j, q = softmax over the classes j ≠ k.

    Equal to d log p_k / (1 − p_k), written without the division so it stays exact when p_k → 1.
    """
    k = logits.shape[-1]
    others = logits.unsqueeze(-2).expand(*logits.shape[:-1], k, k).masked_fill(
        torch.eye(k, dtype=torch.bool, device=logits.device), float("-inf"))
    q = others.softmax(-1)                                  # row k: softmax over j ≠ k
    return d_logits - (q @ d_logits.unsqueeze(-1)).squeeze(-1)


def _attribute_columns(loss_fn, out_shape, binary, groups, dtype):
    """Scatter per-output values into [..., 40] in CelebA's order (a group's "none" class is no attribute)."""
    out = torch.zeros(*out_shape, len(ATTRIBUTES), dtype=dtype)
    out[..., loss_fn.binary_index] = binary
    for members, values in zip(loss_fn.group_index, groups):
        out[..., members] = values[..., :len(members)]
    return out


def _by_kind(loss: str, tensors: torch.Tensor, logits: torch.Tensor):
    """The loss, its binary block (values and logits) and each softmax group's (values and logits)."""
    loss_fn = get_loss(loss)
    n_binary = len(loss_fn.binary_index)
    return (loss_fn, tensors[..., :n_binary], logits[..., :n_binary],
            [(tensors[..., where], logits[..., where]) for where in loss_fn.group_slices()])


def attribute_log_odds(loss: str, logits: torch.Tensor) -> torch.Tensor:
    """Each attribute's log-odds of being present, [..., 40] in CelebA's order: a binary output's logit, and for
    a softmax group's member log p_k/(1 − p_k) = z_k − logsumexp_{j≠k} z_j."""
    logits = logits.double()
    loss_fn, binary, _, groups = _by_kind(loss, logits, logits)
    odds = []
    for z, _ in groups:
        k = z.shape[-1]
        others = z.unsqueeze(-2).expand(*z.shape[:-1], k, k).masked_fill(
            torch.eye(k, dtype=torch.bool, device=z.device), float("-inf"))
        odds.append(z - others.logsumexp(-1))
    return _attribute_columns(loss_fn, logits.shape[:-1], binary, odds, logits.dtype)


def attribute_perturbations(loss: str, d_logits: torch.Tensor, logits: torch.Tensor,
                            scale: str = "fisher") -> torch.Tensor:
    """The outputs' perturbation [..., n_outputs] as each attribute's change, [..., 40] in CelebA's order.

    Scales (PERTURBATION_SCALES): `log_odds` (d log p_k/(1 − p_k)), `log_prob` (d log p_k) and
    `fisher`, the change of the Bernoulli marginal "attribute k present" in Fisher units,
    d log-odds · √(p_k(1 − p_k)) = dp_k / √(p_k(1 − p_k)): to second order ±√(2 KL(p_k ‖ p_k + dp_k)),
    whatever outputs the model uses for it (a sigmoid, or p_k of a softmax). A shared shift of
    a group's logits changes none of them. `logits` broadcasts against d_logits.
    """
    if scale not in PERTURBATION_SCALES:
        raise ValueError(f"scale must be one of {PERTURBATION_SCALES}, got {scale!r}.")
    d_logits, logits = d_logits.double(), logits.double().expand_as(d_logits)
    loss_fn, binary_d, binary_z, groups = _by_kind(loss, d_logits, logits)
    if scale == "log_prob":                                 # d log σ(z) = σ(−z) dz
        binary, grouped = torch.sigmoid(-binary_z) * binary_d, [log_softmax_pushforward(d, z) for d, z in groups]
    else:
        binary, grouped = binary_d, [log_odds_pushforward(d, z) for d, z in groups]
    out = _attribute_columns(loss_fn, d_logits.shape[:-1], binary, grouped, d_logits.dtype)
    if scale == "fisher":                                   # √(p(1 − p)) = exp(−(softplus(l) + softplus(−l)) / 2)
        l = attribute_log_odds(loss, logits)
        out = out * torch.exp(-(F.softplus(l) + F.softplus(-l)) / 2)
    return out


def attribute_magnitudes(perturbations: torch.Tensor) -> torch.Tensor:
    """[checkpoints, pairs, batch, 40] -> [checkpoints, 40]: RMS over the batch, then median over the pairs.

    The median asks whether *most* brackets move an attribute (the write-up's observation),
    and is not carried by one extreme pair.
    """
    return perturbations.pow(2).mean(dim=2).sqrt().median(dim=1).values


# ----------------------------------------------------------------------------- within one model and checkpoint

def attribute_mask(names) -> np.ndarray:
    return np.isin(np.array(ATTRIBUTES), list(names))


# ----------------------------------------------------------------------------- ground truth

def ambiguous_filenames(P: Profile) -> set[str]:
    """Black- or brown-labelled images whose hair shade makes their own label uncertain (generated data
    only; real CelebA has no such list, so the set is empty)."""
    if P.data_source != "generated":
        return set()
    return {name for pair in read_ground_truth(data_dir(P))["ambiguous_pairs"] for name in pair["ambiguous_images"]}
