"""Conserved quantities and brackets: scale (BatchNorm), rescale (ReLU), translation (softmax), discrete steps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lie_helpers as lh
from lie_helpers.analysis import symmetry as sym
from lie_helpers.engine.brackets import parameters_of
from lie_helpers.training.losses import HAIR_INDEX, get_loss
from lie_helpers.training.mxresnet import mxresnet

torch.set_num_threads(1)
DTYPE = torch.float64


def bce(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets)


def conv_net(seed=0):
    """Two conv–BatchNorm–Mish layers and a linear head, float64, BatchNorm statistics warmed up."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Mish(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.Mish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).to(DTYPE)
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 8, 8, dtype=DTYPE))
    return model.eval()


def images(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=DTYPE), (torch.rand(n, 3, generator=g) > 0.5).to(DTYPE)


def packed_problem(eps, n=6, size=3):
    model = sym.with_batchnorm_eps(sym.PackedBatch(conv_net()), eps)
    return model, sym.packed_loss(bce), sym.packed_minibatches(*images(n), size)


# ----------------------------------------------------------------------------- helpers

def test_cosine():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert sym.cosine(a, a) == pytest.approx(1) and sym.cosine(a, torch.tensor([0.0, 2.0, 0.0])) == 0


def test_packed_minibatch_is_the_batch_with_batch_statistics():
    model, loss_fn, batches = packed_problem(1e-5)
    inputs, targets = images(6)
    assert len(batches) == 2 and batches[1][0].shape == (1, 3, 3, 8, 8)
    torch.testing.assert_close(model(inputs[None])[0], model.model(inputs))
    packed = lh.gradient(model, loss_fn, batches[0], bn_mode="train")
    plain = conv_net()
    plain.train()
    bce(plain(inputs[:3]), targets[:3]).backward()
    for name, p in plain.named_parameters():
        torch.testing.assert_close(packed[f"model.{name}"], p.grad, rtol=1e-12, atol=1e-14)


def test_with_batchnorm_eps_copies():
    model = conv_net()
    tiny = sym.with_batchnorm_eps(model, 1e-14)
    assert model[1].eps == 1e-5 and tiny[1].eps == tiny[4].eps == 1e-14


def test_conv_weights_before_batchnorm_finds_every_conv_of_mxresnet():
    model = mxresnet(18, 40, 0.125)
    names = sym.conv_weights_before_batchnorm(model)
    params = dict(model.named_parameters())
    assert len(names) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 22
    assert all(n in params and params[n].dim() == 4 for n in names)
    assert sym.conv_weights_before_batchnorm(conv_net()) == ["0.weight", "3.weight"]


# ----------------------------------------------------------------------------- scale symmetry

def test_batch_statistics_conserve_the_weight_norm_up_to_eps():
    model, loss_fn, batches = packed_problem(1e-14, n=9)
    names = ["model." + n for n in sym.conv_weights_before_batchnorm(model.model)]
    params = parameters_of(model)
    for example in batches:
        gradient = lh.gradient(model, loss_fn, example, bn_mode="train")
        assert np.abs(sym.scale_residuals(gradient, params, names)).max() < 1e-11
    train = sym.scale_residuals_of_brackets(model, loss_fn, batches, names, "train")
    assert train.shape == (3, 2) and np.abs(train).max() < 1e-11
    bracket = lh.lie_bracket(model, loss_fn, batches[0], batches[2], bn_mode="eval")
    np.testing.assert_allclose(sym.scale_residuals(bracket, params, names),
                               sym.scale_residuals_of_brackets(model, loss_fn, batches, names, "eval")[1])
    assert np.abs(sym.scale_residuals(bracket, params, names)).min() > 1e-3


def test_the_residual_grows_linearly_with_eps():
    residual = {}
    for eps in (1e-6, 1e-9):
        model, loss_fn, (x, y) = packed_problem(eps)
        names = ["model." + n for n in sym.conv_weights_before_batchnorm(model.model)]
        bracket = lh.lie_bracket(model, loss_fn, x, y, bn_mode="train")
        residual[eps] = np.abs(sym.scale_residuals(bracket, parameters_of(model), names))
    assert np.all((residual[1e-6] / residual[1e-9] > 300) & (residual[1e-6] / residual[1e-9] < 3000))


