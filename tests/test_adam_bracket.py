"""Adam's bracket against brute force: real swapped torch.optim.Adam steps, finite differences of the
fields, the SGD bracket it generalises, and its own identities (antisymmetry, bilinearity, batching).

Small float64 models (a tanh MLP; a conv net with BatchNorm and Mish), Adam states warmed up by real
steps (t ≥ 4, so m and v are non-zero and the bias corrections are not trivial).
"""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lie_helpers.engine import adam as AB
from lie_helpers.engine.brackets import (bracket_matrix, bracket_mode, field_norm, gradient, lie_bracket, parameters_of,
                                  relative_error)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")]

DTYPE = torch.float64
BETAS = (0.8, 0.999)          # the write-up's


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)


def conv_net():
    """Conv, BatchNorm, Mish twice, pooled to a linear head; BatchNorm statistics from one random batch."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Mish(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.Mish(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).to(DTYPE)
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 6, 6, dtype=DTYPE))
    return model.eval()


MODELS = {"mlp": (mlp, (5,)), "conv": (conv_net, (3, 6, 6))}


def data(kind, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, *MODELS[kind][1], generator=g, dtype=DTYPE)
    return inputs, (torch.rand(n, 3, generator=g) > 0.5).to(DTYPE)


def loss_fn(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets)   # mean: a minibatch's loss is its examples' mean


def warmed(kind, steps=5, lr=1e-2, betas=BETAS, eps=1e-8, batch_size=4):
    """(model, its AdamState) after `steps` real Adam steps on random minibatches, in the fields' (eval) mode."""
    model = MODELS[kind][0]()
    inputs, targets = data(kind, 64, seed=7)
    adam = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)
    g = torch.Generator().manual_seed(3)
    with bracket_mode(model, "eval"):
        for _ in range(steps):
            i = torch.randint(0, 64, (batch_size,), generator=g)
            adam.zero_grad()
            loss_fn(model(inputs[i]), targets[i]).backward()
            adam.step()
    return model, AB.AdamState.from_optimizer(model, adam)


def pair(kind, size=1, seed=1):
    x, y = data(kind, 2 * size, seed)
    return (x[:size], y[:size]), (x[size:], y[size:])


def add(*fields):
    return {n: sum(f[n] for f in fields) for n in fields[0]}


def scaled(a, field):
    return {n: a * t for n, t in field.items()}


def cosine(a, b):
    return sum(float((a[n] * b[n]).sum()) for n in a) / (field_norm(a) * field_norm(b))


# ----------------------------------------------------------------------------- the state


def test_state_comes_from_torch_adam_and_goes_back_into_it():
    model, state = warmed("mlp", steps=5)
    assert state.step == 5 and state.betas == BETAS and state.lr == 1e-2 and state.eps == 1e-8
    assert all(field_norm({n: state.m[n]}) > 0 and (state.v[n] > 0).all() for n in state.m)
    # Two optimizers holding the same state take the same next step.
    batch = data("mlp", 4, seed=11)
    steps = []
    for _ in range(2):
        net = copy.deepcopy(model)
        adam = state.optimizer(net)
        adam.zero_grad()
        loss_fn(net(batch[0]), batch[1]).backward()
        adam.step()
        steps.append(AB.AdamState.from_optimizer(net, adam))
    again = warmed("mlp", steps=5)[1]
    for n in state.m:
        assert torch.equal(state.m[n], again.m[n]) and torch.equal(state.v[n], again.v[n])
        assert steps[0].step == 6
        torch.testing.assert_close(steps[0].m[n], steps[1].m[n], rtol=1e-15, atol=0)
    # and the moments of that step are Adam's update rule
    g = gradient(model, loss_fn, batch, batch=True)
    for n in state.m:
        torch.testing.assert_close(steps[0].m[n], 0.8 * state.m[n] + 0.2 * g[n], rtol=1e-13, atol=1e-16)
        torch.testing.assert_close(steps[0].v[n], 0.999 * state.v[n] + 0.001 * g[n] ** 2, rtol=1e-13, atol=1e-20)


def test_state_refuses_what_the_expansion_does_not_cover():
    model = mlp()
    for kwargs, says in (({"weight_decay": 0.1}, "weight_decay"), ({"amsgrad": True}, "amsgrad")):
        with pytest.raises(ValueError, match=says):
            AB.AdamState.from_optimizer(model, torch.optim.Adam(model.parameters(), **kwargs))
    with pytest.raises(TypeError, match="torch.optim.Adam"):
        AB.AdamState.from_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fresh = AB.AdamState.from_optimizer(model, torch.optim.Adam(model.parameters()))
    assert fresh.step == 0 and all(not t.any() for t in fresh.v.values())
    with pytest.raises(ValueError, match="t ≥ 1"):
        AB.adam_bracket(model, loss_fn, *pair("mlp"), fresh)
    with pytest.raises(ValueError, match="keys"):
        AB.adam_bracket(model, loss_fn, *pair("mlp"), replace(fresh, step=1, m={}))


