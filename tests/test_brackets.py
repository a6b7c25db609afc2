"""The bracket engine against brute force: finite differences, double backward, swapped SGD steps.

Quadratic losses (exact ε² law, closed form) are tested in test_toy.py with the toy problems.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lie_helpers as lh
from lie_helpers.engine.brackets import bracket_mode

DTYPE = torch.float64


def conv_net(seed=0, dtype=DTYPE, act=nn.Mish):
    """A small conv net with BatchNorm and a smooth activation, BN statistics warmed up."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), act(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), act(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3)).to(dtype)
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 8, 8, dtype=dtype))
    return model.eval()


def data(n=4, seed=1, dtype=DTYPE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), (torch.rand(n, 3, generator=g) > 0.5).to(dtype)


def loss_fn(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets)


def example(inputs, targets, i):
    return inputs[i:i + 1], targets[i:i + 1]


norm, rel_err = lh.engine.brackets.field_norm, lh.relative_error


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def assert_unchanged(model, snap):
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_hvp_matches_central_differences_of_gradients(bn_mode):
    model, (x, y) = conv_net(), data()
    ex = example(x, y, 0)
    params = lh.engine.brackets.parameters_of(model)
    torch.manual_seed(3)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    h = 1e-5

    def grad_at(shift):
        shifted = conv_net()
        with torch.no_grad():
            for name, p in shifted.named_parameters():
                p.add_(shift * v[name])
        shifted.load_state_dict({**shifted.state_dict(), **{k: b for k, b in model.named_buffers()}})
        return lh.gradient(shifted, loss_fn, ex, bn_mode=bn_mode)

    finite_diff = {k: (a - b) / (2 * h) for (k, a), b in zip(grad_at(h).items(), grad_at(-h).values())}
    assert rel_err(lh.hvp(model, loss_fn, ex, v, bn_mode=bn_mode), finite_diff) < 1e-7


def test_gradient_matches_autograd():
    model, (x, y) = conv_net(), data()
    expected = torch.autograd.grad(loss_fn(model(x[:1]), y[:1]), list(model.parameters()))
    got = lh.gradient(model, loss_fn, example(x, y, 0))
    assert list(got) == [n for n, _ in model.named_parameters()]
    for g, e in zip(got.values(), expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["vmap", "rows"])
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_bracket_matrix_equals_pairwise_double_backward(bn_mode, method):
    model, (x, y) = conv_net(), data(n=4)
    matrix = lh.bracket_matrix(model, loss_fn, x, y, bn_mode=bn_mode, method=method)
    assert matrix.pairs == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert sorted(matrix.brackets) == matrix.pairs
    for i, j in matrix.pairs:
        naive = lh.lie_bracket(model, loss_fn, example(x, y, i), example(x, y, j), bn_mode=bn_mode)
        assert rel_err(matrix.brackets[(i, j)], naive) < 1e-12
    for i in range(4):
        assert rel_err(matrix.gradients[i], lh.gradient(model, loss_fn, example(x, y, i), bn_mode=bn_mode)) < 1e-12


def test_auto_method_takes_rows_for_large_models_on_the_cpu(monkeypatch):
    model, (x, y) = conv_net(), data(n=3)
    calls = []
    monkeypatch.setattr(lh.engine.brackets, "brackets_by_rows",
                        lambda *a, _real=lh.engine.brackets.brackets_by_rows: calls.append(1) or _real(*a))
    lh.bracket_matrix(model, loss_fn, x, y)
    assert not calls
    monkeypatch.setattr(lh.engine.brackets, "ROWS_ABOVE_PARAMETERS_ON_CPU", 10)
    lh.bracket_matrix(model, loss_fn, x, y)
    assert calls


def test_bracket_matrix_in_chunks_equals_all_at_once():
    model, (x, y) = conv_net(), data(n=5)
    together = lh.bracket_matrix(model, loss_fn, x, y)
    for pairs_per_call in (1, 3):
        chunked = lh.bracket_matrix(model, loss_fn, x, y, pairs_per_call=pairs_per_call)
        for pair in together.pairs:
            assert rel_err(chunked.brackets[pair], together.brackets[pair]) < 1e-13


def test_the_default_cap_bounds_each_vmapped_call_and_changes_no_bracket(monkeypatch):
    """N = 9 (36 pairs) under PAIRS_PER_CALL = 32: calls of 64 and 8 products, the brackets of one call of 72."""
    model, (x, y) = conv_net(), data(n=9)
    calls = []

    def counting(loss_at, bn_mode, _real=lh.engine.brackets.hessian_vector_products):
        products = _real(loss_at, bn_mode)
        return lambda params, inputs, *rest: calls.append(inputs.shape[0]) or products(params, inputs, *rest)
    monkeypatch.setattr(lh.engine.brackets, "hessian_vector_products", counting)
    capped = lh.bracket_matrix(model, loss_fn, x, y, method="vmap")
    assert lh.engine.brackets.PAIRS_PER_CALL == 32 and calls == [64, 8]
    calls.clear()
    uncapped = lh.bracket_matrix(model, loss_fn, x, y, method="vmap", pairs_per_call=36)
    assert calls == [72]
    for pair in uncapped.pairs:
        assert rel_err(capped.brackets[pair], uncapped.brackets[pair]) < 1e-13


