"""Toy problems for the theory (notebook 00): where the bracket can be checked exactly.

Every check goes through the bracket engine (`lie_helpers.brackets`) with the same
(model, loss_fn, example) API the CelebA notebooks use, so passing here also tests the
engine. Everything is float64 and seeded. Reading order:

1. parameter dicts and minibatches (helpers),
2. random quadratic problems, with a closed-form bracket,
3. a small smooth nonlinear problem (tanh MLP),
4. swap difference / lr² against the bracket, over a grid of learning rates,
5. minibatches: the bracket is bilinear,
6. Smith, Dherin, Barrett & De (ICLR 2021): one epoch averaged over all orders follows
   gradient flow on a modified loss,
7. a lesson in the plane: one linear neuron, two examples, a smooth loss (the pictures of
   notebook 00, with a closed-form bracket and a commuting control).

Functions never change a model's parameters: they work on dicts of tensors and, where the
engine needs a model at another point θ, on a fresh copy holding θ (`with_parameters`).
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .brackets import (axpy, field_norm, gradient, hvp, lie_bracket, parameters_of, relative_error,
                       swap_difference)
from .numerics import loglog_fit

DTYPE = torch.float64


# ----------------------------------------------------------------------------- helpers


def with_parameters(model: nn.Module, params: dict) -> nn.Module:
    """A copy of `model` whose parameters named in `params` hold those values (the model itself is untouched)."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if name in params:
                p.copy_(params[name])
    return moved


def difference(a: dict, b: dict) -> dict:
    return {n: a[n] - b[n] for n in a}


def mean_of(dicts: list[dict]) -> dict:
    return {n: sum(d[n] for d in dicts) / len(dicts) for n in dicts[0]}


def half_squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½‖pred − target‖² over the last dimension, averaged over all leading dimensions.

    For one example (batch dimension 1) this is its loss; for a packed minibatch
    (see `minibatch`) it is the mean of its examples' losses.
    """
    return 0.5 * (pred - target).pow(2).sum(-1).mean()


def minibatch(examples: list) -> tuple:
    """Pack examples into one engine example (batch dimension 1) whose loss is their mean.

    The engine takes examples with a leading batch dimension of 1, so a minibatch of B
    examples becomes inputs of shape (1, B, ...): the toy models act on any leading
    dimensions and `half_squared_error` averages over them. Its field is then exactly the
    minibatch-averaged field (1/B)·Σ_i v(x_i).
    """
    inputs = torch.cat([x for x, _ in examples])[None]
    targets = torch.cat([t for _, t in examples])[None]
    return inputs, targets


def sgd_path(model: nn.Module, loss_fn: Callable, examples: list, lr: float) -> list[dict]:
    """Parameters before and after each plain SGD step θ ← θ − lr·∇L(example), in order."""
    path = [parameters_of(model)]
    for example in examples:
        g = gradient(with_parameters(model, path[-1]), loss_fn, example)
        path.append(axpy(-lr, g, path[-1]))
    return path


# ----------------------------------------------------------------------------- toy problems


@dataclass
class ToyProblem:
    """A model, a per-example loss and its examples; for quadratics also A_i and a_i."""
    model: nn.Module
    loss_fn: Callable
    examples: list
    A: torch.Tensor | None = None  # (n, d, d), A_i = L_iᵀ L_i
    a: torch.Tensor | None = None  # (n, d), minimiser of example i's loss


class LinearMap(nn.Module):
    """Holds θ ∈ R^d and maps a design matrix L (..., r, d) to L θ (..., r)."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, design: torch.Tensor) -> torch.Tensor:
        return design @ self.theta


def random_quadratics(n: int = 4, d: int = 5, r: int = 5, seed: int = 0) -> ToyProblem:
    """n random quadratic losses ½(θ−a_i)ᵀA_i(θ−a_i), written as least squares.

    Example i is (L_i, b_i) with L_i a random r×d design matrix and b_i = L_i a_i, so its
    loss ½‖L_iθ − b_i‖² is the quadratic with A_i = L_iᵀL_i. Least squares lets the
    quadratics go through the same engine as any network.
    """
    gen = torch.Generator().manual_seed(seed)
    design = torch.randn(n, r, d, generator=gen, dtype=DTYPE) / math.sqrt(r)
    a = torch.randn(n, d, generator=gen, dtype=DTYPE)
    b = torch.einsum("nrd,nd->nr", design, a)
    theta0 = torch.randn(d, generator=gen, dtype=DTYPE)
    examples = [(design[i:i + 1], b[i:i + 1]) for i in range(n)]
    return ToyProblem(LinearMap(theta0), half_squared_error, examples,
                      A=design.transpose(1, 2) @ design, a=a)


