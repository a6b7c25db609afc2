"""Adam's bracket: the order effect of two torch.optim.Adam steps, to second order in lr.

The write-up's bracket is the order effect of plain SGD: θ_AB − θ_BA = lr²[v_A, v_B] + O(lr³).
The network was trained with Adam, whose steps depend on a state (moments m, v, step count t),
and with Adam the order of two steps matters already at first order in lr. This module derives
the expansion, computes both of its parts, and defines the bilinear curvature part: Adam's bracket.

Notation. θ₀ the parameters, (m₀, v₀, t) the Adam state there (t steps taken so far), β1, β2,
ε, lr Adam's settings. A and B are examples or minibatches; a = g_A(θ₀), b = g_B(θ₀) the gradients
of their losses, H_A, H_B their Hessians at θ₀. Every product, square, root and quotient of
vectors is elementwise; only H acts as a matrix. Bias corrections of the k-th step from here:

    c_k = 1 / (1 − β1^(t+k)),   d_k = 1 − β2^(t+k),   P(v, d) = 1 / (√(v/d) + ε).

One torch.optim.Adam step on a gradient g (no weight decay, no amsgrad) at its k-th step is
m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,  θ ← θ − lr·c_k·m·P(v, d_k).

Derivation. Order A then B:

    m₁ = β1·m₀ + (1−β1)·a,   v₁ = β2·v₀ + (1−β2)·a²,   P₁ = P(v₁, d₁),   u₁ = c₁·P₁·m₁,   θ₁ = θ₀ − lr·u₁
    g₂ = g_B(θ₁) = b − lr·H_B u₁ + O(lr²)
    m₂ = β1·m₁ + (1−β1)·g₂,  v₂ = β2·v₁ + (1−β2)·g₂²,  u₂ = c₂·m₂·P(v₂, d₂),   θ_AB = θ₁ − lr·u₂.

u₁ does not depend on lr; u₂ is a smooth function of g₂ (where v₂ > 0) with a diagonal Jacobian

    J₂ = ∂u₂/∂g₂ = (1−β1)·c₂·P₂ − (1−β2)/d₂ · m̂₂·g₂·P₂² / √v̂₂,     m̂₂ = c₂·m₂, v̂₂ = v₂/d₂, P₂ = P(v₂, d₂):

its first term is the momentum's share of the new gradient, its second the new gradient's effect on
the preconditioner through the second moment v₂. So, with u₂° and J₂ evaluated at the frozen
gradient g₂ = b,

    θ_AB = θ₀ − lr·(u₁ + u₂°) + lr²·J₂·H_B u₁ + O(lr³),

and the same with A and B exchanged (superscripts AB and BA mark the order). The result:

    θ_AB − θ_BA = F + S + O(lr³)
    F = −lr·[(u₁ᴬᴮ + u₂°ᴬᴮ) − (u₁ᴮᴬ + u₂°ᴮᴬ)]            first order: the moments and bias corrections, no curvature
    S = lr²·[J₂ᴬᴮ·H_B u₁ᴬᴮ − J₂ᴮᴬ·H_A u₁ᴮᴬ]               second order: curvature

F is exactly the swap of two Adam steps whose gradients are frozen at θ₀ (it is linear in lr). With
means x̄ and order differences Δx = xᴬᴮ − xᴮᴬ of the two orders, using
Δm₁ = (1−β1)(a − b), Δm₂ = −(1−β1)²(a − b), Δv₁ = (1−β2)(a² − b²), Δv₂ = −(1−β2)²(a² − b²):

    F = lr·(1−β1)·[c₁·P̄₁ − (1−β1)·c₂·P̄₂]·(b − a)       the momentum transient and the bias correction
        − lr·[c₁·m̄₁·ΔP₁ + c₂·m̄₂·ΔP₂]                    v's order dependence, ΔP_k ≈ −P_k²·Δv_k / (2·d_k·√v̂_k).

For large t (c ≡ 1) and a common P the first line is lr·β1(1−β1)·P(b − a): the first gradient's
momentum is already in the second step, the second's not yet. Later steps pay the momentum
difference Δm₂ out: with P held fixed and no later gradients, after the drain the first line
becomes lr·(1−β1)·(c₁ − γ)·P(b − a), with

    γ = Σ_{j≥0} (1−β1)·β1^j·c_{2+j}                     (→ 1 for large t),

which vanishes without bias correction (c ≡ 1) and is positive with it (c decreases with t).
What persists at first order is that bias-correction share and v's order dependence (ΔP₁, ΔP₂,
and ΔP₂'s effect on later preconditioners). With β1 = 0 and a preconditioner that does not
depend on v (P ≡ 1), F = 0 and S = lr²·(H_B a − H_A b) = lr²·[v_A, v_B]: plain SGD.

Written out, S = lr²·[J₂ᴬᴮ·H_B·c₁P₁ᴬ(β1·m₀ + (1−β1)·a) − J₂ᴮᴬ·H_A·c₁P₁ᴮ(β1·m₀ + (1−β1)·b)]. The
preconditioner inside, P₁, is the one after the first step (its v̂₁ holds the first gradient, a² in
the order AB); the one outside, in J₂, is after the second step (v̂₂ holds both). v enters S twice:
through these order-dependent preconditioners, and through J₂'s second term (the curvature change
of the second gradient, −lr·H_B u₁, moves v₂ by −2lr(1−β2)·g₂·H_B u₁). These second-moment terms
depend on the gradients through g² inside P, so no bilinear quantity can contain them.

Adam's bracket. Freeze the preconditioner at the state's, P = P₀ = 1/(√v̂₀ + ε) with
v̂₀ = v₀/(1 − β2^t), and drop J₂'s v term; then S = lr²·κ·𝔅(A, B) exactly, with κ = (1−β1)·c₁·c₂ and

    𝔅(A, B) = (1−β1)·P(H_B P g_A − H_A P g_B) + β1·P(H_B − H_A)P m₀ = P·(H_B w_A − H_A w_B),
    w_X = P·((1−β1)·g_X + β1·m₀).

𝔅 is Adam's bracket, the analogue of [v_A, v_B]: the curvature part of the order effect of two
Adam steps with the state's preconditioner and momentum. As fields: with Ṽ_X(θ) = −P·g_X(θ) (the
preconditioned field) and W_X(θ) = −P·((1−β1)·g_X(θ) + β1·m₀) (the direction of Adam's next step on
X, its momentum part constant), 𝔅 = (W_A·∇)Ṽ_B − (W_B·∇)Ṽ_A = [W_A, W_B]/(1−β1). Properties:
antisymmetric; the first term is bilinear in A and B and the momentum term is a difference of a
term linear in B and one linear in A, so for minibatch-averaged losses A = mean_i a_i, B = mean_j b_j
𝔅(A, B) = mean_ij 𝔅(a_i, b_j); with P = 1 and β1 = 0 it is [v_A, v_B]. The bias correction
multiplies whole steps, so the exact form carries the raw m₀ (m₀ = m̂₀·(1 − β1^t) → m̂₀ for large t).
Why P₀: v̂₁ = v̂₀ exactly when a² = v̂₀ (a gradient as large as the state's second moment says),
and likewise v̂₂; in general the remainder S/lr² − κ𝔅 is O(w) relative, w = (1−β2)/d_k the new
gradient's weight in v̂ (≈ 1/(t+k) early in training, → 1 − β2 late), and only O(√v̂/ε) relative
when ε dominates √v̂ (then P hardly depends on v). Measured on a tanh MLP (float64, minibatches of 1 and
4, Adam lr 1e-2, betas (0.8, 0.999), random minibatches before): ‖S/lr² − κ𝔅‖/‖S/lr²‖ was 1.5-1.6 at
t = 4, 0.22-0.33 at t = 20 and 0.017-0.019 at t = 200 (cosine 0.57-0.71, 0.98, 0.9999). Early in
training the second-moment terms are not small: compare real swaps with adam_swap_expansion, whose S
keeps them. Scales of 𝔅 (`AdamState.scales`):

    immediately after the two steps   S ≈ lr²·(1−β1)·c₁·c₂·𝔅
    after momentum has drained         lr²·γ·c₁·𝔅      (P held fixed, no later gradients; → lr²·𝔅 for large t)

since the second gradient's change enters m₂ with weight (1−β1) and the momentum pays it out over
later steps with weights c_{2+j}·β1^j. So for large t, lr²·𝔅 is what persists of the curvature
part, (1−β1)·P(H_B P g_A − H_A P g_B) + β1·P(H_B − H_A)P m̂₀. (With zero later gradients v̂ decays
and P grows by a common factor where ε ≪ √v̂: that changes the drained scale, not 𝔅's direction.)

Validity: the expansion needs the preconditioner not to move much within one step,
lr·|H_B u₁| ≪ √v̂ coordinatewise; coordinates where v₂ = 0 (never a gradient) get no v term, which
is right to O(lr³) there.

Checked (tests/test_adam_bracket.py, float64; tanh MLP and a conv net with BatchNorm in eval and in
train mode; Adam states after 5 real steps): fitted log-log slopes over lr 1e-2..1e-4 of ‖real swap‖,
‖real − F‖ and ‖real − F − S‖ were 0.99-1.00, 1.99-2.00 and 3.00-3.02.

Functions (conventions of `brackets`: fields are dicts name -> tensor over the trainable
parameters, bn_mode as there, the model is never changed; `batch`: examples are minibatches):

    AdamState                 m, v, t, betas, eps, lr; from a torch.optim.Adam, or into a fresh one
    adam_swap_expansion       (F, S) for a pair, from a state: θ_AB − θ_BA = F + S + O(lr³)
    adam_swap_difference      θ_AB − θ_BA from two real torch.optim.Adam steps in each order (ground truth)
    adam_bracket              𝔅(A, B), per unit lr²·(scale): 2 gradients and 2 Hessian-vector products
    adam_bracket_matrix       𝔅 for all pairs of N examples, batched like `bracket_matrix` (same cost)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from .brackets import (BracketMatrix, bracket_mode, brackets_vmapped, check_pair, collect_matrix, example_loss,
                       gradient, hvp, matrix_request, parameters_of)

Params = dict  # name -> tensor, keyed like parameters_of(model)


# ----------------------------------------------------------------------------- the state


def _scalar_step_dtype():
    """The dtype torch.optim.Adam keeps its step count in (float32 unless float64 is the default)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