def test_pair_chunks_cover_the_pairs_in_order():
    pairs = lh.BracketMatrix(64).pairs
    chunks = lh.engine.brackets.pair_chunks(pairs, lh.engine.brackets.PAIRS_PER_CALL)
    assert len(chunks) == 63 and all(len(c) == 32 for c in chunks)
    assert sum(chunks, []) == pairs
    assert [len(c) for c in lh.engine.brackets.pair_chunks(lh.BracketMatrix(4).pairs, 4)] == [4, 2]


@pytest.mark.parametrize("method", ["vmap", "rows"])
def test_a_share_of_whole_chunks_gives_the_bits_of_the_whole_matrix(method):
    """What one process of several computes (lie_helpers.pipeline.distributed): the same bits, only its pairs."""
    model, (x, y) = conv_net(), data(n=4)
    whole = lh.bracket_matrix(model, loss_fn, x, y, method=method, pairs_per_call=2)
    chunks = lh.engine.brackets.pair_chunks(whole.pairs, 2)
    share = chunks[0] + chunks[2]
    part = lh.bracket_matrix(model, loss_fn, x, y, method=method, pairs_per_call=2, pairs=share)
    assert list(part.brackets) == share
    for pair in share:
        assert all(torch.equal(part.brackets[pair][k], whole.brackets[pair][k]) for k in whole.brackets[pair])
    assert all(torch.equal(a[k], b[k]) for a, b in zip(part.gradients, whole.gradients) for k in a)


def test_bad_pairs_are_refused():
    model, (x, y) = conv_net(), data(n=3)
    for bad, says in (([(1, 0)], r"\(1, 0\) is not \(i, j\) with 0 <= i < j < 3"), ([(0, 3)], "< 3"),
                      ([(0, 1), (0, 1)], "repeats a pair"), ([], "empty")):
        with pytest.raises(ValueError, match=says):
            lh.bracket_matrix(model, loss_fn, x, y, pairs=bad)


@pytest.mark.parametrize("method", ["vmap", "rows"])
def test_bracket_matrix_reduces_on_the_fly(method):
    model, (x, y) = conv_net(), data(n=3)
    batch = data(n=5, seed=7)[0]
    matrix = lh.bracket_matrix(
        model, loss_fn, x, y, method=method,
        reduce=lambda b: (lh.rms_per_tensor(b), lh.pushforward(model, batch, b)),
        reduce_gradient=lh.rms_per_tensor)
    full = lh.bracket_matrix(model, loss_fn, x, y)
    for pair, (rms, logits) in matrix.brackets.items():
        bracket = full.brackets[pair]
        assert rms.keys() == bracket.keys()
        for k in rms:
            assert rms[k] == pytest.approx(float(bracket[k].pow(2).mean().sqrt()), rel=1e-12)
        assert logits.shape == (5, 3)
        # The pushforward is the derivative of the outputs along the bracket.
        h = 1e-6
        moved = {k: p + h * bracket[k] for k, p in lh.engine.brackets.parameters_of(model).items()}
        back = {k: p - h * bracket[k] for k, p in lh.engine.brackets.parameters_of(model).items()}
        with torch.no_grad():
            fd = (torch.func.functional_call(model, moved, (batch,))
                  - torch.func.functional_call(model, back, (batch,))) / (2 * h)
        torch.testing.assert_close(logits, fd, rtol=1e-6, atol=1e-9)
    assert matrix.gradients[0].keys() == full.gradients[0].keys()


