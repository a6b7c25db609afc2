"""The study's primary readout: each named source's self-share (issue 19; pre-registered before any result).

Sources. Every loss of the study is regrouped into the same named sources (`SourceGroups`, a wrapper whose
`source_layout` / `source_terms` sum columns of the base loss's terms, lie_helpers.analysis.source_brackets):

    HAIR       Black, Blond, Brown and Gray hair as ONE source in every arm (the categorical losses' hair
               softmax group is already one term; the independent loss's four binary terms are summed)
    GLASSES    Eyeglasses
    MAKEUP     Heavy_Makeup + Wearing_Lipstick (exclusive_makeup: its softmax group)
    REFERENCE  Smiling, Male, Mouth_Slightly_Open, Bangs, Wearing_Hat, each its own source: visible in the
               generated faces, in no exclusive group, in no noise band, not made ambiguous by any arm, and
               none of them is a hair colour, glasses or makeup
    rest       every other term, so that the sources sum to the loss exactly

Readout (per run, at its LAST checkpoint). With D_k = [v_{x,k}, v_{y,k}] the self part of source k for a
pair (x, y) of bracket examples and J the Jacobian of the pushforward batch's logits:

    M(J·D_k)  = RMS over the pushforward batch and all 40 attributes of J·D_k, Fisher-scaled
                (analysis.currency.attribute_perturbations, scale "fisher"), for each pair
    Q_k       = log10 median_pairs M(J·D_k) − median_{j ∈ REFERENCE, j ≠ k} log10 median_pairs M(J·D_j)
    Q^g_k     = the same with J·g_{x,k} (one example's source-k gradient pushed forward), median over examples

The reference median leaves k out when k is itself a reference source, so a dose on any source leaves the
reference untouched. Known answers (controls, lie_helpers.study.known_answers): a loss weight w on source k
multiplies D_k by w² and J·g_k by w and leaves every other source's self part and gradient unchanged, and every
step above is positively homogeneous, so Q_k moves by exactly 2·log10 w and Q^g_k by exactly log10 w. The
first-order prediction of Q_k is therefore 2·Q^g_k: a source whose bracket grows only because its gradients do
keeps Q_k − 2·Q^g_k unchanged (what C5 and the paired tests compare; lie_helpers.study.contrasts).

Aggregation (DESIGN.md §6): RMS within a pair (over batch and attributes: the pushforward's size), the MEDIAN
over pairs and examples (a heavy-tailed magnitude's sum is carried by its largest term; the median asks what most
pairs do), then the median over the reference sources (no single reference attribute sets the scale). Within one
model and checkpoint, so arms with other losses are comparable. `leave_one_out` recomputes a share with the pairs
of the example that carries most of the summed magnitude left out (the robustness check).

Adam's readout (secondary; issue 20, added after the primary's results). With Adam's state at the same last
checkpoint frozen (P = 1/(√v̂₀ + ε), m₀; analysis.source_brackets.adam_source_brackets), the same readout on

    Q^A_k     the w²-homogeneous part of Adam's self bracket, J·D^A_k, D^A_k = P(H_{y,k} P g_{x,k} − H_{x,k} P g_{y,k})
    Q^Ag_k    J·(P g_{x,k}), the preconditioned gradient (Adam's first-order step direction without momentum)

so that a dose moves Q^A_k by exactly 2·log10 w and Q^Ag_k by log10 w (state fixed), and Q^A − 2·Q^Ag plays C5's
part. The record also holds the momentum part M_k = P(H_{y,k} − H_{x,k}) P m₀ and Adam's whole self bracket
(1−β1)·D^A_k + β1·M_k, whose readout has no single slope (M_k is linear in w): it is checked against the curve the two
w = 1 parts fix (known_answers), and reported.

Examples (pre-registered): the first example set (number 0) of each seed, strata "ambiguous black/brown" and
"faint glasses", each stratum's pairs apart, the run's Q the mean of the two strata's. They are the examples the
two bands make ambiguous, where the hypothesis says brackets are created; the unambiguous and "other" strata,
where no band acts, are left out to keep the cost at minutes (about 12x a plain bracket per stratum: nine
sources with their self parts).
"""
from __future__ import annotations

import numpy as np
import torch

from ..analysis.currency import attribute_perturbations
from ..analysis.source_brackets import (REST, Source, SourceBrackets, adam_self_part, adam_source_brackets, source_brackets,
                                        source_layout, source_terms)
from ..data.attributes import ATTRIBUTES, HAIR_COLOURS
from ..engine.brackets import bracket_mode
from ..training.losses import MAKEUP_PAIR

