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
