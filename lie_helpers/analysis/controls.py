"""Known-answer controls for the bracket readouts (issue 19, part 2).

A readout is trusted only after it recovers an effect whose size is known from the mathematics
before it is run. Three controls:

1. Loss-weight dose (`loss_weight_dose`): term k of the loss multiplied by w ∈ {1, 2, 4, 8} at a fixed
   checkpoint. The fields are linear in the terms, so with D_k the self part and S_k the source part of
   a bracket and J·g_k the first-order part (lie_helpers.analysis.source_brackets):
       D_k(w) = w² D_k                → slope 2 of log10 magnitude in log10 w (exactly)
       J·g_k(w) = w J·g_k             → slope 1 (exactly)
       S_k(w) = w S_k + (w² − w) D_k  → the curve the w = 1 run predicts (exactly; slope usually between 1 and 2)
   Every readout here is positively homogeneous in the part it reads (RMS over the batch, median over
   pairs, a Fisher factor of the batch's probabilities that the dose does not change), so these slopes
   carry over to the readouts exactly. The study's old readout (an attribute's log10 magnitude of the whole
   bracket minus the median attribute's, DESIGN.md §6) is run on the same dose beside them: a readout of
   what term k creates would move by 2·log10 w for brackets and log10 w for J·g; DESIGN.md §6 reports ≈ 0.
2. Curvature at fixed residuals (`curvature_control`): output k's binary term replaced by
   τ·BCE(z_k/τ, y'_k) with the per-example constant target y'_k = σ(z0_k/τ) − (σ(z0_k) − y_k), z0 the
   checkpoint's logit. At the checkpoint the new term's residual σ(z/τ) − y' equals σ(z) − y, so every
   logit gradient, every per-example and per-source parameter gradient, and every J·g, is unchanged exactly;
   the term's curvature in z becomes σ'(z/τ)/τ instead of σ'(z) = p(1 − p). Every Hessian changes by
   H' − H = J_kᵀ (λ' − λ) J_k (Gauss-Newton part only: the residual term ρ ∇²f_k keeps ρ), so the bracket
   changes by exactly Δ = (H'_y − H_y) g_x − (H'_x − H_x) g_y while J·g does not move: brackets and J·g
   must diverge here, by an amount the closed form gives.
3. Training-level dose (`mean_abs_residual`, `flip_labels`, `monotone`): label noise on one visible,
   non-exclusive attribute at several levels must raise that attribute's mean |residual| monotonically
   (the training runs are wired in elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vjp

from ..data.attributes import ATTRIBUTES
from ..engine.brackets import BracketMatrix, bracket_mode, parameters_of
from .currency import attribute_magnitudes, attribute_perturbations
from ..training.losses import IndependentBCE, SoftmaxGroupLoss
from .source_brackets import source_brackets, source_index, source_layout, source_magnitude, source_terms

DOSE_WEIGHTS = (1.0, 2.0, 4.0, 8.0)
TOLERANCE = {"bracket": 0.3, "first_order": 0.15}      # tests/study_checks.toml's bands around 2 and 1
TEMPERATURES = (0.5, 2.0, 4.0)


# ----------------------------------------------------------------------------- losses for the controls


class WeightedLoss:
    """`base` with some of its terms multiplied: weights {source (index or name): w}. Same outputs and sources."""

    def __init__(self, base, weights: dict, n_outputs: int):
        self.base, self.n_outputs = base, n_outputs
        self.layout = source_layout(base, n_outputs)
        self.weights = torch.ones(len(self.layout), dtype=torch.float64)
        for source, w in weights.items():
            self.weights[source_index(base, n_outputs, source)] = float(w)
        self.name = getattr(base, "name", type(base).__name__)

    def source_layout(self, n_outputs):
        return source_layout(self.base, n_outputs)

    def source_terms(self, logits, targets):
        return source_terms(self.base, logits, targets) * self.weights.to(logits.dtype)

    def __call__(self, logits, targets):
        return self.source_terms(logits, targets).sum()


def temperature_targets(logits_k: torch.Tensor, targets_k: torch.Tensor, tau: float) -> torch.Tensor:
    """y' = σ(z/τ) − (σ(z) − y): the target under which τ·BCE(z/τ, y') has the residual σ(z) − y at z."""
    z = logits_k.double()
    return (torch.sigmoid(z / tau) - (torch.sigmoid(z) - targets_k.double())).to(logits_k.dtype)


class TemperedLoss:
    """`base` with binary source k's term replaced by τ·BCE(z_k/τ, y'_k), same normalisation.

    The targets passed to it carry y'_k in target column `column` (temperature_targets of the checkpoint's
    logits; they may lie outside [0, 1]); all other columns are the base loss's targets.
    """

    def __init__(self, base, source, tau: float, n_outputs: int):
        self.base, self.tau = base, float(tau)
        self.k = source_index(base, n_outputs, source)
        self.output, self.column = binary_output_and_column(base, n_outputs, self.k)
        self.name = getattr(base, "name", type(base).__name__)

    def source_layout(self, n_outputs):
        return source_layout(self.base, n_outputs)

    def source_terms(self, logits, targets):
        terms = source_terms(self.base, logits, targets)
        z, y = logits[:, self.output], targets[:, self.column].to(logits.dtype)
        tempered = self.tau * F.binary_cross_entropy_with_logits(z / self.tau, y, reduction="none") / term_norm(self.base, logits)
        return torch.cat([terms[:, :self.k], tempered[:, None], terms[:, self.k + 1:]], dim=1)

    def __call__(self, logits, targets):
        return self.source_terms(logits, targets).sum()


def term_norm(loss_fn, logits) -> int:
    """The divisor of every binary term in source_terms: batch × outputs (IndependentBCE) or batch × 40."""
    if isinstance(loss_fn, IndependentBCE):
        return logits.numel()
    if isinstance(loss_fn, SoftmaxGroupLoss):
        return logits.shape[0] * len(ATTRIBUTES)
    raise TypeError(f"No term normalisation known for {type(loss_fn).__name__}.")


def binary_output_and_column(loss_fn, n_outputs: int, k: int) -> tuple[int, int]:
    """(output index, target column) of binary source k; a softmax group has no single logit to temper."""
    layout = source_layout(loss_fn, n_outputs)
    if len(layout[k].outputs) != 1:
        raise ValueError(f"Source {layout[k].name!r} is a softmax group: the curvature control needs a binary term.")
    output = layout[k].outputs[0]
    if isinstance(loss_fn, IndependentBCE) or not isinstance(loss_fn, SoftmaxGroupLoss):
        return output, output
    return output, loss_fn.binary_index[output]


# ----------------------------------------------------------------------------- readouts


def loss_name(loss_fn) -> str:
    """The lie_helpers.training.losses name whose output layout the study's readout uses."""
    base = getattr(loss_fn, "base", loss_fn)
    return base.name


