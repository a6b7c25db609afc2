"""Symmetries, conserved quantities and brackets (notebook 05).

If every example's flow conserves Q (v(x)·∇Q = 0 for all x and θ), every bracket does:
[v(x), v(y)]Q = v(x)(v(y)Q) − v(y)(v(x)Q) = 0. So ⟨∇Q, bracket⟩ = 0, and a bracket can
never move a network along the gradient of a conserved quantity (Kunin et al., "Neural
Mechanics"). Three symmetries of the networks in this project, each measured as a cosine
between the bracket and ∇Q (0: conserved; the cosine of a generic direction is O(1/√dim)):

- scale: a conv weight W followed by BatchNorm with batch statistics, L(αW) = L(W), so
  Q = ½‖W‖² and ∇Q = W. BatchNorm's eps breaks it at order eps/variance; eval-mode
  BatchNorm (running statistics) breaks it outright.
- rescale: a ReLU unit, (w_in, b_in, w_out) → (α w_in, α b_in, w_out/α), so
  Q = ‖w_in‖² + b_in² − ‖w_out‖² for each hidden unit. tanh has no such symmetry.
- translation: a softmax over K logits is unchanged when all K rows of the head move
  together, so the sum of the K rows (weights and biases) is conserved.

A discrete step breaks what the flow conserves: for a scale-invariant W, ⟨g_W, W⟩ = 0 and a
plain SGD step W ← W − lr·g_W grows ‖W‖² by exactly lr²‖g_W‖².
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import grad

from ..engine import toy
from ..engine.numerics import cosine
from ..engine.brackets import bracket_matrix, bracket_mode, example_loss, field_norm, parameters_of


# ----------------------------------------------------------------------------- minibatches as examples

class PackedBatch(nn.Module):
    """`model` applied to a minibatch packed as one engine example: inputs (1, B, ...) -> outputs (1, B, ...).

    The engine's examples have a batch dimension of 1, and BatchNorm with batch statistics
    cannot normalise one 32-pixel image (the last stage is 1×1: one value per channel). A
    packed minibatch is normalised with its own statistics, as in training.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs[0])[None]


def packed_loss(loss_fn):
    """The loss of a packed minibatch: `loss_fn` on the B examples (its mean over them)."""
    return lambda outputs, targets: loss_fn(outputs[0], targets[0])


def packed_minibatches(inputs: torch.Tensor, targets: torch.Tensor, size: int) -> list[tuple]:
    """Consecutive minibatches of `size` examples, each packed as one engine example."""
    return [(inputs[i:i + size][None], targets[i:i + size][None]) for i in range(0, len(inputs) - size + 1, size)]


