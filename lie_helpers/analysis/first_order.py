"""First-order baselines: does a bracket show anything that one gradient step (J·g) does not?

Does a bracket show anything that one gradient step does not? At a checkpoint, for the same
bracket examples and pushforward batch as `analysis.analyse_checkpoint`:

* `gradient_pushforward`: the first-order change of the batch logits, J·v_i with v_i = −g_i
  (the sign of the bracket pushforward, J·[v_i, v_j]), and J·(v_i − v_j) for each pair;
* per attribute k of the independent loss, with ℓ_nk = BCE(f_k(x_n), y_nk) and
  L_k = mean_n ℓ_nk: `per_attribute_loss` (L_k), `attribute_gradient_gram` (⟨∇L_k, ∇L_l⟩,
  from which `attribute_gradient_norms` and `gradient_conflict`), `ggn_trace_per_output`
  (tr J_kᵀ Λ_k J_k over the batch, Λ = p(1 − p)) and `calibration_error`;
* comparisons across attributes: `rank_agreement` (Spearman ρ) and `bracket_residual`
  (what log bracket magnitude keeps after regressing on log J·g magnitude).

Model functions evaluate in `brackets.bracket_mode` (eval-mode BatchNorm, TF32 off) and
leave the model as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..engine.brackets import BracketMatrix, bracket_mode, example_loss, parameters_of
from ..training.losses import IndependentBCE
from .summaries import attribute_magnitude, ranks

def check_independent(loss_fn) -> None:
    """Per-attribute baselines split the loss into one BCE per output; only the independent loss has that split."""
    if not isinstance(loss_fn, IndependentBCE):
        raise ValueError(
            f"Per-attribute baselines need lie_helpers.losses.IndependentBCE (one BCE per output), got "
            f"{type(loss_fn).__name__}. Its softmax groups (e.g. the 5 hair outputs of categorical_hair_matched) "
            "share one cross-entropy, so no member has a loss of its own: analyse an independent-loss run.")


def check_batch(model, batch: torch.Tensor, targets: torch.Tensor | None = None) -> dict:
    params = parameters_of(model)
    dtype = next(iter(params.values())).dtype
    if batch.dtype != dtype:
        raise ValueError(f"batch is {batch.dtype} but the model is {dtype}: convert one.")
    if targets is not None and targets.shape[0] != batch.shape[0]:
        raise ValueError(f"batch and targets hold different numbers of examples: "
                         f"{batch.shape[0]} and {targets.shape[0]}.")
    return params


def logits_of(model, batch: torch.Tensor):
    """θ -> model(batch) at parameters θ (a pure function for torch.func)."""
    return lambda params: functional_call(model, params, (batch,))


class GradientPushforward(NamedTuple):
    per_example: torch.Tensor      # [examples, batch, outputs]: J·v_i, v_i = −∇L_i
    pair_difference: torch.Tensor  # [pairs, batch, outputs]: J·(v_i − v_j), pairs as BracketMatrix.pairs


def gradient_pushforward(model, loss_fn, examples: torch.Tensor, targets: torch.Tensor,
                         batch: torch.Tensor) -> GradientPushforward:
    """Each bracket example's field pushed onto the batch logits: lr·J·v_i is what one SGD step on it changes.

    One vmapped gradient of the examples, one vmapped JVP of the batch along the fields;
    the pair differences follow by linearity.
    """
    params = check_batch(model, batch)
    if examples.shape[0] != targets.shape[0]:
        raise ValueError(f"examples and targets hold different numbers of examples: "
                         f"{examples.shape[0]} and {targets.shape[0]}.")
    with bracket_mode(model):
        gradients = vmap(grad(example_loss(model, loss_fn)), in_dims=(None, 0, 0))(
            params, examples[:, None], targets[:, None])
        fields = {k: -g for k, g in gradients.items()}
        per_example = vmap(lambda v: jvp(logits_of(model, batch), (params,), (v,))[1])(fields).detach()
    pairs = BracketMatrix(examples.shape[0]).pairs
    first, second = [i for i, _ in pairs], [j for _, j in pairs]
    return GradientPushforward(per_example, per_example[first] - per_example[second])


def per_attribute_loss(model, loss_fn, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[outputs]: L_k = mean over the batch of attribute k's BCE (the training loss is their mean)."""
    check_independent(loss_fn)
    check_batch(model, batch, targets)
    with bracket_mode(model), torch.no_grad():
        logits = model(batch)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").mean(0)