def test_antisymmetry_and_bilinearity():
    model, (x, y) = conv_net(), data(n=3)
    xy = lh.lie_bracket(model, loss_fn, example(x, y, 0), example(x, y, 1))
    yx = lh.lie_bracket(model, loss_fn, example(x, y, 1), example(x, y, 0))
    assert rel_err({k: -t for k, t in yx.items()}, xy) < 1e-14
    xx = lh.lie_bracket(model, loss_fn, example(x, y, 2), example(x, y, 2))
    assert norm(xx) < 1e-14 * norm(xy)
    # Linear in each field: the loss of example 0 scaled by 3 gives 3 times the bracket.
    scaled = lh.lie_bracket(model, lambda out, t: 3 * loss_fn(out, t) if t.equal(y[:1]) else loss_fn(out, t),
                            example(x, y, 0), example(x, y, 1))
    assert rel_err(scaled, {k: 3 * t for k, t in xy.items()}) < 1e-13


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_swap_difference_approaches_lr_squared_bracket(bn_mode):
    model, (x, y) = conv_net(), data()
    ex, ey = example(x, y, 0), example(x, y, 1)
    bracket = lh.lie_bracket(model, loss_fn, ex, ey, bn_mode=bn_mode)
    lrs = [1e-2, 1e-3, 1e-4]
    errors = [rel_err({k: t / lr ** 2 for k, t in
                       lh.swap_difference(model, loss_fn, ex, ey, lr, bn_mode=bn_mode).items()}, bracket)
              for lr in lrs]
    slope = (math.log(errors[0]) - math.log(errors[-1])) / (math.log(lrs[0]) - math.log(lrs[-1]))
    assert errors[-1] < 1e-2
    assert 0.8 < slope < 1.2


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_helpers_never_change_the_model(bn_mode):
    model, (x, y) = conv_net(), data(n=3)
    model.train()  # a model handed over in train mode must come back in train mode
    snap = snapshot(model)
    ex, ey = example(x, y, 0), example(x, y, 1)
    lh.lie_bracket(model, loss_fn, ex, ey, bn_mode=bn_mode)
    lh.swap_difference(model, loss_fn, ex, ey, 0.1, bn_mode=bn_mode)
    lh.bracket_matrix(model, loss_fn, x, y, bn_mode=bn_mode)
    lh.hvp(model, loss_fn, ex, lh.gradient(model, loss_fn, ey, bn_mode=bn_mode), bn_mode=bn_mode)
    lh.pushforward(model, x, lh.gradient(model, loss_fn, ex), bn_mode=bn_mode)
    assert_unchanged(model, snap)


def test_tf32_is_off_inside_and_restored_after():
    model = conv_net()
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with bracket_mode(model):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_scale_symmetry_conserved_by_brackets_only_with_batch_statistics():
    """Conv W before BatchNorm with batch statistics: L(αW) = L(W), so ⟨[v_x, v_y]_W, W⟩ = 0."""
    model, (x, y) = conv_net(), data()
    model[1].eps = 1e-14  # BatchNorm's eps breaks the invariance at order eps / variance
    ex, ey = example(x, y, 0), example(x, y, 1)
    w = model[0].weight.detach()

    def cosine(bn_mode):
        b = lh.lie_bracket(model, loss_fn, ex, ey, bn_mode=bn_mode)["0.weight"]
        return float((b * w).sum() / (b.norm() * w.norm()))

    assert abs(cosine("train")) < 1e-12
    assert abs(cosine("eval")) > 1e-3


def test_float32_agrees_with_float64():
    x64, y64 = data(n=3)
    m64 = conv_net()
    m32 = conv_net().float()
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    b64 = lh.bracket_matrix(m64, loss_fn, x64, y64)
    b32 = lh.bracket_matrix(m32, loss_fn, x64.float(), y64.float())
    for pair in b64.pairs:
        assert rel_err({k: t.double() for k, t in b32.brackets[pair].items()}, b64.brackets[pair]) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_agrees_with_cpu():
    x, y = data(n=3)
    model = conv_net()
    cpu = lh.bracket_matrix(model, loss_fn, x, y)
    gpu = lh.bracket_matrix(model.cuda(), loss_fn, x.cuda(), y.cuda())
    for pair in cpu.pairs:
        assert rel_err({k: t.cpu() for k, t in gpu.brackets[pair].items()}, cpu.brackets[pair]) < 1e-10


# ----------------------------------------------------------------------------- bad input


def test_example_without_batch_dimension_is_refused():
    model, (x, y) = conv_net(), data()
    with pytest.raises(ValueError, match="leading batch dimension of 1"):
        lh.lie_bracket(model, loss_fn, (x[0], y[0]), example(x, y, 1))
    with pytest.raises(ValueError, match="leading batch dimension of 1"):
        lh.gradient(model, loss_fn, (x[:2], y[:2]))


def test_mismatched_shapes_are_refused():
    model, (x, y) = conv_net(), data()
    small = torch.randn(1, 3, 6, 6, dtype=DTYPE)
    with pytest.raises(ValueError, match="different shapes"):
        lh.swap_difference(model, loss_fn, example(x, y, 0), (small, y[:1]), 0.1)
    with pytest.raises(ValueError, match="different numbers of examples"):
        lh.bracket_matrix(model, loss_fn, x, y[:2])
    with pytest.raises(ValueError, match="float32 but the model is torch.float64"):
        lh.lie_bracket(model, loss_fn, (x[:1].float(), y[:1]), (x[1:2].float(), y[1:2]))
    with pytest.raises(ValueError, match="same keys"):
        lh.hvp(model, loss_fn, example(x, y, 0), {"nope": torch.zeros(1)})