def with_batchnorm_eps(model: nn.Module, eps: float) -> nn.Module:
    """A copy of `model` whose BatchNorm layers use `eps` (the model itself is untouched)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = eps
    return model


# ----------------------------------------------------------------------------- scale symmetry (BatchNorm)

def conv_weights_before_batchnorm(model: nn.Module) -> list[str]:
    """Names of the conv weights that feed a BatchNorm directly (next module of the same Sequential)."""
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, first), (_, second) in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.modules.batchnorm._BatchNorm):
                    names.append(f"{prefix}.{name}.weight" if prefix else f"{name}.weight")
    return names


def scale_residuals(field: dict, params: dict, names: list[str]) -> np.ndarray:
    """cos(field_W, W) for each scale-invariant weight W: 0 when the field conserves ‖W‖²."""
    return np.array([cosine(field[n], params[n]) for n in names])


def all_pairs(model: nn.Module, loss_fn, examples: list, reduce, reduce_gradient=None, bn_mode: str = "eval"):
    """bracket_matrix over a list of (inputs, targets) examples, by plain autograd ("rows": it takes train-mode
    BatchNorm too); returns (reduced gradients, reduced brackets in the order of itertools.combinations)."""
    inputs = torch.cat([x for x, _ in examples])
    targets = torch.cat([t for _, t in examples])
    result = bracket_matrix(model, loss_fn, inputs, targets, reduce=reduce, reduce_gradient=reduce_gradient,
                            bn_mode=bn_mode, method="rows")
    return result.gradients, [result.brackets[p] for p in result.pairs]


def scale_residuals_of_brackets(model: nn.Module, loss_fn, minibatches: list, names: list[str],
                                bn_mode: str) -> np.ndarray:
    """[pairs, tensors]: cos(bracket_W, W) for every pair of packed `minibatches` and every W in `names`."""
    params = parameters_of(model)
    _, residuals = all_pairs(model, loss_fn, minibatches, lambda b: scale_residuals(b, params, names), bn_mode=bn_mode)
    return np.stack(residuals)


@dataclass
class StepGrowth:
    """Per SGD step and tensor (arrays [steps, tensors]): the measured growth of ‖W‖², lr²‖g_W‖², the part of the
    growth that is the float64 rounding of the step itself (`rounding`), and the largest departure of the step from
    −lr·g_W in units of W_new's last place (`rounding_ulps`: at most 1 when the departure is rounding: of W − lr·g_W,
    and of the difference W_new − W where the step is not small against W_i)."""
    lr: float
    growth: np.ndarray
    predicted: np.ndarray
    rounding: np.ndarray
    rounding_ulps: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        """measured / predicted growth of the step as taken in float64."""
        return self.growth / self.predicted

    @property
    def ratio_without_rounding(self) -> np.ndarray:
        """The same with the step's own rounding removed: 1 − 2⟨g_W, W⟩ / (lr‖g_W‖²) up to round-off. The lr² growth
        is then algebra; what this tests is ⟨g_W, W⟩ ≈ 0, with the sensitivity ‖W‖ / (lr‖g_W‖)."""
        return (self.growth - self.rounding) / self.predicted

    @property
    def rounding_share(self) -> np.ndarray:
        return np.abs(self.rounding) / self.predicted


def _ulps(departure: torch.Tensor, reference: torch.Tensor) -> float:
    """max |departure| in units of the last place of `reference`, element by element."""
    size = reference.abs()
    return float((departure.abs() / (torch.nextafter(size, torch.full_like(size, float("inf"))) - size)).max())


def sgd_norm_growth(model: nn.Module, loss_fn, minibatches: list, lr: float,
                    names: list[str]) -> StepGrowth:
    """Plain SGD (θ ← θ − lr·∇L) over packed `minibatches`, BatchNorm with batch statistics; for each
    step and weight W in `names`, ‖W_new‖² − ‖W‖² against lr²‖g_W‖². The model is not changed.

    A float64 step rounds each W_new_i to about 1e-16·|W_i|. Where ‖W‖ is large and g_W small (the full-width
    network's last convs: ‖W‖ ≈ 100, ‖g_W‖ ≈ 2e-5) that rounding is a few percent of lr²‖g_W‖² at lr = 1e-2, so it is
    measured too: with d = W_new − W (exact for nearby floats) and r = d + lr·g_W its rounding (checked to be within
    a last place of W_new, element by element), the growth ⟨d, W_new + W⟩ holds ⟨r, W_new + W⟩ from rounding alone."""
    params = parameters_of(model)
    loss_grad = grad(example_loss(model, loss_fn))
    rows = {"growth": [], "predicted": [], "rounding": [], "rounding_ulps": []}
    with bracket_mode(model, "train"):
        for inputs, targets in minibatches:
            g = {n: t.detach() for n, t in loss_grad(params, inputs, targets).items()}
            new = {n: params[n] - lr * g[n] for n in params}
            step = {n: new[n] - params[n] for n in names}
            departure = {n: step[n] + lr * g[n] for n in names}
            # ‖new‖² − ‖W‖² = ⟨new − W, new + W⟩: the same number without cancelling two large sums.
            rows["growth"].append([float((step[n] * (new[n] + params[n])).sum()) for n in names])
            rows["predicted"].append([lr ** 2 * float(g[n].pow(2).sum()) for n in names])
            rows["rounding"].append([float((departure[n] * (new[n] + params[n])).sum()) for n in names])
            rows["rounding_ulps"].append([_ulps(departure[n], new[n]) for n in names])
            params = new
    return StepGrowth(lr, **{k: np.array(v) for k, v in rows.items()})


# ----------------------------------------------------------------------------- rescale symmetry (ReLU)

def two_layer_mlp(activation: str = "relu", seed: int = 0, n: int = 6) -> toy.ToyProblem:
    """notebook 00's float64 regression MLP (3 → 16 → 2) with `activation` ("relu" or "tanh") in the middle."""
    problem = toy.tanh_mlp(n=n, d_in=3, hidden=16, d_out=2, seed=seed)
    problem.model[1] = {"relu": nn.ReLU(), "tanh": nn.Tanh()}[activation]
    return problem


def rescale_residuals(field: dict, params: dict, first: str = "0", second: str = "2") -> np.ndarray:
    """cos(∇Q_j, field) in parameter space for each hidden unit j of Linear `first` → activation → Linear
    `second`, Q_j = ‖w_in_j‖² + b_in_j² − ‖w_out_j‖². 0 for every unit when the field conserves each Q_j.

    ∇Q_j is zero outside unit j's parameters, so the inner product needs only those; the
    norm is the whole field's (a unit that is dead for both examples has a zero field there).
    """
    def unit_rows(tensors, sign):
        incoming = torch.cat([tensors[f"{first}.weight"], tensors[f"{first}.bias"][:, None]], dim=1)
        return torch.cat([incoming, sign * tensors[f"{second}.weight"].T], dim=1).double()  # [hidden, d_in+1+d_out]

    grad_q, f = unit_rows(params, -1.0), unit_rows(field, 1.0)
    return ((grad_q * f).sum(1) / (grad_q.norm(dim=1) * field_norm(field))).numpy()


def rescale_check(problem: toy.ToyProblem) -> tuple[np.ndarray, np.ndarray]:
    """(gradients [examples, hidden], brackets [pairs, hidden]): rescale residuals of every example's
    field and of every pair's bracket of a two-layer MLP (see `two_layer_mlp`)."""
    params = parameters_of(problem.model)
    fields, brackets = all_pairs(problem.model, problem.loss_fn, problem.examples,
                                 lambda b: rescale_residuals(b, params), lambda g: rescale_residuals(g, params))
    return np.array(fields), np.array(brackets)


# ----------------------------------------------------------------------------- translation symmetry (softmax)

def head_name(model: nn.Module) -> str:
    """The name of the last Linear layer: the head whose rows make the logits."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def translation_residual(field: dict, head: str, rows) -> float:
    """Share of the head rows' field along "every row moves alike": ‖Σ_k f_k‖ / (√K ‖f‖) over rows k of
    [weight | bias]. 0 when the field conserves the sum of the rows; about 1/√K for unrelated rows."""
    block = torch.cat([field[f"{head}.weight"], field[f"{head}.bias"][:, None]], dim=1)[list(rows)].detach().double()
    return float(block.sum(0).norm() / (len(rows) ** 0.5 * block.norm()))


def translation_check(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor,
                      rows) -> tuple[np.ndarray, np.ndarray]:
    """(gradients [examples], brackets [pairs]): translation residuals of the head `rows` of every
    example's field and every pair's bracket (eval-mode BatchNorm, as in notebook 02)."""
    head = head_name(model)
    result = bracket_matrix(model, loss_fn, inputs, targets,
                            reduce=lambda b: translation_residual(b, head, rows),
                            reduce_gradient=lambda g: translation_residual(g, head, rows))
    return np.array(result.gradients), np.array([result.brackets[p] for p in result.pairs])