HAIR, GLASSES, MAKEUP = "HAIR", "GLASSES", "MAKEUP"
REFERENCE = ("Smiling", "Male", "Mouth_Slightly_Open", "Bangs", "Wearing_Hat")
SOURCE_GROUPS = {HAIR: HAIR_COLOURS, GLASSES: ("Eyeglasses",), MAKEUP: MAKEUP_PAIR, **{a: (a,) for a in REFERENCE}}
SOURCES = (*SOURCE_GROUPS, REST)
SOURCE_STRATA = ("ambiguous black/brown", "faint glasses")
SOURCE_SET = 0                     # which of a seed's example sets
SCALES = ("fisher", "log_odds")    # pre-registered currency first; log-odds is the sensitivity check


class SourceGroups:
    """`base` (a lie_helpers.training.losses loss) with its terms summed into named sources.

    groups: name -> attributes; a base term belongs to the group holding all its attributes (a softmax group's
    term holds its members); every term in no group goes to "rest". A term whose attributes straddle groups is
    refused. Calling it is calling `base`; `source_terms` sums to it.
    """

    def __init__(self, base, n_outputs: int, groups: dict = SOURCE_GROUPS):
        self.base, self.groups = base, dict(groups)
        self.name = getattr(base, "name", type(base).__name__)
        layout = source_layout(base, n_outputs)
        rows = torch.zeros(len(groups) + 1, len(layout), dtype=torch.float64)
        for t, term in enumerate(layout):
            members = set(term.name.split("+"))
            owners = [g for g, (_, attributes) in enumerate(self.groups.items()) if members & set(attributes)]
            if len(owners) > 1 or (owners and not members <= set(list(self.groups.values())[owners[0]])):
                raise ValueError(f"The loss term {term.name!r} straddles the sources {[list(groups)[g] for g in owners]}.")
            rows[owners[0] if owners else -1, t] = 1
        empty = [name for name, row in zip(groups, rows) if not row.any()]
        if empty:
            raise ValueError(f"The source(s) {empty} hold no term of {self.name}'s loss.")
        self.rows = rows
        self.layout = [Source(name, tuple(sorted({o for t, term in enumerate(layout) if rows[g, t] for o in term.outputs})))
                       for g, name in enumerate([*groups, REST])]

    def source_layout(self, n_outputs):
        return self.layout

    def source_terms(self, logits, targets):
        return source_terms(self.base, logits, targets) @ self.rows.to(logits.dtype).T

    def __call__(self, logits, targets):
        return self.base(logits, targets)


# ----------------------------------------------------------------------------- magnitudes


def pair_magnitudes(loss: str, parts: torch.Tensor, batch_logits: torch.Tensor, scale: str) -> np.ndarray:
    """[pairs or examples, sources, batch, outputs] -> [pairs or examples, sources]: RMS over the batch and the 40
    attributes of each part on `scale` (currency.attribute_perturbations)."""
    perturbation = attribute_perturbations(loss, parts, batch_logits[None, None], scale)
    return perturbation.pow(2).mean(dim=(-2, -1)).sqrt().numpy()


def source_record(model, base_loss, inputs, targets, batch) -> dict:
    """One stratum's magnitudes at one checkpoint: {f"{scale}|{part}": array} with part "self" (D_k) and "source"
    (S_k) [pairs, sources], "bracket" [pairs] (the whole bracket) and "first_order" (J·g_{x,k}) [examples, sources],
    sources in SOURCES' order; and "pairs" [pairs, 2]. A record holds magnitudes only: every readout of the study is
    computed from them."""
    with bracket_mode(model), torch.no_grad():
        batch_logits = model(batch).detach()
    loss_fn = SourceGroups(base_loss, batch_logits.shape[1])
    r = source_brackets(model, loss_fn, inputs, targets, batch, self_part=True)
    if tuple(r.sources) != SOURCES:
        raise RuntimeError(f"source_brackets returned the sources {r.sources}, expected {SOURCES}.")
    return record_from(r, loss_fn.name, batch_logits)


def record_from(r: SourceBrackets, loss: str, batch_logits: torch.Tensor) -> dict:
    """source_record's dict from a computed SourceBrackets (every scale of SCALES)."""
    out = {"pairs": np.array(r.pairs, dtype=np.int64)}
    for scale in SCALES:
        out[f"{scale}|self"] = pair_magnitudes(loss, r.self_pushforward, batch_logits, scale)
        out[f"{scale}|source"] = pair_magnitudes(loss, r.pushforward, batch_logits, scale)
        out[f"{scale}|first_order"] = pair_magnitudes(loss, r.first_order, batch_logits, scale)
        out[f"{scale}|bracket"] = pair_magnitudes(loss, r.bracket_pushforward[:, None], batch_logits, scale)[:, 0]
    return out