def attribute_gradient_gram(model, loss_fn, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[outputs, outputs] float64: ⟨∇θ L_k, ∇θ L_l⟩ over all parameters.

    ∇L_k = J_kᵀ (p_k − y_k) / batch: one forward of the batch, then one vmapped VJP per
    attribute. Memory holds outputs × parameters numbers (the attribute gradients).
    """
    check_independent(loss_fn)
    params = check_batch(model, batch, targets)
    with bracket_mode(model):
        logits, pullback = vjp(logits_of(model, batch), params)
        residual = (torch.sigmoid(logits) - targets.to(logits.dtype)).detach() / batch.shape[0]
        n_outputs = logits.shape[1]
        selected = torch.eye(n_outputs, dtype=logits.dtype, device=logits.device)[:, None, :] * residual[None]
        gradients = vmap(pullback)(selected)[0]
    flat = torch.cat([g.detach().reshape(n_outputs, -1).double() for g in gradients.values()], dim=1)
    return flat @ flat.T


def attribute_gradient_norms(gram: torch.Tensor) -> torch.Tensor:
    """[outputs]: ‖∇θ L_k‖, from `attribute_gradient_gram`."""
    return gram.diagonal().clamp(min=0).sqrt()


class GradientConflict(NamedTuple):
    cosine: torch.Tensor    # [outputs, outputs]: cos(∇L_k, ∇L_l)
    conflict: torch.Tensor  # [outputs]: mean over the other attributes l of max(0, −cos(∇L_k, ∇L_l))


def gradient_conflict(gram: torch.Tensor) -> GradientConflict:
    """Cosines between attribute gradients (from `attribute_gradient_gram`) and how much each attribute's opposes the others'."""
    norms = attribute_gradient_norms(gram)
    cosine = gram / (norms[:, None] * norms[None, :])
    n = gram.shape[0]
    others = ~torch.eye(n, dtype=torch.bool, device=gram.device)
    conflict = ((-cosine).clamp(min=0) * others).sum(1) / (n - 1)
    return GradientConflict(cosine, conflict)


class Estimate(NamedTuple):
    value: torch.Tensor
    standard_error: torch.Tensor


def ggn_trace_per_output(model, loss_fn, batch: torch.Tensor, *, samples: int = 32, seed: int = 0) -> Estimate:
    """[outputs]: Σ_n p_nk(1 − p_nk) ‖∇θ f_k(x_n)‖², the GGN (= Fisher) trace of each output's BCE over the batch.

    Hutchinson's estimator in parameter space: for Rademacher u, E[(J_nk·u)²] = ‖∇θ f_k(x_n)‖²,
    so `samples` JVPs of the batch estimate every output's trace at once (the exact value
    needs batch × outputs backward passes, ~10× the bracket analysis on the default model).
    The standard error is over the samples; `seed` makes the estimate reproducible.
    """
    check_independent(loss_fn)
    if samples < 2:
        raise ValueError(f"samples must be at least 2 (for a standard error), got {samples}.")
    params = check_batch(model, batch)
    generator = torch.Generator(device=batch.device).manual_seed(seed)
    directions = {k: torch.randint(0, 2, (samples, *p.shape), generator=generator, device=p.device)
                  .to(p.dtype).mul_(2).sub_(1) for k, p in params.items()}
    with bracket_mode(model):
        with torch.no_grad():
            p = torch.sigmoid(model(batch))
        jacobian_times_u = vmap(lambda u: jvp(logits_of(model, batch), (params,), (u,))[1])(directions).detach()
    per_sample = (p * (1 - p) * jacobian_times_u.pow(2)).sum(1).double()  # [samples, outputs]
    return Estimate(per_sample.mean(0), per_sample.std(0) / samples ** 0.5)


def calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """[outputs]: expected calibration error of each output, Σ_b (n_b / N) |mean label − mean p| over equal-width bins of p.

    probabilities and labels are [examples, outputs]; a probability of exactly 1 falls in the last bin.
    """
    if probabilities.shape != labels.shape or probabilities.dim() != 2:
        raise ValueError(f"probabilities and labels must both be [examples, outputs], got "
                         f"{tuple(probabilities.shape)} and {tuple(labels.shape)}.")
    if bool(((probabilities < 0) | (probabilities > 1)).any()):
        raise ValueError("probabilities must lie in [0, 1] (pass torch.sigmoid(logits), not logits).")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}.")
    p = probabilities.double()
    which = (p * bins).floor().clamp(max=bins - 1).long()
    gap = torch.zeros(bins, p.shape[1], dtype=torch.float64, device=p.device)
    gap.scatter_add_(0, which, labels.double() - p)
    return gap.abs().sum(0) / p.shape[0]


def rank_agreement(bracket_magnitude, baseline_magnitude) -> np.ndarray:
    """Spearman ρ of two magnitudes over the outputs (last axis), one per leading index (e.g. checkpoint)."""
    a, b = np.asarray(bracket_magnitude, dtype=np.float64), np.asarray(baseline_magnitude, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"The magnitudes have different shapes: {a.shape} and {b.shape}.")
    rho = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))]
    return np.array(rho).reshape(a.shape[:-1])


@dataclass(frozen=True)
class Residual:
    """log10(bracket) = slope · log10(J·g) + intercept + residual, least squares across the outputs."""
    residual: np.ndarray  # [outputs]: > 0 where the bracket is larger than the gradient predicts
    slope: float
    intercept: float
    r_squared: float


def bracket_residual(bracket_magnitude, gradient_magnitude) -> Residual:
    """What a bracket adds over the first-order prediction: the residual of log bracket on log J·g over outputs."""
    x, y = np.asarray(gradient_magnitude, dtype=np.float64), np.asarray(bracket_magnitude, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"Need two [outputs] magnitudes of one checkpoint, got shapes {x.shape} and {y.shape}.")
    if not ((x > 0).all() and (y > 0).all()):
        raise ValueError("Magnitudes must be positive to take logarithms.")
    lx, ly = np.log10(x), np.log10(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (slope * lx + intercept)
    return Residual(residual, float(slope), float(intercept), float(1 - residual.var() / ly.var()))


@dataclass(frozen=True)
class FirstOrderComparison:
    """Per trained checkpoint (step > 0): how the bracket magnitudes of the 40 outputs compare with the baselines."""
    steps: list
    rho: dict                  # baseline name -> [checkpoints]: Spearman ρ with the bracket magnitude over outputs
    residual: np.ndarray       # [checkpoints, outputs]: log10 bracket magnitude beyond what log10 J·g predicts
    r_squared: np.ndarray      # [checkpoints]: share of log bracket magnitude that log J·g explains
    highlight: tuple           # the outputs followed, e.g. the hair colours
    bracket_rank: np.ndarray   # [checkpoints, highlight]: rank by bracket magnitude (1 = largest)
    gradient_rank: np.ndarray  # [checkpoints, highlight]: rank by J·g magnitude
    residual_rank: np.ndarray  # [checkpoints, highlight]: rank by residual (1 = most above J·g)


def baseline_magnitudes(records) -> dict:
    """Each stored baseline as one value per checkpoint and output, [checkpoints, outputs] (numpy)."""
    if records.gradient_pushforward is None:
        raise ValueError("These records hold no first-order baselines (they are stored for the independent "
                         "loss, analysis version 2): rerun the bracket analysis (notebook 02).")
    grams = records.attribute_gradient_gram
    probabilities = torch.sigmoid(records.batch_logits.double())
    return {
        "J·g (first order)": attribute_magnitude(records.gradient_pushforward).numpy(),
        "attribute loss": records.attribute_loss.double().numpy(),
        "gradient norm": torch.stack([attribute_gradient_norms(g) for g in grams]).numpy(),
        "gradient conflict": torch.stack([gradient_conflict(g).conflict for g in grams]).numpy(),
        "calibration error": torch.stack([calibration_error(p, t) for p, t in
                                          zip(probabilities, records.batch_targets)]).numpy(),
        "logit spread": records.batch_logits.double().std(dim=1).numpy(),
        "GGN trace": records.ggn_trace.double().numpy(),
    }


def compare_with_first_order(records, output_names, highlight=("Black_Hair", "Brown_Hair")) -> FirstOrderComparison:
    """Rank agreement of bracket magnitude with every baseline, and the bracket's residual over J·g."""
    trained = [c for c, step in enumerate(records.steps) if step > 0]
    if len(trained) < 1:
        raise ValueError(f"The comparison needs a checkpoint after step 0; the records have steps {records.steps}.")
    bracket = attribute_magnitude(records.logit_perturbation).numpy()[trained]
    magnitudes = {name: values[trained] for name, values in baseline_magnitudes(records).items()}
    gradient = magnitudes["J·g (first order)"]
    fits = [bracket_residual(b, g) for b, g in zip(bracket, gradient)]
    residual = np.stack([f.residual for f in fits])
    index = [list(output_names).index(name) for name in highlight]
    rank = lambda values: ranks(torch.as_tensor(values)).numpy()[:, index]  # noqa: E731
    return FirstOrderComparison(
        steps=[records.steps[c] for c in trained],
        rho={name: rank_agreement(bracket, values) for name, values in magnitudes.items()},
        residual=residual, r_squared=np.array([f.r_squared for f in fits]), highlight=tuple(highlight),
        bracket_rank=rank(bracket), gradient_rank=rank(gradient), residual_rank=rank(residual))


