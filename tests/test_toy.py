"""The theory of notebook 00, checked on toy problems through the bracket engine (float64)."""
import itertools

import numpy as np
import pytest
import torch

from lie_helpers.engine import toy
from lie_helpers.engine.brackets import gradient, lie_bracket


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


def test_asymptotic_slope_on_a_max_pool_network():
    """A piecewise-smooth field (max-pool): the fit over the smallest learning rates above round-off is first order."""
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


# ----------------------------------------------------------------------------- the lesson in the plane


def test_log_cosh_error_is_log_cosh_and_stays_finite():
    r = torch.tensor([[-3.0, 0.0, 0.5, 2.0]], dtype=torch.float64)
    assert torch.allclose(toy.log_cosh_error(r, torch.zeros_like(r)), torch.log(torch.cosh(r)).sum(),
                          rtol=1e-14, atol=0)
    far = torch.tensor([[1e4]], dtype=torch.float64)   # log(cosh) overflows here
    assert torch.isclose(toy.log_cosh_error(far, torch.zeros_like(far)), far[0, 0] - np.log(2), rtol=1e-14)


def test_neuron_pair_is_a_neuron_with_the_log_cosh_loss():
    problem = toy.neuron_pair(inputs=(1.0, 0.3), targets=(1.0, -0.5), theta=(-1.0, 1.0))
    (x_in, x_t), _ = problem.examples
    w, b = -1.0, 1.0
    assert float(problem.loss_fn(problem.model(x_in), x_t)) == pytest.approx(np.log(np.cosh(w * 1.0 + b - 1.0)))
    with pytest.raises(ValueError, match="two inputs"):
        toy.neuron_pair(inputs=(1.0, 2.0, 3.0))


@pytest.mark.parametrize("inputs, targets", [((1.0, 0.3), (1.0, -0.5)), ((-2.0, 0.8), (0.3, 0.8)),
                                             ((1.5, 1.5), (1.0, -1.0))])
def test_neuron_bracket_matches_the_engine(inputs, targets):
    for theta in [(-1.0, 1.0), (0.4, -0.7), (2.0, 0.1)]:
        problem = toy.neuron_pair(inputs, targets, theta)
        engine = lie_bracket(problem.model, problem.loss_fn, *problem.examples)["theta"]
        closed = toy.neuron_bracket(torch.tensor(theta, dtype=torch.float64), inputs, targets)
        assert engine.norm() > 1e-3   # a real bracket, not a trivial zero
        assert torch.allclose(engine, closed, rtol=1e-12, atol=1e-15)


def test_neuron_bracket_on_a_grid_and_the_commuting_control():
    grid = torch.stack(torch.meshgrid(torch.linspace(-2, 2, 5, dtype=torch.float64),
                                      torch.linspace(-2, 2, 5, dtype=torch.float64), indexing="xy"), -1)
    at_points = torch.stack([toy.neuron_bracket(p, (1.0, 0.3), (1.0, -0.5)) for p in grid.reshape(-1, 2)])
    assert torch.allclose(toy.neuron_bracket(grid, (1.0, 0.3), (1.0, -0.5)).reshape(-1, 2), at_points)
    # u_x·u_y = −1: orthogonal directions, the fields commute, and SGD steps commute exactly.
    control = toy.neuron_pair(inputs=(1.0, -1.0), targets=(1.0, -0.5))
    assert toy.neuron_bracket(grid, (1.0, -1.0), (1.0, -0.5)).abs().max() == 0
    for lr in (0.1, 1.0, 3.0):
        gap = toy.swap_difference(control.model, control.loss_fn, *control.examples, lr)["theta"]
        assert gap.abs().max() < 1e-15


def test_neuron_pair_swap_gap_is_lr2_bracket_to_first_order():
    problem = toy.neuron_pair()
    lrs = np.logspace(-4, -1, 7)
    check = toy.swap_check(problem.model, problem.loss_fn, *problem.examples, lrs)
    assert 0.9 < check.slope < 1.1 and check.rel_err[-1] > 1e-3   # a real O(lr³) remainder, not zero
