"""The theory of notebook 00, checked on toy problems through the bracket engine (float64)."""
import itertools

import numpy as np
import pytest
import torch

from lie_helpers import toy
from lie_helpers.brackets import gradient, lie_bracket


@pytest.fixture(scope="module")
def quad():
    return toy.random_quadratics(n=4, d=5, r=5, seed=0)


@pytest.fixture(scope="module")
def mlp():
    return toy.tanh_mlp(n=8, seed=0)


def test_quadratic_examples_are_the_quadratics(quad):
    theta = quad.model.theta.detach()
    for i, (inputs, targets) in enumerate(quad.examples):
        assert inputs.shape[0] == 1 and inputs.dtype == torch.float64
        loss = quad.loss_fn(quad.model(inputs), targets)
        quadratic = 0.5 * (theta - quad.a[i]) @ quad.A[i] @ (theta - quad.a[i])
        assert torch.allclose(loss, quadratic, rtol=1e-12, atol=0)
        g = gradient(quad.model, quad.loss_fn, (inputs, targets))["theta"]
        field = toy.quadratic_field(quad.A[i], quad.a[i], theta)
        assert torch.allclose(-g, field, rtol=1e-12, atol=1e-14)


def test_quadratic_bracket_matches_closed_form(quad):
    theta = quad.model.theta.detach()
    for i, j in itertools.combinations(range(len(quad.examples)), 2):
        engine = lie_bracket(quad.model, quad.loss_fn, quad.examples[i], quad.examples[j])
        closed = toy.quadratic_bracket(theta, quad.A[i], quad.a[i], quad.A[j], quad.a[j])
        assert toy.relative_error(engine, {"theta": closed}) < 1e-12


def test_quadratic_swap_is_exactly_lr2_bracket(quad):
    lrs = np.logspace(-3, 1, 9)
    for x, y in [(0, 1), (2, 3)]:
        check = toy.swap_check(quad.model, quad.loss_fn, quad.examples[x], quad.examples[y], lrs)
        assert check.rel_err.max() < 1e-10, check.rel_err


def test_nonlinear_swap_remainder_is_order_lr(mlp):
    lrs = np.logspace(-5, -1, 9)  # four decades
    check = toy.swap_check(mlp.model, mlp.loss_fn, mlp.examples[0], mlp.examples[1], lrs)
    assert 0.8 < check.slope < 1.2, check.slope
    assert check.rel_err[0] < 1e-3 and check.rel_err[-1] > 1e-3  # a real O(lr) error, not zero


def test_asymptotic_slope_leaves_out_roundoff(mlp):
    """Down to lr 1e-10 float64 round-off swamps the smallest steps; the asymptotic fit skips them."""
    lrs = np.logspace(-10, -2, 9)
    check = toy.swap_check(mlp.model, mlp.loss_fn, mlp.examples[0], mlp.examples[1], lrs)
    assert not check.fitted[0], (check.rel_err, check.roundoff)   # lr 1e-10 is round-off
    assert check.fitted.sum() == 3 and check.first_order, (check.asymptotic_slope, check.rel_err)


def test_asymptotic_slope_survives_a_kink():
    """A max-pool network: large steps cross kinks of the field, small ones do not."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.MaxPool1d(4), torch.nn.Flatten(),
                                torch.nn.Linear(16, 1)).double()
    loss_fn = toy.half_squared_error
    x = (torch.randn(1, 1, 18, dtype=torch.float64), torch.randn(1, 1, dtype=torch.float64))
    y = (torch.randn(1, 1, 18, dtype=torch.float64), torch.randn(1, 1, dtype=torch.float64))
    check = toy.swap_check(model, loss_fn, x, y, np.logspace(-8, 0, 9))
    assert check.first_order, (check.asymptotic_slope, check.rel_err)


def test_a_wrong_bracket_fails_the_first_order_check(mlp, monkeypatch):
    """A bracket 10% off leaves a relative error of 0.1 at every lr: no convergence, and the check says so."""
    wrong = lambda *args, **kw: {n: 1.1 * t for n, t in lie_bracket(*args, **kw).items()}
    monkeypatch.setattr(toy, "lie_bracket", wrong)
    check = toy.swap_check(mlp.model, mlp.loss_fn, mlp.examples[0], mlp.examples[1], np.logspace(-7, -2, 6))
    assert not check.first_order and abs(check.asymptotic_slope) < 0.1


@pytest.mark.parametrize("problem", ["quad", "mlp"])
def test_minibatch_bracket_is_mean_of_pairwise_brackets(problem, request):
    p = request.getfixturevalue(problem)
    half = len(p.examples) // 2
    lrs = np.logspace(-3, 1, 5) if problem == "quad" else np.logspace(-4, -1, 4)
    check = toy.minibatch_check(p.model, p.loss_fn, p.examples[:half], p.examples[half:], lrs)
    assert check.bilinearity_err < 1e-12
    if problem == "quad":  # exact up to round-off, which grows like 1/lr² (θ_xy − θ_yx cancels)
        assert check.swap.rel_err.max() < 1e-10
    else:
        assert 0.8 < check.swap.slope < 1.2


def test_minibatch_loss_is_mean_of_example_losses(mlp):
    batch = toy.minibatch(mlp.examples[:3])
    assert batch[0].shape[:2] == (1, 3)
    packed = mlp.loss_fn(mlp.model(batch[0]), batch[1])
    separate = torch.stack([mlp.loss_fn(mlp.model(x), t) for x, t in mlp.examples[:3]]).mean()
    assert torch.allclose(packed, separate, rtol=1e-14)


def test_flow_field_without_correction_is_minus_full_gradient(mlp):
    batches = [toy.minibatch(mlp.examples[2 * k:2 * k + 2]) for k in range(4)]
    field = toy.modified_flow_field(mlp.model, mlp.loss_fn, batches)(toy.parameters_of(mlp.model))
    full = gradient(mlp.model, mlp.loss_fn, toy.minibatch(mlp.examples))
    assert toy.relative_error({n: -t for n, t in field.items()}, full) < 1e-13


def test_rk4_integrates_linear_flow():
    A = torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=torch.float64)
    theta = {"w": torch.tensor([1.0, -1.0], dtype=torch.float64)}
    out = toy.rk4(lambda th: {"w": -A @ th["w"]}, theta, 0.5, 50)
    assert torch.allclose(out["w"], torch.linalg.matrix_exp(-0.5 * A) @ theta["w"], rtol=1e-8)


def test_smith_order_average_follows_modified_flow(mlp):
    before = {n: p.detach().clone() for n, p in mlp.model.named_parameters()}
    batches = [toy.minibatch(mlp.examples[2 * k:2 * k + 2]) for k in range(4)]
    check = toy.smith_check(mlp.model, mlp.loss_fn, batches, np.logspace(-3.5, -2, 4), rk4_steps=8)
    assert 1.85 < check.slope_flow < 2.15, check.slope_flow
    assert 2.85 < check.slope_modified < 3.15, check.slope_modified
    assert 0.85 < check.slope_order < 1.15, check.slope_order
    assert np.all(check.err_modified < check.err_flow)
    assert check.err_order[0] < 0.01
    for n, p in mlp.model.named_parameters():  # helpers never move the model
        assert torch.equal(p.detach(), before[n])


def test_with_parameters_leaves_model_alone(mlp):
    theta = {n: torch.zeros_like(p) for n, p in mlp.model.named_parameters()}
    moved = toy.with_parameters(mlp.model, theta)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in moved.parameters())
    assert any(p.abs().sum() > 0 for p in mlp.model.parameters())
