"""Real swaps of two Adam steps against their expansion (analysis.swap_orders) and what persists of them
(analysis.persistence), on small smooth float64 networks where the orders in lr are exact, and the whole
path on a trained MXResNet and its average-pool twin."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lie_helpers.analysis import order_effects as O
from lie_helpers.analysis import persistence as PE
from lie_helpers.analysis import swap_orders as SO
from lie_helpers.engine.adam import AdamState, adam_bracket
from lie_helpers.engine.brackets import bracket_mode, field_norm, gradient
from lie_helpers.engine.numerics import loglog_fit
from lie_helpers.training import train as T
from lie_helpers.training.config import get_profile
from lie_helpers.training.mxresnet import with_stem_pool
from test_adam_bracket import conv_net
from test_train import random_data

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")]

DTYPE = torch.float64
BETAS = (0.8, 0.999)


def loss_fn(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)


SHAPES = {"conv": (conv_net, (3, 6, 6)), "mlp": (mlp, (5,))}


def data(kind, n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *SHAPES[kind][1], generator=g, dtype=DTYPE),
            (torch.rand(n, 3, generator=g) > 0.5).to(DTYPE))


def warmed(kind, steps=5, lr=1e-2, bn_mode="train"):
    """(model, AdamState) after `steps` real Adam steps on random minibatches of 4."""
    model = SHAPES[kind][0]()
    inputs, targets = data(kind, 64, seed=7)
    adam = torch.optim.Adam(model.parameters(), lr=lr, betas=BETAS)
    g = torch.Generator().manual_seed(3)
    with bracket_mode(model, bn_mode):
        for _ in range(steps):
            i = torch.randint(0, 64, (4,), generator=g)
            adam.zero_grad()
            loss_fn(model(inputs[i]), targets[i]).backward()
            adam.step()
    return model, AdamState.from_optimizer(model, adam)


def minibatches(kind, count, size=4, seed=2):
    x, y = data(kind, count * size, seed)
    return [(x[k * size:(k + 1) * size], y[k * size:(k + 1) * size]) for k in range(count)]


# ----------------------------------------------------------------------------- the residual orders

def test_residual_orders_in_parameters_and_in_logits_with_the_second_order_term():
    """On a smooth float64 net (BatchNorm in train mode, as training): in parameters 1, 1, 2, 3; in logits the
    expansion needs ½f''(Σ₁, F): with it the residual has order 3, with J·(F + S) alone order 2."""
    model, state = warmed("conv")
    a, b = minibatches("conv", 2)
    fixed = data("conv", 6, seed=9)[0]
    result = SO.measure_swap_orders(model, state, loss_fn, a, b, fixed, np.logspace(-2, -4, 5))
    assert result.lrs[0] == pytest.approx(1e-2)
    params, logits = result.orders("params"), result.orders("logits")
    for name, expected in SO.PARAM_RESIDUALS.items():
        assert params[name] == pytest.approx(expected, abs=0.2), (name, params)
    for name, expected in SO.LOGIT_RESIDUALS.items():
        assert logits[name] == pytest.approx(expected, abs=0.2), (name, logits)
    # the missing term is as large as what J·S adds, not a rounding matter
    assert result.logits["second"][-1] < 0.1 * result.logits["linear"][-1]
    assert 0 < result.at_training_lr["params_sgd_ratio"] < 1
    assert -1 <= result.at_training_lr["logits_sgd_cosine"] <= 1


def test_order_effects_adam_aware_prediction_already_holds_the_second_order_term():
    """order_effects.measure_swap takes the frozen-gradient steps' own logit change (not J·F), which contains
    ½f''(Σ₁, F): its Adam-aware residual is third order on a smooth net too (measured 3.01)."""
    model, state = warmed("conv")
    a, b = minibatches("conv", 2)
    fixed = data("conv", 6, seed=9)[0]
    lrs = np.logspace(-2, -4, 4)
    left = []
    for lr in lrs:
        swap = O.measure_swap(model, state.with_lr(lr).optimizer(model), loss_fn, (a, b), fixed, lr)
        left.append(float((swap.real - swap.predictions["adam_aware"]).pow(2).mean().sqrt()))
    assert loglog_fit(lrs, left).slope == pytest.approx(3, abs=0.15)


def test_the_second_derivative_is_a_second_difference():
    model = conv_net()
    x = data("conv", 5, seed=4)[0]
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    a, b = ({n: torch.randn(p.shape, generator=g, dtype=DTYPE) for n, p in params.items()} for _ in range(2))
    h = 1e-4

    def at(s, t):
        return SO.logits_at(model, x, {n: s * a[n] + t * b[n] for n in a})
    finite = (at(h, h) - at(h, -h) - at(-h, h) + at(-h, -h)) / (4 * h * h)
    exact = SO.second_derivative(model, x, a, b)
    assert torch.allclose(exact, finite, rtol=1e-5, atol=1e-6 * float(exact.abs().max()))
    assert torch.allclose(exact, SO.second_derivative(model, x, b, a), rtol=1e-10, atol=1e-12)


def test_adam_run_continues_torch_adam_and_changes_nothing():
    model, state = warmed("mlp", bn_mode="eval")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = minibatches("mlp", 3)
    out = SO.adam_run(model, state, loss_fn, batches + [None], lr=1e-2, record=[0, 3, 4])
    net = copy.deepcopy(model)
    adam = state.with_lr(1e-2).optimizer(net)
    for x, y in batches:
        adam.zero_grad()
        loss_fn(net(x), y).backward()
        adam.step()
    assert all(torch.equal(out[0][n], torch.zeros_like(p)) for n, p in before.items())
    assert all(torch.allclose(out[3][n] + before[n], p, rtol=0, atol=1e-15) for n, p in net.named_parameters())
    assert field_norm({n: out[4][n] - out[3][n] for n in out[3]}) > 0       # a zero gradient still moves θ (momentum)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


# ----------------------------------------------------------------------------- what persists

def late(state, beta2=BETAS[1]):
    """The same m̂, v̂ late in training (t = 10⁵: every bias correction is 1), with β2: the second-moment
    remainder of Adam's bracket is then O(1 − β2) (relative to the momentum the two orders share)."""
    d0, c0 = 1 - BETAS[1] ** state.step, 1 / (1 - BETAS[0] ** state.step)
    return replace(state, step=10 ** 5, m={n: c0 * t for n, t in state.m.items()},
                   v={n: t / d0 for n, t in state.v.items()}, betas=(BETAS[0], beta2))