def relative_share(loss: str, d_logits: torch.Tensor, batch_logits: torch.Tensor, scale: str = "fisher") -> np.ndarray:
    """The study's readout (study.run_profile): [pairs or examples, batch, outputs] -> [40], each attribute's
    log10 magnitude (currency.attribute_magnitudes: RMS over the batch, median over pairs) minus the median
    attribute's."""
    perturbation = attribute_perturbations(loss, d_logits, batch_logits[None], scale)
    m = attribute_magnitudes(perturbation[None])[0].log10().numpy()
    return m - np.median(m)


def source_readout(loss: str, parts: torch.Tensor, batch_logits: torch.Tensor, scale: str = "fisher",
                   attributes=None) -> np.ndarray:
    """[pairs or examples, sources, batch, outputs] -> [sources]: log10 magnitude of each source's part on all
    the batch's attributes (or the attribute indices `attributes`), Fisher scale by default as the study: RMS
    over batch and attributes, median over pairs (source_brackets.source_magnitude)."""
    perturbation = attribute_perturbations(loss, parts, batch_logits[None, None], scale)
    return source_magnitude(perturbation, outputs=attributes).log10().numpy()


def log_slope(weights, values) -> float:
    """Least-squares slope of `values` (log10 magnitudes) on log10 weights."""
    return float(np.polyfit(np.log10(np.asarray(weights, float)), np.asarray(values, float), 1)[0])


