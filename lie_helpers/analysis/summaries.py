"""The write-up's hair finding, from stored records (`records.RunBrackets`): which attributes brackets perturb.

After some step, Black_Hair and Brown_Hair logits are perturbed more than the others. Bracket
magnitudes are heavy-tailed across checkpoints (docs/design.md §5), so attributes are only compared
within one checkpoint: ranks among all outputs and ratios to the median output. (The RMS law lives in
lie_helpers.analysis.rms_law.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

def spread_checkpoints(steps, n: int, *, skip_initial: bool = True) -> list[int]:
    """Indices of n checkpoints evenly spread over training, the last one included.

    skip_initial leaves out step 0: at initialisation the zero-initialised last BatchNorm of
    each residual branch makes the gradient of the branch's other tensors exactly zero.
    """
    first = 1 if skip_initial and steps[0] == 0 and len(steps) > 1 else 0
    return sorted(set(np.linspace(first, len(steps) - 1, min(n, len(steps) - first)).round().astype(int).tolist()))


def attribute_magnitude(logit_perturbation: torch.Tensor) -> torch.Tensor:
    """[checkpoints, pairs, batch, outputs] -> [checkpoints, outputs]: mean |logit perturbation| over pairs and batch."""
    return logit_perturbation.abs().double().mean(dim=(1, 2))


def pair_attribute_magnitude(logit_perturbation: torch.Tensor) -> torch.Tensor:
    """[checkpoints, pairs, batch, outputs] -> [checkpoints, pairs, outputs]: mean |perturbation| over the batch."""
    return logit_perturbation.abs().double().mean(dim=2)


def ranks(magnitude: torch.Tensor) -> torch.Tensor:
    """Rank of each output along the last axis, 1 = most perturbed (ties broken by position)."""
    order = torch.argsort(magnitude, dim=-1, descending=True, stable=True)
    return torch.argsort(order, dim=-1, stable=True) + 1


def median_output(magnitude: torch.Tensor) -> torch.Tensor:
    """The median along the last axis (outputs), keeping it; the mean of the two middle values for an even count."""
    return torch.quantile(magnitude, 0.5, dim=-1, keepdim=True)


def ratio_to_median(magnitude: torch.Tensor) -> torch.Tensor:
    """Each output's magnitude over the median output's, within each checkpoint (last axis)."""
    return magnitude / median_output(magnitude)


def share_of_pairs_in_top(logit_perturbation: torch.Tensor, output: int, top: int) -> torch.Tensor:
    """[checkpoints]: fraction of the pairs (brackets) for which `output` is among their `top` most perturbed."""
    return (ranks(pair_attribute_magnitude(logit_perturbation))[..., output] <= top).double().mean(dim=1)


def onset_step(steps, rank_of_output, top: int):
    """First step from which the output's rank stays within `top` at every later checkpoint; None if never."""
    onset = None
    for step, rank in zip(reversed(list(steps)), reversed(list(rank_of_output))):
        if rank > top:
            break
        onset = step
    return onset


@dataclass(frozen=True)
class AttributeSummary:
    """How strongly some outputs (e.g. the hair colours) are perturbed, compared within each checkpoint."""
    steps: list
    names: tuple             # the outputs summarised
    magnitude: np.ndarray    # [checkpoints, outputs]: mean |logit perturbation| of every output
    median: np.ndarray       # [checkpoints]: the median output's magnitude
    rank: np.ndarray         # [checkpoints, names]: rank among all outputs, 1 = most perturbed
    ratio: np.ndarray        # [checkpoints, names]: magnitude / median output's magnitude
    pair_share: np.ndarray   # [checkpoints, names]: fraction of pairs with the output in their top `top`
    top: int
    onset: dict              # name -> first step from which rank <= top at every later checkpoint (or None)
    joint_onset: int | None  # the same for all names together
    median_rank: dict        # name -> median rank over the trained checkpoints (step > 0)
    median_ratio: dict       # name -> median ratio over the trained checkpoints (step > 0)