@pytest.mark.parametrize("beta2, cosine, ratio", [(0.999, 0.998, 0.05), (1 - 1e-5, 0.99999, 3e-3)])
def test_persistence_reproduces_the_drained_limit_of_adam_s_bracket(beta2, cosine, ratio):
    """Late in training, what persists of a swap once momentum has drained is second order and is lr²·γc₁·𝔅,
    up to the second-moment remainder, which shrinks with 1 − β2 (measured: cosine 0.9988 and ratio 0.963 at
    β2 = 0.999, 0.999999 and 1.0009 at 1 − 10⁻⁵; lr 10⁻³)."""
    model, state = warmed("mlp", bn_mode="eval")
    a, b = minibatches("mlp", 2)
    result = PE.measure_persistence(model, late(state, beta2).with_lr(1e-3), loss_fn, a, b)
    d = result.drained
    assert d["adam_cosine"] > cosine and d["adam_ratio"] == pytest.approx(1, abs=ratio)
    assert d["order"] == pytest.approx(2, abs=0.01)
    assert d["sgd_cosine"] < 0.9                      # not the SGD bracket
    assert result.zero[0] == 1 and result.zero[-1] == pytest.approx(d["survives"])
    assert len(result.later) == 0
    if beta2 > 0.9999:                                # c₁ = γ = 1: only v's order dependence is first order
        assert d["first_share"] < 0.02


