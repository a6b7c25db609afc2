"""How a bracket finding depends on its aggregation, and what a direction of no meaning already shows.

Bracket magnitudes are heavy-tailed: one example with a large gradient can carry most of a summed
bracket (DESIGN §6 measured 92–99% on digits). Notebook 03 aggregates a checkpoint's brackets per output as
the mean |J·[v_i, v_j]| over pairs and batch; the study (notebook 04) as the median over pairs of the RMS
over the batch. Here the rank agreement of brackets with J·g (Spearman ρ over the outputs, per checkpoint) is
read four ways:

    mean          notebook 03's aggregation
    without       the same without the pairs and the gradient of the dominant example (the one whose
                  pairs carry the largest share of the summed magnitude)
    median        the median over pairs (of the mean over the batch), as robust as the study's
    random        the null: a random direction with each bracket's per-tensor RMS, pushed onto the same
                  batch; its agreement with J·g is what the network's output sensitivities give any direction
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.brackets import parameters_of, pushforward
from .first_order import rank_agreement
from .summaries import attribute_magnitude, pair_attribute_magnitude


@dataclass
class Aggregations:
    """Per trained checkpoint: ρ(bracket, J·g) over the outputs under each aggregation, and the dominance."""
    steps: list
    rho: dict                  # "mean", "without", "median", "random" -> [checkpoints]
    dominant: np.ndarray       # [checkpoints]: index of the dominant example
    dominant_share: np.ndarray  # [checkpoints]: share of the summed bracket magnitude its pairs carry


def example_shares(logit_perturbation: torch.Tensor, pairs) -> torch.Tensor:
    """[pairs, batch, outputs] -> [examples]: the share of the summed |bracket pushforward| carried by each
    example's pairs (each pair counts for both its examples, so the shares sum to 2)."""
    per_pair = logit_perturbation.abs().double().sum(dim=(1, 2))
    n = 1 + max(max(p) for p in pairs)
    carried = torch.zeros(n, dtype=torch.float64)
    for k, (i, j) in enumerate(pairs):
        carried[i] += per_pair[k]
        carried[j] += per_pair[k]
    return carried / per_pair.sum()


def random_directions(bracket_rms: torch.Tensor, params: dict, tensor_names, seed: int) -> list[dict]:
    """One Gaussian direction per pair whose per-tensor RMS equals the pair's bracket's ([pairs, tensors])."""
    g = torch.Generator().manual_seed(seed)
    directions = []
    for row in bracket_rms:
        direction = {}
        for name, rms in zip(tensor_names, row):
            p = params[name]
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            direction[name] = (noise * (float(rms) / noise.pow(2).mean().sqrt())).to(p.dtype)
        directions.append(direction)
    return directions


def random_pushforward(model, batch: torch.Tensor, bracket_rms: torch.Tensor, tensor_names, seed: int = 0):
    """[pairs, batch, outputs]: random directions with the brackets' per-tensor RMS pushed onto `batch`'s logits."""
    params = parameters_of(model)
    return torch.stack([pushforward(model, batch, d) for d in random_directions(bracket_rms, params, tensor_names, seed)])


def compare_aggregations(records, random_logits: dict) -> Aggregations:
    """ρ(bracket, J·g) per trained checkpoint under each aggregation. random_logits: {checkpoint index:
    random_pushforward of that checkpoint}, the null."""
    trained = [c for c, step in enumerate(records.steps) if step > 0]
    if records.gradient_pushforward is None:
        raise ValueError("These records hold no J·g (first-order baselines): rerun the bracket analysis (notebook 02).")
    rho = {name: [] for name in ("mean", "without", "median", "random")}
    dominant, share = [], []
    for c in trained:
        bracket, jg = records.logit_perturbation[c], records.gradient_pushforward[c]
        shares = example_shares(bracket, records.pairs)
        d = int(shares.argmax())
        dominant.append(d)
        share.append(float(shares[d]))
        keep_pairs = [k for k, p in enumerate(records.pairs) if d not in p]
        keep_examples = [e for e in range(jg.shape[0]) if e != d]
        jg_all = attribute_magnitude(jg[None])[0].numpy()
        rho["mean"].append(float(rank_agreement(attribute_magnitude(bracket[None])[0].numpy(), jg_all)))
        rho["without"].append(float(rank_agreement(attribute_magnitude(bracket[keep_pairs][None])[0].numpy(),
                                                   attribute_magnitude(jg[keep_examples][None])[0].numpy())))
        rho["median"].append(float(rank_agreement(pair_attribute_magnitude(bracket[None])[0].median(dim=0).values.numpy(),
                                                  pair_attribute_magnitude(jg[None])[0].median(dim=0).values.numpy())))
        rho["random"].append(float(rank_agreement(attribute_magnitude(random_logits[c][None])[0].numpy(), jg_all)))
    return Aggregations([records.steps[c] for c in trained], {k: np.array(v) for k, v in rho.items()},
                        np.array(dominant), np.array(share))


def describe_aggregations(result: Aggregations) -> str:
    """What the four readings of ρ(bracket, J·g) say, in words generated from the numbers."""
    med = {k: float(np.median(v)) for k, v in result.rho.items()}
    lines = [f"Over {len(result.steps)} trained checkpoints, ρ(bracket, J·g) has median {med['mean']:+.2f} with notebook "
             f"03's aggregation (mean over pairs), {med['without']:+.2f} without the dominant example (its pairs carry "
             f"a median {np.median(result.dominant_share):.0%} of the summed bracket magnitude), {med['median']:+.2f} with "
             f"the median over pairs; a random direction with the brackets' per-tensor RMS reaches {med['random']:+.2f}."]
    above = int(np.sum(result.rho["mean"] > result.rho["random"]))
    if med["mean"] - med["random"] < 0.1:
        lines.append(f"The agreement with J·g is about what any direction gets from the network's output sensitivities "
                     f"(above the null at {above} of {len(result.steps)} checkpoints): it says little about brackets.")
    else:
        lines.append(f"The agreement with J·g exceeds the null at {above} of {len(result.steps)} checkpoints.")
    if abs(med["mean"] - med["without"]) > 0.2 or abs(med["mean"] - med["median"]) > 0.2:
        lines.append("It depends on the aggregation: a few examples carry the summed magnitudes, so a reading of the "
                     "mean is partly a reading of those examples.")
    return " ".join(lines)