def summarise_attributes(records, output_names, names=("Black_Hair", "Brown_Hair"), top: int = 10) -> AttributeSummary:
    """Ranks, ratios to the median, shares of pairs and onset steps of the outputs `names`."""
    index = [list(output_names).index(n) for n in names]
    magnitude = attribute_magnitude(records.logit_perturbation)
    rank = ranks(magnitude)[:, index]
    ratio = ratio_to_median(magnitude)[:, index]
    trained = [c for c, step in enumerate(records.steps) if step > 0] or list(range(len(records.steps)))
    return AttributeSummary(
        steps=list(records.steps), names=tuple(names), magnitude=magnitude.numpy(),
        median=median_output(magnitude)[:, 0].numpy(), rank=rank.numpy(), ratio=ratio.numpy(),
        pair_share=torch.stack([share_of_pairs_in_top(records.logit_perturbation, i, top) for i in index], 1).numpy(),
        top=top, onset={n: onset_step(records.steps, rank[:, k].tolist(), top) for k, n in enumerate(names)},
        joint_onset=onset_step(records.steps, rank.max(dim=1).values.tolist(), top),
        median_rank={n: float(np.median(rank[trained, k].numpy())) for k, n in enumerate(names)},
        median_ratio={n: float(np.median(ratio[trained, k].numpy())) for k, n in enumerate(names)})


def most_perturbed(magnitude_row, output_names, n: int = 3) -> list[str]:
    """Names of the n most perturbed outputs of one checkpoint."""
    return [output_names[i] for i in np.argsort(-np.asarray(magnitude_row), kind="stable")[:n]]


def leading_outputs(summary: AttributeSummary, output_names) -> dict[str, int]:
    """Each output that is the most perturbed at some trained checkpoint (step > 0), with how many
    checkpoints it leads, most often first (ties: the earlier leader first)."""
    trained = [c for c, step in enumerate(summary.steps) if step > 0] or list(range(len(summary.steps)))
    leaders = [most_perturbed(summary.magnitude[c], output_names, 1)[0] for c in trained]
    counts = {name: leaders.count(name) for name in dict.fromkeys(leaders)}
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def describe_highlighted(summary: AttributeSummary, output_names) -> str:
    """A paragraph, generated from `summary`, on how its outputs rank among all outputs.

    Notebook 03 prints it instead of hard-coding a run's ranks: another CPU, thread count or
    seed trains another trajectory, and ranks at single checkpoints change with it.
    """
    trained = [c for c, step in enumerate(summary.steps) if step > 0] or list(range(len(summary.steps)))
    n, chance = len(trained), summary.top / len(output_names)
    parts = []
    for k, name in enumerate(summary.names):
        ratio = summary.ratio[trained, k]
        parts.append(f"{name} is among the {summary.top} most perturbed of the {len(output_names)} outputs at "
                     f"{int(np.sum(summary.rank[trained, k] <= summary.top))} of {n} trained checkpoints "
                     f"(chance {chance:.0%}; median rank {summary.median_rank[name]:g}), perturbed a median "
                     f"{summary.median_ratio[name]:.1f}× as much as the median output (range "
                     f"{ratio.min():.1f}–{ratio.max():.1f}×).")
    counts = leading_outputs(summary, output_names)
    leader, times = next(iter(counts.items()))
    parts.append(f"The most perturbed output is {leader} at every trained checkpoint." if len(counts) == 1 else
                 f"The most perturbed output changes between checkpoints: {len(counts)} different outputs lead, "
                 f"{leader} most often ({times} of {n}).")
    lowest, highest = min(summary.median_ratio.values()), max(summary.median_ratio.values())
    others_lead = any(name not in summary.names for name in counts)
    if lowest >= 3:
        verdict = "singled out: every one of them is perturbed several times more than the median output"
    elif lowest > 1.2:
        verdict = ("elevated" + (" but not dominant" if highest < 10 or others_lead else "") + ": perturbed more than "
                   "the typical output" + (", not by an order of magnitude" if highest < 10 else "")
                   + (", and other outputs lead at some checkpoints" if others_lead else ""))
    else:
        verdict = "not elevated: at least one of them is perturbed no more than the typical output"
    verdict += "."
    onset = summary.joint_onset
    sustained = (f"All of them stay in the top {summary.top} at every checkpoint from step {onset} on."
                 if onset is not None else
                 f"They do not all stay in the top {summary.top} at every checkpoint after any step.")
    return " ".join(parts) + f" So in this run they are {verdict} {sustained}"
