"""Training losses over CelebA's 40 attributes.

`independent` is the write-up's loss: one sigmoid / binary cross-entropy per attribute.
`categorical_hair` treats the four hair colours as one categorical variable (softmax over
black, blond, brown, gray, none of these) and keeps independent outputs for the other 36,
so it fits data in which hair colours are mutually exclusive.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attributes import ATTRIBUTES, HAIR_COLOURS

HAIR_INDEX = [ATTRIBUTES.index(a) for a in HAIR_COLOURS]
OTHER_INDEX = [i for i in range(len(ATTRIBUTES)) if i not in HAIR_INDEX]


class IndependentBCE:
    """40 logits, one binary cross-entropy each (targets in {0, 1})."""

    name = "independent"
    n_outputs = len(ATTRIBUTES)
    output_names = list(ATTRIBUTES)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted 0/1 attributes, shape (batch, 40)."""
        return (logits > 0).to(torch.int64)


class CategoricalHair:
    """36 independent logits, then 5 hair logits (black, blond, brown, gray, none) under one softmax.

    The loss is the mean of the 36 binary cross-entropies and the hair cross-entropy,
    weighted so that hair counts like the four binary terms it replaces.
    """

    name = "categorical_hair"
    n_outputs = len(OTHER_INDEX) + len(HAIR_COLOURS) + 1
    output_names = [ATTRIBUTES[i] for i in OTHER_INDEX] + list(HAIR_COLOURS) + ["No_Hair_Colour"]

    @staticmethod
    def hair_class(targets: torch.Tensor) -> torch.Tensor:
        """Class index 0..3 for the first hair colour present, 4 when none is."""
        hair = targets[:, HAIR_INDEX].to(torch.int64)
        none = (hair.sum(dim=1) == 0).to(torch.int64)
        return torch.cat([hair, none[:, None]], dim=1).argmax(dim=1)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n_other = len(OTHER_INDEX)
        other = F.binary_cross_entropy_with_logits(
            logits[:, :n_other], targets[:, OTHER_INDEX].to(logits.dtype), reduction="sum")
        hair = F.cross_entropy(logits[:, n_other:], self.hair_class(targets), reduction="sum")
        return (other + len(HAIR_COLOURS) * hair) / (logits.shape[0] * len(ATTRIBUTES))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted 0/1 attributes in CelebA's order, shape (batch, 40)."""
        n_other = len(OTHER_INDEX)
        out = torch.zeros(logits.shape[0], len(ATTRIBUTES), dtype=torch.int64, device=logits.device)
        out[:, OTHER_INDEX] = (logits[:, :n_other] > 0).to(torch.int64)
        hair = logits[:, n_other:].argmax(dim=1)
        for k, column in enumerate(HAIR_INDEX):
            out[:, column] = (hair == k).to(torch.int64)
        return out


LOSSES = {"independent": IndependentBCE, "categorical_hair": CategoricalHair}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Choose one of: {', '.join(LOSSES)}.")
    return LOSSES[name]()