def test_scales():
    _, state = warmed("mlp", steps=5)
    assert replace(state, betas=(0.0, 0.999)).scales() == {"immediate": 1.0, "drained": 1.0}
    late = replace(state, step=10_000).scales()
    assert late["immediate"] == pytest.approx(0.2, rel=1e-12) and late["drained"] == pytest.approx(1, rel=1e-12)
    early = state.scales()     # bias corrections > 1, decreasing in t: γ lies between c at t+2 and its limit 1
    c1, c2 = state.corrections(1)[0], state.corrections(2)[0]
    assert early["immediate"] == pytest.approx(0.2 * c1 * c2)
    assert 1 < early["drained"] / c1 < c2


# ----------------------------------------------------------------------------- exact identities


@pytest.mark.parametrize("kind", MODELS)
def test_reduces_to_the_sgd_bracket_when_p_is_one_and_beta1_is_zero(kind):
    model, state = warmed(kind)
    d0 = 1 - state.betas[1] ** state.step
    plain = replace(state, betas=(0.0, state.betas[1]),
                    v={n: (1 - state.eps) ** 2 * d0 * torch.ones_like(v) for n, v in state.v.items()})
    assert all(torch.allclose(p, torch.ones_like(p), rtol=0, atol=1e-15) for p in plain.preconditioner().values())
    a, b = pair(kind)
    assert relative_error(AB.adam_bracket(model, loss_fn, a, b, plain), lie_bracket(model, loss_fn, a, b)) < 1e-12
    x, y = data(kind, 3)
    adam, sgd = AB.adam_bracket_matrix(model, loss_fn, x, y, plain), bracket_matrix(model, loss_fn, x, y)
    for p in sgd.pairs:
        assert relative_error(adam.brackets[p], sgd.brackets[p]) < 1e-12


@pytest.mark.parametrize("kind", MODELS)
def test_antisymmetric(kind):
    model, state = warmed(kind)
    a, b = pair(kind)
    ab, ba = AB.adam_bracket(model, loss_fn, a, b, state), AB.adam_bracket(model, loss_fn, b, a, state)
    assert field_norm(add(ab, ba)) < 1e-13 * field_norm(ab)
    e_ab, e_ba = (AB.adam_swap_expansion(model, loss_fn, *p, state) for p in ((a, b), (b, a)))
    for part in ("first", "second"):
        one, other = getattr(e_ab, part), getattr(e_ba, part)
        assert field_norm(add(one, other)) < 1e-13 * field_norm(one)


@pytest.mark.parametrize("kind", MODELS)
def test_bilinear_in_minibatches(kind):
    """The bracket of two averaged minibatches is the average of the pairwise example brackets
    (the momentum term too: it is a difference of a term linear in B and one linear in A)."""
    model, state = warmed(kind)
    x, y = data(kind, 5, seed=4)
    a, b = (x[:2], y[:2]), (x[2:], y[2:])
    batched = AB.adam_bracket(model, loss_fn, a, b, state, batch=True)
    pairwise = [AB.adam_bracket(model, loss_fn, (x[i:i + 1], y[i:i + 1]), (x[j:j + 1], y[j:j + 1]), state)
                for i in range(2) for j in range(2, 5)]
    assert relative_error(batched, scaled(1 / len(pairwise), add(*pairwise))) < 1e-12
    assert field_norm(state.m) > 0 and state.betas[0] > 0   # the momentum term was there


@pytest.mark.parametrize("kind", MODELS)
def test_against_finite_differences_of_the_fields(kind):
    """𝔅 = (W_A·∇)Ṽ_B − (W_B·∇)Ṽ_A with Ṽ_X = −P·g_X and W_X = −P·((1−β1)·g_X + β1·m₀), each directional
    derivative by central differences of the gradient along W (no Hessian-vector product involved)."""
    model, state = warmed(kind)
    a, b = pair(kind)
    beta1, p = state.betas[0], state.preconditioner()
    params = parameters_of(model)

    def preconditioned_field(example, at):
        net = copy.deepcopy(model)
        with torch.no_grad():
            for n, t in net.named_parameters():
                t.copy_(at[n])
        return {n: -p[n] * g for n, g in gradient(net, loss_fn, example).items()}

    def derivative(field_of, direction, h=1e-5):
        plus = preconditioned_field(field_of, {n: params[n] + h * direction[n] for n in params})
        minus = preconditioned_field(field_of, {n: params[n] - h * direction[n] for n in params})
        return {n: (plus[n] - minus[n]) / (2 * h) for n in params}

    w = {}
    for name, example in (("A", a), ("B", b)):
        g = gradient(model, loss_fn, example)
        w[name] = {n: -p[n] * ((1 - beta1) * g[n] + beta1 * state.m[n]) for n in params}
    finite = add(derivative(b, w["A"]), scaled(-1, derivative(a, w["B"])))
    assert relative_error(AB.adam_bracket(model, loss_fn, a, b, state), finite) < 1e-7


