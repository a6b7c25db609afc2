"""Adam's bracket at every checkpoint, stored beside the SGD bracket's records (analysis.records).

At each checkpoint, with its own Adam state (m₀, v₀, t; training keeps every checkpoint's), Adam's
bracket 𝔅(i, j) = P(H_j w_i − H_i w_j), w_i = P((1−β1)g_i + β1 m₀), P = 1/(√v̂₀ + ε) (engine.adam)
among the same examples, BatchNorm in eval mode as for the SGD bracket, reduced the same way:

    adam_bracket_rms         [pairs, tensors]         RMS of each parameter tensor of each 𝔅(i, j)
    adam_tangent_rms         [N, tensors]             RMS of each tensor of each w_i (the RMS law's other axis)
    adam_logit_perturbation  [pairs, batch, outputs]  𝔅(i, j) pushed onto the fixed batch's outputs
    adam_scales              [2]                      κ = (1−β1)c₁c₂ and γc₁ (AdamState.scales): the order effect of
                                                      two Adam steps holds lr²·κ·𝔅 right after them, lr²·γc₁·𝔅 once
                                                      their momentum has drained
    adam_step                [1]                      t, the Adam steps taken before the checkpoint

𝔅 is per unit lr²; multiply by lr²·scale for an order effect. At step 0 Adam has taken no step and has
no second moment, so 𝔅 is undefined there: its entries are NaN (adam_step 0).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ..engine.adam import AdamState, adam_bracket_matrix
from ..engine.brackets import BracketMatrix, pushforward, rms_per_tensor
from ..training.train import adam_state_problem, load_training_state
from ..data.storage import show

ADAM_KEYS = ("adam_bracket_rms", "adam_tangent_rms", "adam_logit_perturbation", "adam_scales", "adam_step")


def load_adam_state(run_dir, step: int, profile, device="cpu", dtype=torch.float32) -> AdamState:
    """The Adam state training had after checkpoint `step` (its file checked against the manifest), on `device`."""
    model, optimizer = load_training_state(run_dir, step, profile, dtype=dtype)
    state = AdamState.from_optimizer(model, optimizer)
    return replace(state, m={n: t.to(device) for n, t in state.m.items()},
                   v={n: t.to(device) for n, t in state.v.items()})


def missing_adam_states(run_dir, steps) -> None:
    """Refuse, naming the fix, when a checkpoint among `steps` keeps no usable Adam state (a run trained
    before training kept every checkpoint's)."""
    problems = {s: adam_state_problem(run_dir, s) for s in steps}
    missing = [s for s, p in problems.items() if p]
    if missing:
        raise ValueError(
            f"Adam's bracket needs the Adam state of every checkpoint, and {len(missing)} checkpoint(s) of "
            f"{show(run_dir)} lack it (steps {missing[:5]}{' …' if len(missing) > 5 else ''}): the run was trained "
            f"before training kept every checkpoint's state. Train the run again (delete its checkpoints/ folder "
            f"and rerun notebook 01, or the chain with --from 01 --force; training is deterministic, so the "
            f"checkpoints come back the same), or analyse without Adam's bracket (analyse_run(..., adam=False)). "
            f"First problem: {problems[missing[0]]}")


def reduced_adam_brackets(model, loss_fn, examples, targets, batch, state: AdamState, *,
                          pairs_per_call: int | None = None, pairs=None) -> BracketMatrix | None:
    """adam_bracket_matrix with each 𝔅 reduced on the fly to (RMS per tensor, pushforward onto `batch`) and each
    gradient to the RMS per tensor of its tangent w_i; only `pairs` (default all). None at t = 0."""
    if state.step < 1:
        return None
    p = state.preconditioner()
    beta1 = state.betas[0]

    def rms_vector(field_):
        return torch.tensor(list(rms_per_tensor(field_).values()))

    def reduce(bracket):
        return rms_vector(bracket), pushforward(model, batch, bracket).detach().cpu()

    def reduce_gradient(g):
        return rms_vector({n: p[n] * ((1 - beta1) * t + beta1 * state.m[n]) for n, t in g.items()})

    return adam_bracket_matrix(model, loss_fn, examples, targets, state, reduce=reduce,
                               reduce_gradient=reduce_gradient, pairs_per_call=pairs_per_call, pairs=pairs)


def adam_record(matrix: BracketMatrix | None, state: AdamState, sgd_record: dict) -> dict:
    """The Adam entries of a checkpoint's record (module docstring) from reduce_adam_brackets' matrix (every
    pair), shaped like the SGD entries of `sgd_record` (NaN when there is no matrix: step 0)."""
    if matrix is None:
        nan = math.nan
        return {"adam_bracket_rms": torch.full_like(sgd_record["bracket_rms"], nan),
                "adam_tangent_rms": torch.full_like(sgd_record["gradient_rms"], nan),
                "adam_logit_perturbation": torch.full_like(sgd_record["logit_perturbation"], nan),
                "adam_scales": torch.full((2,), nan), "adam_step": torch.tensor([state.step])}
    missing = [p for p in matrix.pairs if p not in matrix.brackets]
    if missing:
        raise ValueError(f"Adam's reduced brackets lack {len(missing)} of {len(matrix.pairs)} pairs "
                         f"(first {missing[0]}): a record needs every pair.")
    scales = state.scales()
    return {"adam_bracket_rms": torch.stack([matrix.brackets[p][0] for p in matrix.pairs]).to(torch.float32),
            "adam_tangent_rms": torch.stack(matrix.gradients).to(torch.float32),
            "adam_logit_perturbation": torch.stack([matrix.brackets[p][1] for p in matrix.pairs]),
            "adam_scales": torch.tensor([scales["immediate"], scales["drained"]]),
            "adam_step": torch.tensor([state.step])}


# ----------------------------------------------------------------------------- the write-up's readings, with Adam's bracket

def adam_view(records):
    """The records with Adam's bracket in the SGD bracket's place, at the checkpoints where it is defined (not
    step 0): `logit_perturbation` its pushforward, `bracket_rms` its per-tensor RMS and `gradient_rms` the RMS of
    its tangents w_i (𝔅 = P(H_j w_i − H_i w_j) pairs them as [v_i, v_j] pairs the gradients), so every reading
    of notebook 03 (RMS law, attributes, J·g) runs on it unchanged."""
    if records.adam_logit_perturbation is None:
        raise ValueError("These records hold no Adam's bracket: rerun the bracket analysis (notebook 02) with adam=True.")
    keep = [c for c in range(len(records.steps)) if bool(torch.isfinite(records.adam_logit_perturbation[c]).all())]
    if not keep:
        raise ValueError("Adam's bracket is defined at no checkpoint of these records (only step 0?).")
    pick = lambda t: None if t is None else t[keep]   # noqa: E731
    return replace(records, steps=[records.steps[c] for c in keep], bracket_rms=records.adam_bracket_rms[keep],
                   gradient_rms=records.adam_tangent_rms[keep], logit_perturbation=records.adam_logit_perturbation[keep],
                   batch_logits=pick(records.batch_logits), seconds=[records.seconds[c] for c in keep],
                   gradient_pushforward=pick(records.gradient_pushforward), attribute_loss=pick(records.attribute_loss),
                   attribute_gradient_gram=pick(records.attribute_gradient_gram), ggn_trace=pick(records.ggn_trace),
                   batch_targets=pick(records.batch_targets), adam_bracket_rms=None, adam_tangent_rms=None,
                   adam_logit_perturbation=None, adam_scales=pick(records.adam_scales), adam_step=pick(records.adam_step))


def describe_adam_readings(sgd: dict, adam: dict, names) -> str:
    """What changes when the write-up's readings take Adam's bracket instead of the SGD bracket. Each of `sgd`
    and `adam` holds "summary" (summaries.AttributeSummary), "comparison" (first_order.FirstOrderComparison)
    and "rms" ({step: rms_law.RmsNull}); words generated from the numbers."""
    def rho(c):
        return float(np.median(c["comparison"].rho["J·g (first order)"]))

    def within(c):
        slopes = [f.within.slope for f in c["rms"].values()]
        return f"{min(slopes):.2f}–{max(slopes):.2f}"

    parts = [f"With Adam's bracket in place of the SGD bracket, the RMS law's within-tensor slope is {within(adam)} "
             f"(SGD bracket: {within(sgd)}), and the bracket's magnitudes over the {adam['summary'].magnitude.shape[1]} "
             f"outputs follow J·g with median Spearman ρ {rho(adam):+.2f} (SGD bracket: {rho(sgd):+.2f})."]
    for k, name in enumerate(names):
        a_rank, s_rank = adam["summary"].median_rank[name], sgd["summary"].median_rank[name]
        a_res = int(np.median(adam["comparison"].residual_rank[:, k]))
        s_res = int(np.median(sgd["comparison"].residual_rank[:, k]))
        parts.append(f"{name}: median rank {a_rank:g} by Adam's bracket (SGD bracket {s_rank:g}), {a_res} by its residual "
                     f"over J·g (SGD bracket {s_res}), {adam['summary'].median_ratio[name]:.1f}× the median output "
                     f"(SGD bracket {sgd['summary'].median_ratio[name]:.1f}×).")
    moved = [name for k, name in enumerate(names)
             if abs(adam["summary"].median_rank[name] - sgd["summary"].median_rank[name]) > 5]
    parts.append("So the preconditioner reorders the attributes: " + ", ".join(moved) + " move by more than five ranks."
                 if moved else "So the preconditioner does not change which attributes the bracket perturbs most: the "
                 "hair colours' ranks move by five or fewer.")
    return " ".join(parts)