def test_persistence_with_a_fixed_preconditioner_is_the_formula_exactly():
    """With ε ≫ √v̂ (P = 1/ε, no second-moment terms) at t = 5: the first-order part that persists is the bias
    correction's share lr(1−β1)(c₁ − γ)·P(g_B − g_A), and the rest is lr²·γc₁·𝔅 to O(lr/ε)."""
    model, state = warmed("mlp", bn_mode="eval")
    a, b = minibatches("mlp", 2)
    eps = 1e8
    state = replace(state, eps=eps).with_lr(1e-3 * eps)            # steps of size ~ lr/ε = 1e-3
    result = PE.measure_persistence(model, state, loss_fn, a, b)
    d = result.drained
    assert d["adam_cosine"] > 0.9999 and d["adam_ratio"] == pytest.approx(1, abs=2e-3)
    assert d["order"] == pytest.approx(2, abs=0.01)
    c1, gamma = state.corrections(1)[0], state.scales()["drained"] / state.corrections(1)[0]
    g_a, g_b = (gradient(model, loss_fn, x, bn_mode="train", batch=True) for x in (a, b))
    first = {n: state.lr * (1 - BETAS[0]) * (c1 - gamma) / eps * (g_b[n] - g_a[n]) for n in g_a}
    assert d["first_norm"] == pytest.approx(field_norm(first), rel=1e-8)
    assert d["first_share"] == pytest.approx(d["first_norm"] / (d["survives"] * d["immediate_norm"]), rel=1e-12)
    bracket = adam_bracket(model, loss_fn, a, b, state, bn_mode="train", batch=True)
    assert d["prediction_norm"] == pytest.approx(state.lr ** 2 * state.scales()["drained"] * field_norm(bracket))


def test_persistence_with_later_minibatches():
    model, state = warmed("mlp", bn_mode="eval")
    a, b, *later = minibatches("mlp", 7)
    result = PE.measure_persistence(model, late(state).with_lr(1e-3), loss_fn, a, b, later, later_ks=(0, 1, 5))
    assert result.later_ks.tolist() == [0, 1, 5] and result.later[0] == 1
    assert result.later_vs_zero_cosine[0] == pytest.approx(1) and result.later_vs_zero_cosine[1] < 1
    assert {"later_survives", "later_adam_cosine", "later_zero_cosine"} <= set(result.drained)
    with pytest.raises(ValueError, match="later minibatches"):
        PE.measure_persistence(model, state, loss_fn, a, b, later[:2], later_ks=(0, 5))


# ----------------------------------------------------------------------------- MXResNet

PROFILE = get_profile("ci", image_size=16, width=0.125, steps=8, batch_size=8, checkpoint_every=2,
                      eval_images=8, swap_checkpoints=1)
TRAIN, VALID = random_data(64, 0), random_data(8, 1)


@pytest.fixture(scope="module")
def run(one_thread, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("adam-swap-run")
    T.train(PROFILE, run_dir, TRAIN, VALID, progress=False, device="cpu")
    return run_dir


def test_the_average_pool_twin_is_the_same_network_without_kinks(run):
    model = T.load_checkpoint(run, 4, PROFILE)
    twin = with_stem_pool(model, "avg")
    assert [type(m).__name__ for m in model][:4] == ["Sequential"] * 3 + ["MaxPool2d"]
    assert type(twin[3]).__name__ == "AvgPool2d" and type(model[3]).__name__ == "MaxPool2d"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    built = T.mxresnet(PROFILE.depth, 40, PROFILE.width, stem_pool="avg")
    assert list(built.state_dict()) == list(twin.state_dict()) and type(built[3]).__name__ == "AvgPool2d"
    with pytest.raises(ValueError, match="stem_pool"):
        T.mxresnet(18, 40, 0.125, stem_pool="min")


def test_orders_and_persistence_on_mxresnet(run):
    fixed = T.prepare_inputs(VALID[0][:4])
    ambiguous = np.arange(64) % 7 == 0
    orders = SO.measure_run_orders(PROFILE, run, TRAIN, fixed, ambiguous, pairs=1, lr_factors=(1, 1 / 4, 1 / 16),
                                   progress=False)
    assert [(r.step, r.stem) for r in orders] == [(4, "max"), (4, "avg")]
    assert all(np.isfinite(v).all() for r in orders for space in (r.params, r.logits) for v in space.values())
    table = SO.summarise_orders(orders)
    assert set(table) == {"max", "avg"} and table["avg"]["swaps"] == 1
    text = SO.describe_orders(table)
    assert "nan" not in text and "average-pool twin" in text
    persisted = PE.measure_run_persistence(PROFILE, run, TRAIN, ambiguous, progress=False, later_ks=(0, 1, 3),
                                           zero_ks=(0, 2, 20))
    assert [(r.stem, len(r.later)) for r in persisted] == [("max", 3), ("max", 3), ("avg", 0), ("avg", 0)]
    summary = PE.summarise_persistence(persisted)
    assert summary["max"]["later_ks"] == [0, 1, 3]
    assert "nan" not in PE.describe_persistence(summary)