def readout_passes(slope: float, expected: float, tolerance: float) -> bool:
    """Whether a readout recovered a known slope: |slope − expected| ≤ tolerance."""
    return bool(np.isfinite(slope) and abs(slope - expected) <= tolerance)


# ----------------------------------------------------------------------------- 1. loss-weight dose


@dataclass
class Readout:
    """One readout under the dose: its values per weight, the expectation stated before the run, and the check."""
    name: str
    values: np.ndarray               # [weights] log10 magnitudes (or relative shares)
    expected_slope: float | None     # None: no known slope; for a known curve, the slope of that curve
    tolerance: float | None
    expected_values: np.ndarray | None = None   # an exact curve, when one is known
    slope: float = float("nan")
    passed: bool | None = None
    max_curve_error: float | None = None          # |values − expected_values| (log10), when a curve is known


@dataclass
class DoseResult:
    source: str
    weights: tuple
    readouts: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [{"readout": r.name, "expected slope": r.expected_slope, "slope": r.slope, "tolerance": r.tolerance,
                 "passed": r.passed, "curve error": r.max_curve_error} for r in self.readouts.values()]


# The known answers, stated before any weight but 1 is run (module docstring): readout -> (expected slope,
# tolerance). "curve": the exact curve w S_k + (w² − w) D_k that the w = 1 run fixes; None: no known answer.
DOSE_EXPECTATIONS = {
    "source bracket, self part D_k": (2.0, TOLERANCE["bracket"]),
    "source bracket, self part D_k, on attribute k": (2.0, TOLERANCE["bracket"]),
    "source bracket, source part S_k": ("curve", 1e-6),
    "source bracket, source part S_k, on attribute k": ("curve", 1e-6),
    "J·g, source k": (1.0, TOLERANCE["first_order"]),
    "J·g, source k, on attribute k": (1.0, TOLERANCE["first_order"]),
    "old relative share, bracket": (2.0, TOLERANCE["bracket"]),       # what a readout of term k must show
    "old relative share, J·g": (1.0, TOLERANCE["first_order"]),
    "whole bracket on attribute k (absolute)": (None, None),          # no known answer: mixes w and w²
}


