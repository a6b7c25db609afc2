"""Training losses over CelebA's 40 attributes.

Every loss has the same output layout: one sigmoid / binary cross-entropy output per attribute
outside its `softmax_groups`, in CelebA's order, then for each group its members' logits and a
last "none of them" logit under one softmax.

* `independent`: the write-up's loss, 40 binary cross-entropies, no group.
* `categorical_hair_matched`: the four hair colours as one categorical variable (softmax over
  black, blond, brown, gray, none), matched to `independent`'s gradient scale (weight 1, see
  `SoftmaxGroupLoss`); it fits data in which hair colours are mutually exclusive.
* `categorical_hair_x4`: the same with the hair cross-entropy weighted 4 (the first study's
  `categorical_hair`, "counts like the four binary terms it replaces"): a sensitivity check
  only, its hair logit gradient is about 4× `independent`'s. The old name is retired so that
  runs stored under it are not taken for either.
* `exclusive_makeup`: a mis-specified loss: one softmax over Heavy_Makeup, Wearing_Lipstick and
  neither, although the two co-occur. The first study called it a positive control; it is not one,
  since nothing fixes in advance what brackets do under it (the known-answer controls are
  lie_helpers.study.known_answers).

`gradient_share` measures how much of a loss's logit gradient falls on some attributes' outputs,
so the gradient scale of two losses can be compared.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.attributes import ATTRIBUTES, HAIR_COLOURS

MAKEUP_PAIR = ("Heavy_Makeup", "Wearing_Lipstick")   # phi 0.83 in the generated data: they co-occur


def output_layout(softmax_groups) -> tuple[list[int], list[list[int]], list[str]]:
    """(binary attribute indices, each group's attribute indices, output names) of the layout above."""
    grouped = [a for group in softmax_groups for a in group]
    if unknown := sorted(set(grouped) - set(ATTRIBUTES)):
        raise ValueError(f"softmax_groups name unknown attributes {unknown}; use names from lie_helpers.attributes.")
    if len(set(grouped)) != len(grouped):
        raise ValueError(f"softmax_groups {softmax_groups} share an attribute: each may belong to one group only.")
    binary = [i for i, a in enumerate(ATTRIBUTES) if a not in grouped]
    groups = [[ATTRIBUTES.index(a) for a in group] for group in softmax_groups]
    names = [ATTRIBUTES[i] for i in binary]
    for group in softmax_groups:
        names += [*group, "No_Hair_Colour" if tuple(group) == HAIR_COLOURS else "None_of_" + "_".join(group)]
    return binary, groups, names


HAIR_INDEX = output_layout([HAIR_COLOURS])[1][0]
OTHER_INDEX = output_layout([HAIR_COLOURS])[0]


class SoftmaxGroupLoss:
    """Binary cross-entropy per ungrouped attribute, one cross-entropy per softmax group.

    The loss is (Σ binary cross-entropies + group_weight · Σ group cross-entropies) / (batch · 40):
    the ungrouped outputs get exactly `independent`'s gradient. Weight 1 matches the grouped
    outputs' gradient scale to `independent`'s: a softmax's logit gradient p − y has expected
    squared norm Σ_k p_k(1 − p_k) over its classes at calibrated predictions, the binary terms'
    is the same sum over the members, so the two differ only by the "none" class's term (and at
    zero logits the ratio of norms is √(0.8 / 1) ≈ 0.89 for 4 members). `gradient_share` measures it.

    Target of a group: its present members, each with equal weight (one present member: that
    class; none present: the "none" class). `predict` sets the group's argmax member.
    """

    name: str
    softmax_groups: tuple = ()
    group_weight = 1.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.binary_index, cls.group_index, cls.output_names = output_layout(cls.softmax_groups)
        cls.n_outputs = len(cls.output_names)

    def group_slices(self) -> list[slice]:
        """Where each group's logits (members, then "none") lie among the outputs."""
        start, slices = len(self.binary_index), []
        for members in self.group_index:
            slices.append(slice(start, start + len(members) + 1))
            start += len(members) + 1
        return slices

    def group_targets(self, targets: torch.Tensor, members: list[int]) -> torch.Tensor:
        """[batch, members + 1] class probabilities: the present members shared equally, else "none"."""
        present = targets[:, members].to(torch.float64)
        none = (present.sum(dim=1, keepdim=True) == 0).to(torch.float64)
        classes = torch.cat([present, none], dim=1)
        return classes / classes.sum(dim=1, keepdim=True)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n_binary = len(self.binary_index)
        total = F.binary_cross_entropy_with_logits(
            logits[:, :n_binary], targets[:, self.binary_index].to(logits.dtype), reduction="sum")
        for where, members in zip(self.group_slices(), self.group_index):
            group = F.cross_entropy(logits[:, where], self.group_targets(targets, members).to(logits.dtype),
                                    reduction="sum")
            total = total + self.group_weight * group
        return total / (logits.shape[0] * len(ATTRIBUTES))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted 0/1 attributes in CelebA's order, shape (batch, 40)."""
        out = torch.zeros(logits.shape[0], len(ATTRIBUTES), dtype=torch.int64, device=logits.device)
        out[:, self.binary_index] = (logits[:, :len(self.binary_index)] > 0).to(torch.int64)
        for where, members in zip(self.group_slices(), self.group_index):
            winner = logits[:, where].argmax(dim=1)
            for k, column in enumerate(members):
                out[:, column] = (winner == k).to(torch.int64)
        return out


class IndependentBCE(SoftmaxGroupLoss):
    """40 logits, one binary cross-entropy each (targets in {0, 1})."""

    name = "independent"

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


class CategoricalHair(SoftmaxGroupLoss):
    """36 independent logits, then 5 hair logits (black, blond, brown, gray, none) under one softmax, weight 1."""

    name = "categorical_hair_matched"
    softmax_groups = (HAIR_COLOURS,)


class CategoricalHairX4(CategoricalHair):
    """`categorical_hair_matched` with the hair cross-entropy weighted 4: a sensitivity check for the weight."""

    name = "categorical_hair_x4"
    group_weight = 4.0


class ExclusiveMakeup(SoftmaxGroupLoss):
    """Positive control: 38 independent logits, then one softmax over Heavy_Makeup, Wearing_Lipstick, neither.

    The two co-occur (phi 0.83 in the generated data), and a face with both gets both classes,
    half each (target (½, ½, 0)). The softmax gives P(both) = 0 and p_makeup + p_lipstick ≤ 1, so
    the loss cannot represent the data: its best prediction for a face that surely has both is
    p = (½, ½, 0), each attribute at probability ½ (log-odds 0) instead of 1, with an irreducible
    loss of log 2 on every such face; `predict` marks only one of the two.
    """

    name = "exclusive_makeup"
    softmax_groups = (MAKEUP_PAIR,)


LOSSES = {loss.name: loss for loss in (IndependentBCE, CategoricalHair, CategoricalHairX4, ExclusiveMakeup)}


RETIRED = {"categorical_hair": "categorical_hair_x4 is that loss (hair weight 4); the study's (b) is "
                                "categorical_hair_matched"}


def get_loss(name: str) -> SoftmaxGroupLoss:
    if name in RETIRED:
        raise ValueError(f"The loss {name!r} was retired: {RETIRED[name]}.")
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Choose one of: {', '.join(LOSSES)}.")
    return LOSSES[name]()


def outputs_of(loss_fn: SoftmaxGroupLoss, attributes) -> list[int]:
    """Output indices that carry `attributes`: their own outputs, plus the "none" output of each group all of
    whose members are among them (it belongs to no other attribute)."""
    attributes = set(attributes)
    if unknown := sorted(attributes - set(ATTRIBUTES)):
        raise ValueError(f"Unknown attributes {unknown}; use names from lie_helpers.attributes.")
    index = [k for k, i in enumerate(loss_fn.binary_index) if ATTRIBUTES[i] in attributes]
    for where, members in zip(loss_fn.group_slices(), loss_fn.group_index):
        chosen = [where.start + k for k, i in enumerate(members) if ATTRIBUTES[i] in attributes]
        index += chosen + ([where.stop - 1] if len(chosen) == len(members) else [])
    return sorted(index)


def gradient_share(loss_fn: SoftmaxGroupLoss, logits: torch.Tensor, targets: torch.Tensor, attributes) -> float:
    """‖∂L/∂z_S‖ / ‖∂L/∂z_rest‖ over the batch, S = the outputs of `attributes` (`outputs_of`).

    Measured against the rest rather than the whole: the rest is the same binary terms with the
    same normalisation in every loss here, so the ratio of two losses' shares is the ratio of
    their gradient norms on S.
    """
    logits = logits.detach().double().requires_grad_(True)
    (d_logits,) = torch.autograd.grad(loss_fn(logits, targets), logits)
    chosen = torch.zeros(logits.shape[1], dtype=torch.bool)
    chosen[outputs_of(loss_fn, attributes)] = True
    return (d_logits[:, chosen].norm() / d_logits[:, ~chosen].norm()).item()