def _agreement(rho: float) -> str:
    size = abs(rho)
    word = "closely" if size >= 0.8 else "partly" if size >= 0.5 else "weakly" if size >= 0.2 else "not"
    return word + ("" if rho >= 0 or word == "not" else ", in reverse")


def describe_first_order(comparison: FirstOrderComparison, output_names) -> str:
    """A paragraph, generated from the numbers, on what the brackets add over one gradient step.

    For each followed output: a *bracket finding* when its residual over J·g ranks in the top
    quarter at most checkpoints; a *gradient finding* when J·g itself ranks it in the top quarter
    and the residual does not; *below the first-order prediction* when the residual ranks in the
    bottom quarter; otherwise neither.
    """
    n_outputs, n = len(output_names), len(comparison.steps)
    quarter = n_outputs / 4
    jg = comparison.rho["J·g (first order)"]
    others = ", ".join(f"{name} {np.median(rho):+.2f} ({_agreement(np.median(rho))})"
                       for name, rho in comparison.rho.items() if name != "J·g (first order)")
    text = [f"Over the {n} trained checkpoints, the bracket magnitudes of the {n_outputs} outputs follow the "
            f"first-order prediction J·g {_agreement(np.median(jg))}: Spearman ρ median {np.median(jg):+.2f} "
            f"(range {jg.min():+.2f} to {jg.max():+.2f}), and log J·g explains a median "
            f"{np.median(comparison.r_squared):.0%} of the variance of log bracket magnitude across outputs. "
            f"The other baselines (median ρ): {others}."]
    verdicts = []
    for k, name in enumerate(comparison.highlight):
        residual = comparison.residual[:, list(output_names).index(name)]
        bracket_rank, gradient_rank = np.median(comparison.bracket_rank[:, k]), np.median(comparison.gradient_rank[:, k])
        residual_rank = np.median(comparison.residual_rank[:, k])
        if np.sum(comparison.residual_rank[:, k] <= quarter) > n / 2:
            verdict = "a bracket finding: it stands out beyond what J·g predicts"
        elif residual_rank > n_outputs - quarter:
            verdict = "below the first-order prediction: its brackets are smaller than J·g predicts"
        elif gradient_rank <= quarter:
            verdict = "a gradient finding: J·g already ranks it high, and the bracket adds nothing beyond it"
        else:
            verdict = "neither a bracket nor a gradient finding"
        verdicts.append(verdict.split(":")[0])
        text.append(f"{name}: median rank {bracket_rank:g} by bracket, {gradient_rank:g} by J·g and "
                    f"{residual_rank:g} by the residual (1 = most above what J·g predicts), above the line at "
                    f"{int(np.sum(residual > 0))} of {n} checkpoints (median factor {10 ** np.median(residual):.2f}): "
                    f"{verdict}.")
    if len(set(verdicts)) == 1:
        text.append(f"So for all of them, the brackets' signal is {verdicts[0]}.")
    return " ".join(text)