def loss_weight_dose(model, loss_fn, inputs, targets, batch, source, weights=DOSE_WEIGHTS, *,
                     scale: str = "fisher", pairs=None) -> DoseResult:
    """Multiply source `source`'s loss term by each w in `weights` (the first must be 1) at the model's
    checkpoint, and read every readout of DOSE_EXPECTATIONS at each w.

    Source readouts: log10 of the part's RMS over the batch and all attributes (or attribute k alone), median
    over pairs (examples for J·g), on `scale` (the study's Fisher scale by default). source must be a binary
    term whose attribute is an output of the study's readout (its name is an attribute).
    """
    weights = tuple(float(w) for w in weights)
    if weights[0] != 1.0 or len(weights) < 2:
        raise ValueError(f"weights must start at 1 and hold at least two values, got {weights}.")
    with bracket_mode(model), torch.no_grad():
        batch_logits = model(batch).detach()
    n_outputs = batch_logits.shape[1]
    k = source_index(loss_fn, n_outputs, source)
    name = source_layout(loss_fn, n_outputs)[k].name
    if name not in ATTRIBUTES:
        raise ValueError(f"Source {name!r} is no single attribute: the study's readout has no column for it.")
    attribute = ATTRIBUTES.index(name)
    loss = loss_name(loss_fn)

    def read(parts, own=False):
        return source_readout(loss, parts[:, :1], batch_logits, scale, attributes=[attribute] if own else None)[0]

    values = {key: [] for key in DOSE_EXPECTATIONS}
    curves = {}
    for w in weights:
        dosed = WeightedLoss(loss_fn, {k: w}, n_outputs)
        r = source_brackets(model, dosed, inputs, targets, batch, sources=[k], self_part=True, pairs=pairs)
        if w == 1.0:      # the exact curve of S_k(w) = w S_k + (w² − w) D_k, fixed before any other weight runs
            s1, d1 = r.pushforward[:, :1], r.self_pushforward[:, :1]
            for key, own in (("source bracket, source part S_k", False), ("source bracket, source part S_k, on attribute k", True)):
                curves[key] = np.array([read(v * s1 + (v * v - v) * d1, own) for v in weights])
        values["source bracket, self part D_k"].append(read(r.self_pushforward))
        values["source bracket, self part D_k, on attribute k"].append(read(r.self_pushforward, True))
        values["source bracket, source part S_k"].append(read(r.pushforward))
        values["source bracket, source part S_k, on attribute k"].append(read(r.pushforward, True))
        values["J·g, source k"].append(read(r.first_order))
        values["J·g, source k, on attribute k"].append(read(r.first_order, True))
        values["old relative share, bracket"].append(relative_share(loss, r.bracket_pushforward, batch_logits, scale)[attribute])
        values["old relative share, J·g"].append(relative_share(loss, r.gradient_pushforward, batch_logits, scale)[attribute])
        whole = attribute_magnitudes(attribute_perturbations(loss, r.bracket_pushforward, batch_logits[None], scale)[None])
        values["whole bracket on attribute k (absolute)"].append(float(whole[0, attribute].log10()))
    result = DoseResult(name, weights)
    for key, (expected, tolerance) in DOSE_EXPECTATIONS.items():
        v = np.array(values[key], float)
        readout = Readout(key, v, expected, tolerance, slope=log_slope(weights, v))
        if expected == "curve":
            readout.expected_values = curves[key]
            readout.max_curve_error = float(np.max(np.abs(v - curves[key])))
            readout.expected_slope = log_slope(weights, curves[key])
            readout.passed = readout.max_curve_error <= tolerance
        elif expected is not None:
            readout.passed = readout_passes(readout.slope, expected, tolerance)
        result.readouts[key] = readout
    return result


# ----------------------------------------------------------------------------- 2. curvature at fixed residuals


def tempered_targets(model, loss_fn, inputs, targets, source, tau: float) -> torch.Tensor:
    """`targets` with binary source k's column replaced by temperature_targets of the model's logits at θ0."""
    with bracket_mode(model), torch.no_grad():
        logits = model(inputs)
    k = source_index(loss_fn, logits.shape[1], source)
    output, column = binary_output_and_column(loss_fn, logits.shape[1], k)
    adjusted = targets.to(logits.dtype).clone()
    adjusted[:, column] = temperature_targets(logits[:, output], adjusted[:, column], tau)
    return adjusted


def logit_gradients(model, loss_fn, inputs, targets) -> torch.Tensor:
    """[examples, outputs]: ∂ℓ_e/∂z_e of each example's loss at the model's logits (its residuals, scaled)."""
    with bracket_mode(model), torch.no_grad():
        logits = model(inputs).detach()
    out = []
    for e in range(inputs.shape[0]):
        z = logits[e:e + 1].clone().requires_grad_(True)
        with torch.enable_grad():
            out.append(torch.autograd.grad(loss_fn(z, targets[e:e + 1]), z)[0][0])
    return torch.stack(out)


def curvature_in_logit(loss_fn, logits, targets, output: int) -> torch.Tensor:
    """[examples]: ∂²ℓ_e/∂z_k² of each example's loss at its logits (one example at a time)."""
    out = []
    for e in range(logits.shape[0]):
        z = logits[e:e + 1].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(z, targets[e:e + 1]), z, create_graph=True)
            (h,) = torch.autograd.grad(g[0, output], z)
        out.append(h[0, output])
    return torch.stack(out)