@dataclass(frozen=True)
class AdamState:
    """Adam's state at θ₀ as the expansion needs it: moments m, v (dicts name -> tensor, keyed like the
    model's trainable parameters), t = steps taken so far (the next step is the (t+1)-th), and the settings.

    Only plain Adam: no weight decay, no amsgrad, not maximize (from_optimizer refuses the others).
    """
    m: Params
    v: Params
    step: int
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    lr: float = 1e-3

    @classmethod
    def from_optimizer(cls, model: nn.Module, optimizer: torch.optim.Optimizer) -> "AdamState":
        """The state of a torch.optim.Adam over `model`'s parameters (copied; neither input changes).

        Every trainable parameter must be in the optimizer with the same settings and the same step
        count; a parameter without state yet (no step taken) has m = v = 0 and t = 0.
        """
        if not isinstance(optimizer, torch.optim.Adam):
            raise TypeError(f"AdamState.from_optimizer needs a torch.optim.Adam, got {type(optimizer).__name__}.")
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        settings, found = set(), {}
        for group in optimizer.param_groups:
            for key, refused in (("weight_decay", 0), ("amsgrad", False), ("maximize", False)):
                if group.get(key, refused) != refused:
                    raise ValueError(f"Adam's bracket covers plain Adam: this optimizer has {key}={group[key]!r} "
                                     f"(needs {refused!r}).")
            betas = tuple(float(b) for b in group["betas"])
            settings.add((float(group["lr"]), betas, float(group["eps"])))
            for p in group["params"]:
                if id(p) in names:
                    found[names[id(p)]] = p
        if len(settings) != 1:
            raise ValueError(f"The optimizer's parameter groups have different settings {sorted(settings)}: "
                             "one (lr, betas, eps) is needed.")
        missing = [n for n in names.values() if n not in found]
        if missing:
            raise ValueError(f"Trainable parameters {missing[:3]} are not in the optimizer: Adam would not move them.")
        (lr, betas, eps), = settings
        m, v, steps = {}, {}, set()
        for name, p in ((n, found[n]) for n in names.values()):
            state = optimizer.state.get(p, {})
            steps.add(int(state["step"]) if "step" in state else 0)
            m[name] = state["exp_avg"].detach().clone() if "exp_avg" in state else torch.zeros_like(p.detach())
            v[name] = state["exp_avg_sq"].detach().clone() if "exp_avg_sq" in state else torch.zeros_like(p.detach())
        if len(steps) != 1:
            raise ValueError(f"The parameters have taken different numbers of Adam steps {sorted(steps)}: "
                             "one step count t is needed for the bias corrections.")
        return cls(m, v, steps.pop(), betas, eps, lr)

    def with_lr(self, lr: float) -> "AdamState":
        """The same state with another learning rate (the expansion's small parameter)."""
        return replace(self, lr=float(lr))

    def optimizer(self, model: nn.Module) -> torch.optim.Adam:
        """A fresh torch.optim.Adam over `model`'s trainable parameters holding this state (copies of m, v).

        The step count is kept as torch keeps it (float32 by default): exact for t < 2**24.
        """
        params = parameters_of(model)
        self.check(params)
        named = dict(model.named_parameters())
        adam = torch.optim.Adam([named[n] for n in params], lr=self.lr, betas=tuple(self.betas), eps=self.eps)
        if self.step > 0:
            for n in params:
                adam.state[named[n]] = {"step": torch.tensor(float(self.step), dtype=_scalar_step_dtype()),
                                        "exp_avg": self.m[n].clone(), "exp_avg_sq": self.v[n].clone()}
        return adam

    def check(self, params: Params) -> None:
        """Refuse a state whose tensors do not match the parameters (names, shapes, dtypes, devices)."""
        for moment, name in ((self.m, "m"), (self.v, "v")):
            if moment.keys() != params.keys():
                raise ValueError(f"The state's {name} must have the model's trainable parameters as keys "
                                 f"(parameters_of); differing: {sorted(moment.keys() ^ params.keys())[:3]}.")
            for k, p in params.items():
                t = moment[k]
                if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                    raise ValueError(f"The state's {name}[{k!r}] is {tuple(t.shape)} {t.dtype} on {t.device}, "
                                     f"the parameter {tuple(p.shape)} {p.dtype} on {p.device}.")
        if self.step < 0 or int(self.step) != self.step:
            raise ValueError(f"step must be a non-negative integer, got {self.step!r}.")

    def corrections(self, k: int) -> tuple[float, float]:
        """(c_k, d_k) = (1/(1 − β1^(t+k)), 1 − β2^(t+k)) for the k-th step from here."""
        beta1, beta2 = self.betas
        return 1 / (1 - beta1 ** (self.step + k)), 1 - beta2 ** (self.step + k)

    def preconditioner(self) -> Params:
        """P₀ = 1/(√v̂₀ + ε), v̂₀ = v₀/(1 − β2^t): the state's own preconditioner, the one Adam's bracket freezes."""
        if self.step < 1:
            raise ValueError("A fresh Adam state (t = 0) has no second moment to precondition with: "
                             "Adam's bracket needs t ≥ 1 (the exact expansion, adam_swap_expansion, does not).")
        d0 = 1 - self.betas[1] ** self.step
        return {n: 1 / ((v / d0).sqrt() + self.eps) for n, v in self.v.items()}

    def scales(self) -> dict:
        """The factors of lr²·𝔅 in the curvature part (module docstring), with the preconditioner frozen:
        "immediate" κ = (1−β1)·c₁·c₂ right after the two steps, "drained" γ·c₁ once momentum has paid out."""
        beta1 = self.betas[0]
        c1, c2 = self.corrections(1)[0], self.corrections(2)[0]
        gamma, start = 0.0, 0
        while True:   # γ = Σ_j (1−β1) β1^j c_{2+j}, in vectorised chunks: the terms fall like β1^j
            j = np.arange(start, start + 100_000, dtype=np.float64)
            terms = (1 - beta1) * beta1 ** j / (1 - beta1 ** (self.step + 2 + j))
            gamma += float(terms.sum())
            start += len(j)
            if beta1 == 0 or terms[-1] < 1e-17 * gamma:
                break
        return {"immediate": (1 - beta1) * c1 * c2, "drained": gamma * c1}