def test_sgd_grows_the_norm_by_lr_squared_gradient_squared():
    model, loss_fn, batches = packed_problem(1e-14, n=9)
    names = ["model." + n for n in sym.conv_weights_before_batchnorm(model.model)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    growth = sym.sgd_norm_growth(model, loss_fn, batches, 0.1, names)
    assert growth.growth.shape == growth.predicted.shape == (3, 2)
    np.testing.assert_allclose(growth.ratio, 1, rtol=1e-8)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # The first step by hand: gradient from the engine, plain subtraction of the norms.
    g = lh.gradient(model, loss_fn, batches[0], bn_mode="train")
    w = parameters_of(model)[names[0]]
    assert growth.predicted[0, 0] == pytest.approx(0.01 * float(g[names[0]].pow(2).sum()), rel=1e-12)
    assert growth.growth[0, 0] == pytest.approx(float((w - 0.1 * g[names[0]]).pow(2).sum() - w.pow(2).sum()),
                                                rel=1e-6)
    # With the usual eps the cross term 2·lr·⟨g, W⟩ shows at small learning rates.
    model, _, _ = packed_problem(1e-3, n=9)
    coarse = sym.sgd_norm_growth(model, loss_fn, batches, 1e-4, names)
    assert np.abs(coarse.ratio - 1).max() > 1e-3


def test_the_steps_own_rounding_is_measured_where_it_rivals_the_growth():
    """Conv weights scaled by 1e3 (the loss cannot see it: batch statistics) have gradients 1e-3 as large, so the
    float64 rounding of W − lr·g (about 1e-16·|W| an entry) is no longer small against lr²‖g‖²."""
    model, loss_fn, batches = packed_problem(1e-14, n=9)
    names = ["model." + n for n in sym.conv_weights_before_batchnorm(model.model)]
    with torch.no_grad():
        for name in names:
            dict(model.named_parameters())[name].mul_(1e3)
    growth = sym.sgd_norm_growth(model, loss_fn, batches, 0.1, names)
    assert np.abs(growth.ratio - 1).max() > 1e-2                    # the step as taken: rounding shows
    assert growth.rounding_share.max() > 1e-2
    np.testing.assert_allclose(growth.ratio_without_rounding, 1, rtol=1e-6)   # removed: the formula holds
    assert growth.rounding_ulps.max() <= 1.0                  # the departure from −lr·g is rounding alone


# ----------------------------------------------------------------------------- rescale symmetry

def test_relu_units_conserve_their_rescale_charge_and_tanh_units_do_not():
    relu, tanh = sym.two_layer_mlp("relu"), sym.two_layer_mlp("tanh")
    with torch.no_grad():                    # the symmetry itself: rescaling a ReLU unit changes nothing
        scaled = sym.two_layer_mlp("relu")
        scaled.model[0].weight[3] *= 2.5
        scaled.model[0].bias[3] *= 2.5
        scaled.model[2].weight[:, 3] /= 2.5
        x = relu.examples[0][0]
        torch.testing.assert_close(scaled.model(x), relu.model(x), rtol=1e-14, atol=1e-14)
    for problem, conserved in ((relu, True), (tanh, False)):
        fields, brackets = sym.rescale_check(problem)
        assert fields.shape == (6, 16) and brackets.shape == (15, 16)
        worst = max(np.abs(fields).max(), np.abs(brackets).max())
        assert (worst < 1e-13) if conserved else (worst > 1e-3)


def test_rescale_residuals_against_autograd_of_the_charge():
    problem = sym.two_layer_mlp("tanh")
    params = parameters_of(problem.model)
    field = lh.lie_bracket(problem.model, problem.loss_fn, *problem.examples[:2])
    got = sym.rescale_residuals(field, params)
    flat = torch.cat([t.flatten() for t in field.values()])
    for j in (0, 7):
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        charge = (leaves["0.weight"][j].pow(2).sum() + leaves["0.bias"][j] ** 2 - leaves["2.weight"][:, j].pow(2).sum())
        grad_q = torch.cat([t.flatten() for t in torch.autograd.grad(
            charge, list(leaves.values()), allow_unused=True, materialize_grads=True)])
        assert got[j] == pytest.approx(float(grad_q @ flat / (grad_q.norm() * flat.norm())), rel=1e-10)


# ----------------------------------------------------------------------------- translation symmetry

def test_translation_residual_values():
    head = {"h.weight": torch.ones(3, 2, dtype=DTYPE), "h.bias": torch.ones(3, dtype=DTYPE)}
    assert sym.translation_residual(head, "h", range(3)) == pytest.approx(1)
    head = {"h.weight": torch.tensor([[1.0, 2], [-1, -2], [5, 5]]), "h.bias": torch.tensor([3.0, -3, 1])}
    assert sym.translation_residual(head, "h", [0, 1]) == 0


def small_mxresnet(n_outputs):
    torch.manual_seed(0)
    model = mxresnet(18, n_outputs, 0.125).to(DTYPE)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 16, 16, dtype=DTYPE))
    return model.eval()


@pytest.mark.parametrize("loss, rows, conserved", [("categorical_hair_matched", range(36, 41), True),
                                                   ("independent", HAIR_INDEX, False)])
def test_softmax_head_conserves_the_sum_of_its_rows_on_mxresnet(loss, rows, conserved):
    loss_fn = get_loss(loss)
    model = small_mxresnet(loss_fn.n_outputs)
    head = sym.head_name(model)
    assert head == "10"
    inputs = torch.randn(3, 3, 16, 16, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    targets = (torch.rand(3, 40, generator=torch.Generator().manual_seed(2)) > 0.5).to(DTYPE)
    fields, brackets = sym.translation_check(model, loss_fn, inputs, targets, rows)
    assert fields.shape == (3,) and brackets.shape == (3,)
    direct = lh.lie_bracket(model, loss_fn, (inputs[:1], targets[:1]), (inputs[2:], targets[2:]))
    assert brackets[1] == pytest.approx(sym.translation_residual(direct, head, rows), rel=1e-6, abs=1e-13)
    residuals = np.concatenate([fields, brackets])
    assert (residuals.max() < 1e-12) if conserved else (residuals.min() > 1e-3)