def predicted_curvature_change(model, loss_fn, tempered, inputs, targets, tempered_targets_, batch, output: int,
                               pairs) -> torch.Tensor:
    """[pairs, batch, outputs]: J_B Δ, Δ = (H'_j − H_j) g_i − (H'_i − H_i) g_j with H' − H = J_kᵀ (λ' − λ) J_k,
    in closed form (one JVP and one VJP of each example's logits per product)."""
    params = parameters_of(model)
    with bracket_mode(model), torch.no_grad():
        logits = model(inputs).detach()
    change = curvature_in_logit(tempered, logits, tempered_targets_, output) - curvature_in_logit(loss_fn, logits, targets, output)
    with bracket_mode(model):
        def f(e):
            return lambda p: functional_call(model, p, (inputs[e:e + 1],))
        grads = []
        for e in range(inputs.shape[0]):
            _, pull = vjp(f(e), params)
            grads.append(pull(logit_gradients(model, loss_fn, inputs[e:e + 1], targets[e:e + 1]))[0])

        def product(e, v):                                  # (H'_e − H_e) v
            dz = jvp(f(e), (params,), (v,))[1][0, output]
            cot = torch.zeros(1, logits.shape[1], dtype=logits.dtype)
            cot[0, output] = change[e] * dz
            return vjp(f(e), params)[1](cot)[0]
        out = []
        for i, j in pairs:
            a, b = product(j, grads[i]), product(i, grads[j])
            delta = {n: a[n] - b[n] for n in params}
            out.append(jvp(lambda p: functional_call(model, p, (batch,)), (params,), (delta,))[1].detach())
    return torch.stack(out)


@dataclass
class CurvatureResult:
    source: str
    taus: tuple
    residual_change: list           # max |logit gradient(τ) − logit gradient(1)| per τ: 0 to round-off
    curvature_factor: list          # [τ] -> [examples] λ'/λ on output k
    log10_ratio: dict               # readout -> [τ] log10 magnitude(τ) − log10 magnitude(1)
    prediction_error: list          # relative error of the bracket change against the closed form, per τ
    expected: dict                  # readout -> the known answer stated before the run


def curvature_control(model, loss_fn, inputs, targets, batch, source, taus=TEMPERATURES, *,
                      scale: str = "fisher") -> CurvatureResult:
    """Temper binary source `source` at fixed residuals for each τ (module docstring, control 2); compare every
    readout's magnitude with τ = 1 and the bracket change with its closed form."""
    with bracket_mode(model), torch.no_grad():
        batch_logits = model(batch).detach()
        logits = model(inputs).detach()
    n_outputs = batch_logits.shape[1]
    k = source_index(loss_fn, n_outputs, source)
    name = source_layout(loss_fn, n_outputs)[k].name
    output, _ = binary_output_and_column(loss_fn, n_outputs, k)
    attribute = ATTRIBUTES.index(name)        # a binary source is one attribute
    loss = loss_name(loss_fn)
    pairs = BracketMatrix(inputs.shape[0]).pairs
    expected = {   # stated before the run
        "J·g, all sources": "log10 ratio 0 exactly (every gradient is unchanged)",
        "J·g, source k": "log10 ratio 0 exactly",
        "whole bracket": "changes by exactly the closed-form Δ (prediction_error ~ round-off)",
        "source bracket, self part D_k": "changes (its Hessians' term-k curvature changes)",
        "source bracket, source part S_k": "changes",
        "old relative share, bracket": "no known answer",
        "old relative share, J·g": "0 change exactly",
    }

    def readouts(r):
        return {
            "J·g, all sources": float(np.log10(source_magnitude(attribute_perturbations(
                loss, r.gradient_pushforward[:, None], batch_logits[None, None], scale)).numpy()[0])),
            "J·g, source k": source_readout(loss, r.first_order[:, :1], batch_logits, scale)[0],
            "whole bracket": float(np.log10(source_magnitude(attribute_perturbations(
                loss, r.bracket_pushforward[:, None], batch_logits[None, None], scale)).numpy()[0])),
            "source bracket, self part D_k": source_readout(loss, r.self_pushforward[:, :1], batch_logits, scale)[0],
            "source bracket, source part S_k": source_readout(loss, r.pushforward[:, :1], batch_logits, scale)[0],
            "old relative share, bracket": relative_share(loss, r.bracket_pushforward, batch_logits, scale)[attribute],
            "old relative share, J·g": relative_share(loss, r.gradient_pushforward, batch_logits, scale)[attribute],
        }

    base = source_brackets(model, loss_fn, inputs, targets, batch, sources=[k], self_part=True)
    base_read = readouts(base)
    base_grad = logit_gradients(model, loss_fn, inputs, targets)
    base_lambda = curvature_in_logit(loss_fn, logits, targets, output)
    result = CurvatureResult(name, tuple(taus), [], [], {key: [] for key in base_read}, [], expected)
    for tau in taus:
        tempered = TemperedLoss(loss_fn, k, tau, n_outputs)
        adjusted = tempered_targets(model, loss_fn, inputs, targets, k, tau)
        result.residual_change.append(float((logit_gradients(model, tempered, inputs, adjusted) - base_grad).abs().max()))
        result.curvature_factor.append((curvature_in_logit(tempered, logits, adjusted, output) / base_lambda).numpy())
        r = source_brackets(model, tempered, inputs, adjusted, batch, sources=[k], self_part=True)
        for key, value in readouts(r).items():
            result.log10_ratio[key].append(float(value - base_read[key]))
        predicted = predicted_curvature_change(model, loss_fn, tempered, inputs, targets, adjusted, batch, output, pairs)
        actual = r.bracket_pushforward - base.bracket_pushforward
        result.prediction_error.append(float((actual - predicted).norm() / predicted.norm()))
    return result