@pytest.mark.parametrize("method", ["vmap", "rows"])
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_bracket_matrix_equals_adam_bracket_pair_by_pair(bn_mode, method):
    model, state = warmed("conv")
    x, y = data("conv", 4, seed=5)
    matrix = AB.adam_bracket_matrix(model, loss_fn, x, y, state, bn_mode=bn_mode, method=method, pairs_per_call=4)
    assert sorted(matrix.brackets) == matrix.pairs
    for i, j in matrix.pairs:
        single = AB.adam_bracket(model, loss_fn, (x[i:i + 1], y[i:i + 1]), (x[j:j + 1], y[j:j + 1]), state,
                                 bn_mode=bn_mode)
        assert relative_error(matrix.brackets[(i, j)], single) < 1e-12
    for i in range(4):
        assert relative_error(matrix.gradients[i], gradient(model, loss_fn, (x[i:i + 1], y[i:i + 1]),
                                                            bn_mode=bn_mode)) < 1e-12


def test_bracket_matrix_reduces_and_takes_a_share_of_pairs():
    model, state = warmed("mlp")
    x, y = data("mlp", 4, seed=5)
    full = AB.adam_bracket_matrix(model, loss_fn, x, y, state)
    part = AB.adam_bracket_matrix(model, loss_fn, x, y, state, pairs=[(1, 3)], reduce=field_norm,
                                  reduce_gradient=field_norm)
    assert list(part.brackets) == [(1, 3)]
    assert part.brackets[(1, 3)] == pytest.approx(field_norm(full.brackets[(1, 3)]), rel=1e-12)
    assert part.gradients[2] == pytest.approx(field_norm(full.gradients[2]), rel=1e-12)


# ----------------------------------------------------------------------------- against real Adam steps


def slope(lrs, sizes):
    return float(np.polyfit(np.log(lrs), np.log(sizes), 1)[0])


SWAPS = {   # kind, minibatch size (1: single examples), bn_mode
    "mlp examples": ("mlp", 1, "eval"),
    "mlp minibatches": ("mlp", 3, "eval"),
    "conv eval": ("conv", 2, "eval"),
    "conv train-mode BatchNorm": ("conv", 3, "train"),
}


@pytest.mark.parametrize("case", SWAPS)
def test_expansion_against_real_swapped_adam_steps_to_third_order(case):
    """‖real‖ has order 1 in lr, ‖real − first‖ order 2, ‖real − first − second‖ order 3."""
    kind, size, bn_mode = SWAPS[case]
    model, state = warmed(kind)
    a, b = pair(kind, size, seed=2)
    lrs = np.logspace(-2, -4, 6)
    sizes = []
    for lr in lrs:
        at = state.with_lr(lr)
        real = AB.adam_swap_difference(model, loss_fn, a, b, at, bn_mode=bn_mode, batch=True)
        first, second = AB.adam_swap_expansion(model, loss_fn, a, b, at, bn_mode=bn_mode, batch=True)
        sizes.append([field_norm(real), field_norm(add(real, scaled(-1, first))),
                      field_norm(add(real, scaled(-1, first), scaled(-1, second)))])
    sizes = np.array(sizes)
    for order in (1, 2, 3):
        assert slope(lrs, sizes[:, order - 1]) == pytest.approx(order, abs=0.25), (order, sizes)


def test_first_is_the_swap_of_steps_with_frozen_gradients():
    """F is exact for gradients frozen at θ₀, at any lr: two real Adam steps fed those gradients."""
    model, state = warmed("mlp")
    a, b = pair("mlp", 3, seed=2)
    grads = {"a": gradient(model, loss_fn, a, batch=True), "b": gradient(model, loss_fn, b, batch=True)}
    at = state.with_lr(0.05)
    after = []
    for order in (("a", "b"), ("b", "a")):
        net = copy.deepcopy(model)
        adam = at.optimizer(net)
        for x in order:
            for n, t in net.named_parameters():
                t.grad = grads[x][n].clone()
            adam.step()
        after.append(parameters_of(net))
    frozen = {n: after[0][n] - after[1][n] for n in after[0]}
    assert relative_error(AB.adam_swap_expansion(model, loss_fn, a, b, at, batch=True).first, frozen) < 1e-12