# ----------------------------------------------------------------------------- one pair


class AdamSwapExpansion(NamedTuple):
    """θ_AB − θ_BA = first + second + O(lr³) (module docstring: F and S)."""
    first: Params    # F: Adam's moments and bias corrections with frozen gradients, ∝ lr, no curvature
    second: Params   # S: the curvature part, ∝ lr², preconditioners and v terms of each order


def adam_swap_expansion(model: nn.Module, loss_fn: Callable, example_a, example_b, state: AdamState, *,
                        bn_mode: str = "eval", batch: bool = False) -> AdamSwapExpansion:
    """The order effect of two torch.optim.Adam steps from `state`, A then B minus B then A, to second order.

    Returns (first, second) with θ_AB − θ_BA = first + second + O(lr³), lr = state.lr (module docstring:
    first = F, exact for frozen gradients; second = S, with each order's own preconditioners and the v term).
    Cost: 2 gradients and 2 Hessian-vector products. batch: A and B are minibatches (their batch losses).
    """
    params = parameters_of(model)
    ex = dict(zip("AB", check_pair(example_a, example_b, params, batch=batch)))
    state.check(params)
    beta1, beta2 = state.betas
    eps, lr = state.eps, state.lr
    (c1, d1), (c2, d2) = state.corrections(1), state.corrections(2)
    g = {x: gradient(model, loss_fn, ex[x], bn_mode=bn_mode, batch=batch) for x in "AB"}

    def order(x, y):
        """(u₁ + u₂°, J₂·H_y u₁) of the order x then y."""
        total, jacobian, u1 = {}, {}, {}
        for n in params:
            m0, v0, gx, gy = state.m[n], state.v[n], g[x][n], g[y][n]
            m1, v1 = beta1 * m0 + (1 - beta1) * gx, beta2 * v0 + (1 - beta2) * gx ** 2
            u1[n] = c1 * m1 / ((v1 / d1).sqrt() + eps)
            m2, v2 = beta1 * m1 + (1 - beta1) * gy, beta2 * v1 + (1 - beta2) * gy ** 2
            root = (v2 / d2).sqrt()
            p2 = 1 / (root + eps)
            total[n] = u1[n] + c2 * m2 * p2
            safe = torch.where(root > 0, root, torch.ones_like(root))
            through_v = torch.where(root > 0, (1 - beta2) / d2 * (c2 * m2) * gy * p2 ** 2 / safe,
                                    torch.zeros_like(root))   # no v term where v₂ = 0 (module docstring)
            jacobian[n] = (1 - beta1) * c2 * p2 - through_v
        h = hvp(model, loss_fn, ex[y], u1, bn_mode=bn_mode, batch=batch)
        return total, {n: jacobian[n] * h[n] for n in params}

    (total_ab, curv_ab), (total_ba, curv_ba) = order("A", "B"), order("B", "A")
    return AdamSwapExpansion({n: -lr * (total_ab[n] - total_ba[n]) for n in params},
                             {n: lr ** 2 * (curv_ab[n] - curv_ba[n]) for n in params})


