"""One currency for every model's outputs: each attribute's change, whatever outputs a loss uses for it.

Every loss of lie_helpers.training.losses gives an attribute a sigmoid or a member of a softmax group;
all are read here as the Bernoulli marginal "attribute k is present". The primary scale, `fisher`,
measures its change in Fisher units, d log-odds · √(p_k(1 − p_k)) ≈ √(2 KL); a softmax group's logits
are defined only up to a shared constant, and every scale removes it. Sensitivity checks: `log_odds`
(the change of each attribute's log-odds, log p_k/(1 − p_k)) and `log_prob` (of its log-probability).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.attributes import ATTRIBUTES
from ..training.losses import get_loss


HAIR_PAIR = ("Black_Hair", "Brown_Hair")            # exclusive and confusable (generated ground truth)

CORRELATED_CONTROLS = ("Heavy_Makeup", "Wearing_Lipstick")  # phi 0.83 in the generated data, never exclusive

PERTURBATION_SCALES = ("fisher", "log_odds", "log_prob")   # the first is primary


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


def attribute_mask(names) -> np.ndarray:
    return np.isin(np.array(ATTRIBUTES), list(names))