def quadratic_bracket(theta: torch.Tensor, A_x, a_x, A_y, a_y) -> torch.Tensor:
    """Closed form [v(x), v(y)] = A_y A_x(θ−a_x) − A_x A_y(θ−a_y) for quadratic losses."""
    return A_y @ (A_x @ (theta - a_x)) - A_x @ (A_y @ (theta - a_y))


def quadratic_field(A: torch.Tensor, a: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """v(θ) = −A(θ − a) at each point of `grid` (..., d): the field of one quadratic example."""
    return -(grid - a) @ A.T


def tanh_mlp(n: int = 8, d_in: int = 3, hidden: int = 16, d_out: int = 2, seed: int = 0) -> ToyProblem:
    """A small smooth nonlinear problem: a tanh MLP regressing a random smooth function.

    tanh keeps every derivative finite, so the O(lr³) remainder of the swap difference is
    clean (ReLU kinks would break it; see docs/design.md §5).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen, dtype=DTYPE)
    w = torch.randn(d_in, d_out, generator=gen, dtype=DTYPE)
    y = torch.sin(x @ w) + 0.1 * torch.randn(n, d_out, generator=gen, dtype=DTYPE)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(DTYPE)
    examples = [(x[i:i + 1], y[i:i + 1]) for i in range(n)]
    return ToyProblem(model, half_squared_error, examples)


# ----------------------------------------------------------------------------- swap vs bracket


@dataclass
class SwapCheck:
    """Relative error ‖swap/lr² − bracket‖/‖bracket‖ per learning rate, and its log-log slopes.

    `slope` fits every point. `asymptotic_slope` fits only the `fit_points` smallest learning
    rates whose error stands well above round-off (`roundoff`, a conservative estimate): the
    regime where the Taylor expansion's O(lr³) remainder dominates. A piecewise-smooth field
    (max-pool, ReLU) only reaches that regime once the steps are too small to cross a kink.
    """
    lrs: np.ndarray
    rel_err: np.ndarray
    slope: float
    roundoff: np.ndarray
    fitted: np.ndarray          # bool mask of the points behind asymptotic_slope
    asymptotic_slope: float

    @property
    def first_order(self) -> bool:
        """The error falls like lr (slope 1 ± 0.2) in the asymptotic regime."""
        return bool(abs(self.asymptotic_slope - 1) <= 0.2)


def swap_check(model: nn.Module, loss_fn: Callable, example_x, example_y, lrs, *,
               fit_points: int = 3) -> SwapCheck:
    """Compare swap_difference/lr² with lie_bracket over `lrs`.

    Taylor expansion predicts an error of order lr (slope 1) for smooth losses and zero
    (round-off) for quadratics. Round-off: the swap is built from differences of gradients
    at points lr apart, each exact to about eps·‖g‖ (times a summation factor, taken as 100),
    so the relative error cannot fall below ~100·eps·(‖g_x‖ + ‖g_y‖) / (lr·‖bracket‖).
    """
    bracket = lie_bracket(model, loss_fn, example_x, example_y)
    eps = torch.finfo(next(iter(bracket.values())).dtype).eps
    gradient_scale = (field_norm(gradient(model, loss_fn, example_x))
                      + field_norm(gradient(model, loss_fn, example_y)))
    lrs = np.asarray(lrs, dtype=float)
    errs = []
    for lr in lrs:
        swap = swap_difference(model, loss_fn, example_x, example_y, float(lr))
        errs.append(relative_error({n: s / lr**2 for n, s in swap.items()}, bracket))
    errs = np.array(errs)
    roundoff = 100 * eps * gradient_scale / (lrs * field_norm(bracket))
    above = np.flatnonzero(errs > 10 * roundoff)
    chosen = above[np.argsort(lrs[above])[:fit_points]]
    fitted = np.zeros(len(lrs), bool)
    fitted[chosen] = True
    asymptotic = loglog_fit(lrs[fitted], errs[fitted]).slope if fitted.sum() >= 3 else float("nan")
    return SwapCheck(lrs, errs, loglog_fit(lrs, errs).slope, roundoff, fitted, asymptotic)


# ----------------------------------------------------------------------------- minibatches


@dataclass
class MinibatchCheck:
    """The bracket of two minibatch fields against the mean of example brackets and the swap."""
    bracket: dict            # [v(X), v(Y)] of the packed minibatches
    pairwise_mean: dict      # mean over x in X, y in Y of [v(x), v(y)]
    bilinearity_err: float   # relative difference of the two
    swap: SwapCheck          # minibatch swap difference / lr² against `bracket`


def minibatch_check(model: nn.Module, loss_fn: Callable, batch_x: list, batch_y: list, lrs) -> MinibatchCheck:
    """Bilinearity: [mean_x v(x), mean_y v(y)] = mean_{x,y} [v(x), v(y)].

    So swapping two minibatches moves θ by lr² times the average pairwise bracket, O(lr³).
    """
    X, Y = minibatch(batch_x), minibatch(batch_y)
    bracket = lie_bracket(model, loss_fn, X, Y)
    pairwise = mean_of([lie_bracket(model, loss_fn, x, y) for x in batch_x for y in batch_y])
    return MinibatchCheck(bracket, pairwise, relative_error(bracket, pairwise),
                          swap_check(model, loss_fn, X, Y, lrs))


# ----------------------------------------------------------------------------- Smith et al. 2021


def modified_flow_field(model: nn.Module, loss_fn: Callable, batches: list, lr: float = 0.0) -> Callable:
    """θ ↦ −∇L̃(θ) with L̃ = L + (lr/4m)·Σ_k‖∇L̂_k‖² and L = (1/m)·Σ_k L̂_k.

    ∇‖∇L̂_k‖² = 2 H_k g_k, so −∇L̃ = −(1/m)Σ_k g_k − (lr/2m)Σ_k H_k g_k. lr = 0 gives plain
    gradient flow on L.
    """
    m = len(batches)

    def field(theta: dict) -> dict:
        at = with_parameters(model, theta)
        grads = [gradient(at, loss_fn, b) for b in batches]
        v = {n: -sum(g[n] for g in grads) / m for n in theta}
        if lr:
            for b, g in zip(batches, grads):
                v = axpy(-lr / (2 * m), hvp(at, loss_fn, b, g), v)
        return v
    return field


def rk4(field: Callable, theta: dict, time: float, steps: int) -> dict:
    """Integrate dθ/dt = field(θ) for `time` with `steps` classical Runge-Kutta steps."""
    h = time / steps
    for _ in range(steps):
        k1 = field(theta)
        k2 = field(axpy(h / 2, k1, theta))
        k3 = field(axpy(h / 2, k2, theta))
        k4 = field(axpy(h, k3, theta))
        theta = {n: theta[n] + h / 6 * (k1[n] + 2 * k2[n] + 2 * k3[n] + k4[n]) for n in theta}
    return theta


def epoch_all_orders(model: nn.Module, loss_fn: Callable, batches: list, lr: float) -> dict:
    """θ after one SGD epoch over `batches` (lr), for every order: {order tuple: params}."""
    return {order: sgd_path(model, loss_fn, [batches[k] for k in order], lr)[-1]
            for order in itertools.permutations(range(len(batches)))}


def ordered_bracket_sum(brackets: dict, order) -> dict:
    """Σ_{j before k in `order`} [v_j, v_k], from brackets[(i, j)] = [v_i, v_j] for i < j."""
    terms = [brackets[(i, j)] if i < j else {n: -t for n, t in brackets[(j, i)].items()}
             for i, j in itertools.combinations(order, 2)]
    return {n: sum(t[n] for t in terms) for n in terms[0]}


@dataclass
class SmithCheck:
    """Order-averaged epoch against gradient flows, per learning rate ε (arrays over lrs)."""
    lrs: np.ndarray
    err_flow: np.ndarray       # ‖mean over orders − flow on L for time mε‖, O(ε²)
    err_modified: np.ndarray   # ‖mean over orders − flow on modified L̃‖, O(ε³)
    err_order: np.ndarray      # ‖θ(order) − mean − (ε²/2)Σ brackets‖ / ‖(ε²/2)Σ brackets‖, O(ε)
    slope_flow: float
    slope_modified: float
    slope_order: float
    order: tuple


def smith_check(model: nn.Module, loss_fn: Callable, batches: list, lrs, *, order=None,
                rk4_steps: int = 16) -> SmithCheck:
    """Smith, Dherin, Barrett & De (2021) for one epoch of m minibatches, checked numerically.

    For each ε in `lrs`: average θ after one SGD epoch over all m! orders and compare it
    with gradient flow for time mε on L (differs at O(ε²)) and on the modified loss L̃
    (differs at O(ε³)). Also, for one `order` (default: 0, 1, …, m−1), check that
    θ(order) − mean = (ε²/2)·Σ_{j before k}[v_j, v_k] + O(ε³), brackets taken at the start.
    """
    m = len(batches)
    order = tuple(range(m)) if order is None else tuple(order)
    theta0 = parameters_of(model)
    brackets = {(i, j): lie_bracket(model, loss_fn, batches[i], batches[j])
                for i, j in itertools.combinations(range(m), 2)}
    bracket_sum = ordered_bracket_sum(brackets, order)
    lrs = np.asarray(lrs, dtype=float)
    err_flow, err_modified, err_order = [], [], []
    for lr in map(float, lrs):
        finals = epoch_all_orders(model, loss_fn, batches, lr)
        mean = mean_of(list(finals.values()))
        flow = rk4(modified_flow_field(model, loss_fn, batches), theta0, m * lr, rk4_steps)
        modified = rk4(modified_flow_field(model, loss_fn, batches, lr), theta0, m * lr, rk4_steps)
        err_flow.append(field_norm(difference(mean, flow)))
        err_modified.append(field_norm(difference(mean, modified)))
        predicted = {n: lr**2 / 2 * t for n, t in bracket_sum.items()}
        err_order.append(relative_error(difference(finals[order], mean), predicted))
    err_flow, err_modified, err_order = map(np.array, (err_flow, err_modified, err_order))
    return SmithCheck(lrs, err_flow, err_modified, err_order, loglog_fit(lrs, err_flow).slope,
                      loglog_fit(lrs, err_modified).slope, loglog_fit(lrs, err_order).slope, order)


# ----------------------------------------------------------------------------- a lesson in the plane


def log_cosh_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ log cosh(pred − target) over the last dimension, averaged over the leading ones.

    A smooth Huber loss: its gradient tanh(r) is bounded and its curvature sech²(r) changes
    along the way, so SGD steps on it are not affine (unlike a quadratic's) and the two orders
    of two steps differ at O(ε³) as well as at ε². Written with softplus to stay finite for any r.
    """
    r = pred - target
    return (r + F.softplus(-2 * r) - math.log(2)).sum(-1).mean()


def neuron_pair(inputs=(1.0, 0.3), targets=(1.0, -0.5), theta=(-1.0, 1.0)) -> ToyProblem:
    """Two examples (u_k, t_k) for one linear neuron θ = (w, b) ↦ w·u + b, log-cosh loss.

    Example k depends on θ only through r_k = d_k·θ − t_k with d_k = (u_k, 1): its field
    −tanh(r_k)·d_k points along d_k, towards its line of perfect fit w·u_k + b = t_k, and the
    two lines cross at the joint minimum. Inputs with u_x·u_y = −1 make d_x ⟂ d_y: each loss
    then depends only on its own coordinate and the two fields commute (`neuron_bracket` is 0).
    """
    if len(inputs) != 2 or len(targets) != 2 or len(theta) != 2:
        raise ValueError(f"neuron_pair needs two inputs, two targets and θ = (w, b); got "
                         f"{len(inputs)}, {len(targets)} and {len(theta)} values.")
    examples = [(torch.tensor([[[u, 1.0]]], dtype=DTYPE), torch.tensor([[t]], dtype=DTYPE))
                for u, t in zip(inputs, targets)]
    return ToyProblem(LinearMap(torch.tensor(theta, dtype=DTYPE)), log_cosh_error, examples)


def neuron_bracket(theta: torch.Tensor, inputs, targets) -> torch.Tensor:
    """Closed form of [v_x, v_y] for `neuron_pair` at θ (..., 2), e.g. a grid of points.

    With g_k = tanh(r_k)·d_k and H_k = sech²(r_k)·d_k d_kᵀ,
    H_y g_x − H_x g_y = (d_x·d_y)·[sech²(r_y) tanh(r_x)·d_y − sech²(r_x) tanh(r_y)·d_x].
    """
    d = torch.tensor([[u, 1.0] for u in inputs], dtype=theta.dtype)
    r = theta @ d.T - torch.tensor(targets, dtype=theta.dtype)            # (..., 2)
    tanh, sech2 = torch.tanh(r), 1 / torch.cosh(r) ** 2
    coefficient_y = (sech2[..., 1] * tanh[..., 0])[..., None]
    coefficient_x = (sech2[..., 0] * tanh[..., 1])[..., None]
    return (d[0] @ d[1]) * (coefficient_y * d[1] - coefficient_x * d[0])