def test_loss_that_is_not_a_scalar_is_refused():
    model, (x, y) = conv_net(), data()
    per_output = lambda out, t: F.binary_cross_entropy_with_logits(out, t, reduction="none")  # noqa: E731
    with pytest.raises(ValueError, match="scalar"):
        lh.lie_bracket(model, per_output, example(x, y, 0), example(x, y, 1))
    with pytest.raises(ValueError, match="scalar"):
        lh.bracket_matrix(model, per_output, x, y)


def test_model_without_parameters_and_other_bad_arguments_are_refused():
    x, y = data()
    with pytest.raises(ValueError, match="no trainable parameters"):
        lh.lie_bracket(nn.Flatten(), loss_fn, example(x, y, 0), example(x, y, 1))
    model = conv_net()
    with pytest.raises(ValueError, match="bn_mode"):
        lh.lie_bracket(model, loss_fn, example(x, y, 0), example(x, y, 1), bn_mode="batch")
    with pytest.raises(TypeError, match="pair"):
        lh.gradient(model, loss_fn, x[:1])
    with pytest.raises(ValueError, match="at least 2"):
        lh.bracket_matrix(model, loss_fn, x[:1], y[:1])
    with pytest.raises(ValueError, match="method"):
        lh.bracket_matrix(model, loss_fn, x, y, method="fast")


def test_frozen_parameters_are_no_part_of_a_field():
    """A frozen weight is held fixed: the field lives on the trainable parameters, and its bracket is the
    bracket of a model in which that weight is a constant (computed here by folding it into a closure)."""
    model, (x, y) = conv_net(), data()
    frozen = "0.weight"
    model[0].weight.requires_grad_(False)
    ex, ey = example(x, y, 0), example(x, y, 1)
    bracket = lh.lie_bracket(model, loss_fn, ex, ey)
    assert frozen not in bracket and set(bracket) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen not in lh.gradient(model, loss_fn, ex)

    # Independent computation: the trainable parameters as the only leaves, the frozen weight a constant.
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if n != frozen}
    constant = {frozen: model[0].weight.detach()}

    def loss_at(p, e):
        with bracket_mode(model):
            return loss_fn(torch.func.functional_call(model, {**p, **constant}, (e[0],)), e[1])
    gx = torch.autograd.grad(loss_at(params, ex), list(params.values()), create_graph=True)
    gy = torch.autograd.grad(loss_at(params, ey), list(params.values()), create_graph=True)
    pairing = sum((b * a.detach()).sum() - (a * b.detach()).sum() for a, b in zip(gx, gy))
    expected = dict(zip(params, torch.autograd.grad(pairing, list(params.values()))))
    assert rel_err(bracket, expected) < 1e-10
    matrix = lh.bracket_matrix(model, loss_fn, x[:2], y[:2])
    assert rel_err(matrix.brackets[(0, 1)], expected) < 1e-10

    before = model[0].weight.detach().clone()
    swap = lh.swap_difference(model, loss_fn, ex, ey, 1e-3)
    assert frozen not in swap and torch.equal(model[0].weight, before)


def test_pairs_per_call_below_one_and_float_losses_are_refused():
    model, (x, y) = conv_net(), data()
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="pairs_per_call must be a positive integer"):
            lh.bracket_matrix(model, loss_fn, x, y, pairs_per_call=bad)
    assert len(lh.bracket_matrix(model, loss_fn, x, y, pairs_per_call=1, method="vmap").brackets) == 6
    as_float = lambda out, t: float(loss_fn(out, t).detach())  # noqa: E731
    with pytest.raises(TypeError, match="loss_fn must return a tensor.*got float"):
        lh.gradient(model, as_float, example(x, y, 0))


def test_relative_error_against_a_zero_field():
    zero, one = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    assert lh.relative_error(zero, zero) == 0.0
    assert lh.relative_error(one, zero) == math.inf
    assert lh.relative_error(zero, one) == 1.0


@pytest.mark.parametrize("method", ["vmap", "rows"])
def test_bracket_matrix_reduces_each_pair_in_pairs_order(method):
    """Callers may number what `reduce` sees (analysis keeps full brackets so); rows hands over each
    pair as soon as both its products exist, without holding products for later pairs."""
    model, (x, y) = conv_net(), data(n=5)
    seen = []
    matrix = lh.bracket_matrix(model, loss_fn, x, y, method=method, reduce=lambda b: seen.append(b) or len(seen) - 1)
    assert [matrix.brackets[p] for p in matrix.pairs] == list(range(10))
    for p, bracket in zip(matrix.pairs, seen):
        assert rel_err(bracket, lh.lie_bracket(model, loss_fn, example(x, y, p[0]), example(x, y, p[1]))) < 1e-10