def adam_swap_difference(model: nn.Module, loss_fn: Callable, example_a, example_b, state: AdamState, *,
                         bn_mode: str = "eval", batch: bool = False) -> Params:
    """θ_AB − θ_BA from real torch.optim.Adam steps (lr = state.lr): the ground truth of the expansion.

    Two steps on a copy of the model in the fields' mode (bracket_mode: eval, or BatchNorm with each
    (mini)batch's own statistics and no running-statistics update), loss.backward() and optimizer.step(),
    in each order. Use float64: the two orders differ in the last digits of θ.
    """
    params = parameters_of(model)
    pair = check_pair(example_a, example_b, params, batch=batch)
    state.check(params)
    after = []
    for first, second in (pair, pair[::-1]):
        net = copy.deepcopy(model)
        adam = state.optimizer(net)
        with bracket_mode(net, bn_mode), torch.enable_grad():
            for inputs, targets in (first, second):
                adam.zero_grad(set_to_none=True)
                loss_fn(net(inputs), targets).backward()
                adam.step()
        after.append(parameters_of(net))
    return {n: after[0][n] - after[1][n] for n in params}


def adam_bracket(model: nn.Module, loss_fn: Callable, example_a, example_b, state: AdamState, *,
                 bn_mode: str = "eval", batch: bool = False) -> Params:
    """Adam's bracket 𝔅(A, B) = P·(H_B w_A − H_A w_B), w_X = P·((1−β1)·g_X + β1·m₀), P = 1/(√v̂₀ + ε).

    The bilinear curvature part of the order effect of two Adam steps from `state` (module docstring),
    the analogue of lie_bracket: right after the two steps it contributes lr²·κ·𝔅 (κ = state.scales()
    ["immediate"]), once momentum has drained lr²·γc₁·𝔅 (→ lr²·𝔅 for large t). Antisymmetric, bilinear
    in minibatches, [v_A, v_B] when P = 1 and β1 = 0. Cost: 2 gradients, 2 Hessian-vector products.
    """
    params = parameters_of(model)
    ex = dict(zip("AB", check_pair(example_a, example_b, params, batch=batch)))
    state.check(params)
    beta1 = state.betas[0]
    p = state.preconditioner()
    w = {}
    for x in "AB":
        g = gradient(model, loss_fn, ex[x], bn_mode=bn_mode, batch=batch)
        w[x] = {n: p[n] * ((1 - beta1) * g[n] + beta1 * state.m[n]) for n in params}
    h_b = hvp(model, loss_fn, ex["B"], w["A"], bn_mode=bn_mode, batch=batch)
    h_a = hvp(model, loss_fn, ex["A"], w["B"], bn_mode=bn_mode, batch=batch)
    return {n: p[n] * (h_b[n] - h_a[n]) for n in params}