def test_the_bracket_is_the_bilinear_part_of_the_second_order_term():
    """S/lr² − κ·𝔅 is the second-moment remainder: it vanishes as the new gradients' weight in v̂ does
    (β2 → 1 late in training) and as ε comes to dominate √v̂ (P independent of v)."""
    model, state = warmed("mlp")
    a, b = pair("mlp", 3, seed=2)

    def remainder(s):
        second = AB.adam_swap_expansion(model, loss_fn, a, b, s.with_lr(1.0), batch=True).second
        bracket = AB.adam_bracket(model, loss_fn, a, b, s, batch=True)
        return relative_error(scaled(s.scales()["immediate"], bracket), second)

    # Late in training (t = 10⁷: every bias correction is 1) with the same m̂, v̂, the new gradient's weight
    # in v̂ is 1 − β2.
    d0, c0 = 1 - BETAS[1] ** state.step, 1 / (1 - BETAS[0] ** state.step)
    late_state = replace(state, step=10 ** 7, m=scaled(c0, state.m), v=scaled(1 / d0, state.v))
    late = [remainder(replace(late_state, betas=(0.8, 1 - w))) for w in (1e-4, 1e-6)]
    assert late[1] < 1e-3 and late[0] / late[1] == pytest.approx(100, rel=0.3)
    # at t = 5 (bias corrections > 1), with ε ≫ √v̂
    root_v = max(float((v / d0).sqrt().max()) for v in state.v.values())
    wide = [remainder(replace(state, eps=k * root_v)) for k in (1e2, 1e4)]
    assert wide[1] < 1e-3 and wide[0] / wide[1] == pytest.approx(100, rel=0.3)


def test_what_persists_once_momentum_has_drained():
    """Continue both orders with zero gradients until momentum has paid out. With ε ≫ √v̂ (P = 1/ε, so no
    second-moment terms) the first-order part is the bias correction's share lr(1−β1)(c₁ − γ)P(g_B − g_A),
    and the curvature part is lr²·γc₁·𝔅 (scales()["drained"])."""
    model, state = warmed("mlp")
    a, b = pair("mlp", 3, seed=2)
    eps = 1e8
    state = replace(state, eps=eps)
    lr = 1e-3 * eps                                                   # steps of size ~ lr/ε = 1e-3

    def drained(frozen):
        after = []
        for order in ((a, b), (b, a)):
            net = copy.deepcopy(model)
            adam = state.with_lr(lr).optimizer(net)
            for example in order + (None,) * 200:                     # 0.8²⁰⁰ ≈ 4e-20
                adam.zero_grad(set_to_none=False)
                if example is not None:
                    if frozen:
                        for n, t in net.named_parameters():
                            t.grad = gradient(model, loss_fn, example, batch=True)[n].clone()
                    else:
                        loss_fn(net(example[0]), example[1]).backward()
                adam.step()
            after.append(parameters_of(net))
        return {n: after[0][n] - after[1][n] for n in after[0]}

    scales = state.scales()
    c1 = state.corrections(1)[0]
    gamma = scales["drained"] / c1
    g_a, g_b = gradient(model, loss_fn, a, batch=True), gradient(model, loss_fn, b, batch=True)
    first = {n: lr * 0.2 * (c1 - gamma) / eps * (g_b[n] - g_a[n]) for n in g_a}
    assert c1 - gamma > 0.05
    assert relative_error(drained(frozen=True), first) < 1e-6
    curvature = add(drained(frozen=False), scaled(-1, first))
    bracket = scaled(lr ** 2 * scales["drained"], AB.adam_bracket(model, loss_fn, a, b, state, batch=True))
    assert relative_error(curvature, bracket) < 1e-3                  # third order: O(lr/ε) relative
    assert cosine(curvature, bracket) > 0.9999


def test_helpers_change_neither_model_nor_state():
    model, state = warmed("conv")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {n: (state.m[n].clone(), state.v[n].clone()) for n in state.m}
    a, b = pair("conv", 2)
    for bn_mode in ("eval", "train"):
        AB.adam_swap_difference(model, loss_fn, a, b, state, bn_mode=bn_mode, batch=True)
        AB.adam_swap_expansion(model, loss_fn, a, b, state, bn_mode=bn_mode, batch=True)
        AB.adam_bracket(model, loss_fn, a, b, state, bn_mode=bn_mode, batch=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training
    assert all(torch.equal(state.m[n], m) and torch.equal(state.v[n], v) for n, (m, v) in moments.items())