ADAM_PARTS = ("adam_self", "adam_first_order", "adam_momentum", "adam_full_self")   # D^A, J·Pg, M, (1−β1)D^A + β1M


def adam_parts(r: SourceBrackets, state) -> dict:
    """{part: [pairs or examples, sources, batch, outputs]} of ADAM_PARTS from adam_source_brackets' result."""
    return {"adam_self": r.self_pushforward, "adam_first_order": r.first_order, "adam_momentum": r.momentum_pushforward,
            "adam_full_self": adam_self_part(r, state)}


def adam_source_record(model, base_loss, inputs, targets, batch, state) -> dict:
    """source_record's analogue for Adam's split at the frozen state `state` (engine.adam.AdamState):
    {f"{scale}|{part}": [pairs or examples, sources]} for ADAM_PARTS, and "pairs"."""
    with bracket_mode(model), torch.no_grad():
        batch_logits = model(batch).detach()
    loss_fn = SourceGroups(base_loss, batch_logits.shape[1])
    r = adam_source_brackets(model, loss_fn, inputs, targets, batch, state)
    if tuple(r.sources) != SOURCES:
        raise RuntimeError(f"adam_source_brackets returned the sources {r.sources}, expected {SOURCES}.")
    out = {"pairs": np.array(r.pairs, dtype=np.int64)}
    for scale in SCALES:
        for part, value in adam_parts(r, state).items():
            out[f"{scale}|{part}"] = pair_magnitudes(loss_fn.name, value, batch_logits, scale)
    return out


# ----------------------------------------------------------------------------- shares


def log_medians(magnitudes) -> np.ndarray:
    """[pairs or examples, sources] -> [sources]: log10 of the median over pairs (examples).

    −inf where the median is exactly 0: a confident attribute's float32 sigmoid saturates to a zero residual, so its
    J·g vanishes (measured once in the study: Wearing_Hat's J·g, one run, one stratum). The other sources' reference
    median counts it as the smallest value, as the pre-registered readout does; its own share is then −inf."""
    with np.errstate(divide="ignore"):
        return np.log10(np.median(np.asarray(magnitudes, float), axis=0))


def shares(magnitudes, sources=SOURCES, reference=REFERENCE) -> dict:
    """{source: Q_k} from [pairs or examples, sources] magnitudes (module docstring): log10 median over pairs minus
    the median over the reference sources other than k. "rest" gets none."""
    logs = dict(zip(sources, log_medians(magnitudes)))
    out = {}
    for k in sources:
        if k == REST:
            continue
        others = [logs[j] for j in reference if j != k]
        out[k] = float(logs[k] - np.median(others))
    return out


def dominant_example(magnitudes, pairs, source: int) -> int:
    """The example whose pairs carry the largest share of Σ_pairs magnitude of `source` ([pairs, sources])."""
    m = np.asarray(magnitudes, float)[:, source]
    pairs = np.asarray(pairs)
    n = int(pairs.max()) + 1
    return int(np.argmax([m[(pairs == e).any(axis=1)].sum() for e in range(n)]))


def dominant_share(magnitudes, pairs, source: int) -> float:
    """Share of Σ_pairs magnitude of `source` carried by the pairs of its dominant example."""
    m = np.asarray(magnitudes, float)[:, source]
    e = dominant_example(magnitudes, pairs, source)
    return float(m[(np.asarray(pairs) == e).any(axis=1)].sum() / m.sum())


def leave_one_out(magnitudes, pairs, source: str, sources=SOURCES, reference=REFERENCE) -> float:
    """Q of `source` with every pair of its dominant example left out (all sources read on the same pairs); nan when
    no pair would be left (two examples)."""
    m = np.asarray(magnitudes, float)
    e = dominant_example(m, pairs, list(sources).index(source))
    keep = ~(np.asarray(pairs) == e).any(axis=1)
    return shares(m[keep], sources, reference)[source] if keep.any() else float("nan")


def named_attributes(source: str) -> tuple:
    """The attributes of a named source (SOURCE_GROUPS)."""
    return SOURCE_GROUPS[source]


assert all(a in ATTRIBUTES for group in SOURCE_GROUPS.values() for a in group)