# ----------------------------------------------------------------------------- all pairs at once


def _tangents(gradients: Params, state: AdamState, p: Params) -> Params:
    """w_i = P·((1−β1)·g_i + β1·m₀) for stacked gradients (leading dimension N)."""
    beta1 = state.betas[0]
    return {n: p[n] * ((1 - beta1) * t + beta1 * state.m[n]) for n, t in gradients.items()}


def _adam_brackets_by_rows(loss_at, params, inputs, targets, pairs, state, p):
    """Gradients, then (pair, 𝔅): one double-backward graph per example, as brackets.brackets_by_rows."""
    n = inputs.shape[0]
    last_pair = {e: k for k, pair in enumerate(pairs) for e in pair}
    leaves = {k: t.clone().requires_grad_(True) for k, t in params.items()}
    names, tensors = list(leaves), list(leaves.values())
    with torch.enable_grad():
        graphs = [torch.autograd.grad(loss_at(leaves, inputs[j:j + 1], targets[j:j + 1]), tensors,
                                      create_graph=True, materialize_grads=True) for j in range(n)]
        gradients = [dict(zip(names, (g.detach() for g in graph))) for graph in graphs]
        graphs = [graph if j in last_pair else None for j, graph in enumerate(graphs)]
        yield gradients
        tangents = [_tangents(g, state, p) for g in gradients]

        def product(j, i):  # H_j w_i
            return torch.autograd.grad(graphs[j], tensors, grad_outputs=[tangents[i][k] for k in names],
                                       retain_graph=True, allow_unused=True, materialize_grads=True)
        for k, (i, j) in enumerate(pairs):
            yield (i, j), {name: p[name] * (a - b) for name, a, b in zip(names, product(j, i), product(i, j))}
            for e in (i, j):
                if last_pair[e] == k:
                    graphs[e] = None