# ----------------------------------------------------------------------------- 3. training-level dose


def attribute_probability(loss_fn, logits: torch.Tensor, attribute: str) -> torch.Tensor:
    """[examples]: the model's probability that `attribute` is present: σ(z) for a binary output, a softmax
    group's p_k for a member."""
    column = ATTRIBUTES.index(attribute)
    if isinstance(loss_fn, IndependentBCE) or column in getattr(loss_fn, "binary_index", []):
        index = column if isinstance(loss_fn, IndependentBCE) else loss_fn.binary_index.index(column)
        return torch.sigmoid(logits[:, index].double())
    for where, members in zip(loss_fn.group_slices(), loss_fn.group_index):
        if column in members:
            return logits[:, where].double().softmax(-1)[:, members.index(column)]
    raise ValueError(f"{attribute!r} is no output of {type(loss_fn).__name__}.")


def mean_abs_residual(model, loss_fn, images: torch.Tensor, attributes: torch.Tensor, attribute: str,
                      batch_size: int = 256) -> float:
    """Mean over the images of |p − y| for `attribute` (p: attribute_probability, y its 0/1 label in `attributes`
    [images, 40]), BatchNorm in eval mode; the model is left as it was."""
    dtype = next(model.parameters()).dtype
    column = ATTRIBUTES.index(attribute)
    total = 0.0
    with bracket_mode(model), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits = model(images[start:start + batch_size].to(dtype))
            p = attribute_probability(loss_fn, logits, attribute)
            total += float((p - attributes[start:start + batch_size, column].double()).abs().sum())
    return total / images.shape[0]


def flip_labels(attributes: torch.Tensor, attribute: str, rate: float, seed: int = 0) -> torch.Tensor:
    """A copy of `attributes` [images, 40] with `attribute`'s label flipped on each image with probability `rate`
    (label noise for data without the generated noise bands)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}.")
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(attributes.shape[0], generator=g) < rate
    out = attributes.clone()
    column = ATTRIBUTES.index(attribute)
    out[flip, column] = 1 - out[flip, column]
    return out


def monotone(values, increasing: bool = True, strict: bool = True) -> bool:
    """Whether `values` (ordered by dose level) grow (or shrink) monotonically."""
    d = np.diff(np.asarray(values, float)) * (1 if increasing else -1)
    return bool(np.all(d > 0) if strict else np.all(d >= 0))