def adam_bracket_matrix(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor,
                        state: AdamState, *, reduce: Callable | None = None, reduce_gradient: Callable | None = None,
                        bn_mode: str = "eval", method: str = "auto", pairs_per_call: int | None = None,
                        pairs: list | None = None) -> BracketMatrix:
    """Adam's bracket 𝔅(i, j) for all pairs among the examples (inputs[i:i+1], targets[i:i+1]).

    Exactly `bracket_matrix`'s work with the tangents w_i = P·((1−β1)·g_i + β1·m₀) in place of g_i:
    N gradients, N(N−1) Hessian-vector products H_j w_i, and elementwise products with P. The momentum
    term needs no products of its own (it rides in w_i). Arguments, methods, chunking, memory and the
    returned BracketMatrix (brackets[(i, j)] = reduce(𝔅(i, j)), gradients[i] = reduce_gradient(∇L_i))
    are those of `bracket_matrix`.
    """
    params = parameters_of(model)
    state.check(params)
    n, pairs, pairs_per_call, method = matrix_request("adam_bracket_matrix", params, inputs, targets, pairs,
                                                      pairs_per_call, method)
    p = state.preconditioner()
    loss_at = example_loss(model, loss_fn)
    if method == "vmap":
        stream = brackets_vmapped(loss_at, params, inputs, targets, bn_mode, pairs, pairs_per_call,
                                   tangents_of=lambda g: _tangents(g, state, p), scale=p)
    else:
        stream = _adam_brackets_by_rows(loss_at, params, inputs, targets, pairs, state, p)
    return collect_matrix(model, bn_mode, n, stream, reduce, reduce_gradient)
