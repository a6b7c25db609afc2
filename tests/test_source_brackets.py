"""Source-attributed brackets against the plain bracket and against brute-force double backward (float64)."""
import pytest
import torch
from torch import nn

import lie_helpers as lh
from lie_helpers.analysis import source_brackets as sb
from lie_helpers.analysis import source_projections as sp
from lie_helpers.analysis.first_order import gradient_pushforward
from lie_helpers.engine.brackets import bracket_mode, parameters_of
from lie_helpers.training.losses import CategoricalHair, IndependentBCE

DTYPE = torch.float64


def tiny_net(outputs=5, seed=0):
    """A small conv net with BatchNorm (statistics warmed up) and Mish."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Mish(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.Mish(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, outputs)).to(DTYPE)
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 6, 6, dtype=DTYPE))
    return model.eval()


def data(n, outputs=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 6, 6, generator=g, dtype=DTYPE),
            (torch.rand(n, outputs, generator=g) > 0.5).to(DTYPE))


def batch(m=4, seed=2):
    return torch.randn(m, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def hair_targets(n, seed=3):
    """40 attributes; hair colours at most one per face, some with none."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(n, 40, generator=g) > 0.5).to(DTYPE)
    hair = [8, 9, 11, 17]                                   # Black, Blond, Brown, Gray
    t[:, hair] = 0
    for e in range(n):
        if e % 3:
            t[e, hair[e % 4]] = 1
    return t


def rel(a, b):
    return float((a - b).norm() / b.norm())


def field_rel(a: dict, b: dict):
    return lh.relative_error(a, b)


def term_loss(loss_fn, k):
    """Brute force: the loss with only source k's term (same normalisation)."""
    return lambda logits, targets: sb.source_terms(loss_fn, logits, targets)[:, k].sum()


def double_backward_product(model, loss_fn, example, vector):
    """H·vector of an example's loss by plain double backward (no torch.func)."""
    leaves = [p for p in model.parameters()]
    with bracket_mode(model), torch.enable_grad():
        g = torch.autograd.grad(loss_fn(model(example[0]), example[1]), leaves, create_graph=True)
        h = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, vector)), leaves)
    return h


def ex(x, y, i):
    return x[i:i + 1], y[i:i + 1]


CASES = {
    "independent": lambda: (tiny_net(5), IndependentBCE(), *data(3, 5)),
    "categorical hair": lambda: (tiny_net(41), CategoricalHair(), data(3, 5)[0], hair_targets(3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_source_terms_sum_to_the_loss(case):
    model, loss_fn, x, y = CASES[case]()
    with torch.no_grad():
        logits = model(x)
    terms = sb.source_terms(loss_fn, logits, y)
    assert terms.shape == (3, len(sb.source_layout(loss_fn, logits.shape[1])))
    assert float(terms.sum()) == pytest.approx(float(loss_fn(logits, y)), rel=1e-14)
    layout = sb.source_layout(loss_fn, logits.shape[1])
    assert sorted(o for s in layout for o in s.outputs) == list(range(logits.shape[1]))


@pytest.mark.parametrize("case", list(CASES))
def test_source_parts_sum_to_the_bracket_in_parameters_and_logits(case):
    model, loss_fn, x, y = CASES[case]()
    B = batch()
    result = sb.source_brackets(model, loss_fn, x, y, B, keep_parameter_space=True, self_part=True)
    assert result.pairs == [(0, 1), (0, 2), (1, 2)]
    for p, (i, j) in enumerate(result.pairs):
        full = lh.lie_bracket(model, loss_fn, ex(x, y, i), ex(x, y, j))
        summed = {k: t[p].sum(0) for k, t in result.parameter_space.items()}
        assert field_rel(summed, full) < 1e-12
        assert rel(result.bracket_pushforward[p], lh.pushforward(model, B, full)) < 1e-12
    assert rel(result.gradient_pushforward, gradient_pushforward(model, loss_fn, x, y, B).per_example) < 1e-12


@pytest.mark.parametrize("case", list(CASES))
def test_each_source_part_and_self_part_against_brute_force(case):
    model, loss_fn, x, y = CASES[case]()
    B = batch()
    result = sb.source_brackets(model, loss_fn, x, y, B, keep_parameter_space=True, self_part=True)
    names = list(parameters_of(model))
    i, j, p = 0, 2, result.pairs.index((0, 2))
    for k in (0, 2, len(result.sources) - 1):            # the last one is the softmax group for categorical hair
        only_k = term_loss(loss_fn, k)
        gik = lh.gradient(model, only_k, ex(x, y, i))
        gjk = lh.gradient(model, only_k, ex(x, y, j))
        # S_k = H_j g_{i,k} − H_i g_{j,k}, full Hessians, by double backward
        hj = double_backward_product(model, loss_fn, ex(x, y, j), [gik[n] for n in names])
        hi = double_backward_product(model, loss_fn, ex(x, y, i), [gjk[n] for n in names])
        brute = {n: a - b for n, a, b in zip(names, hj, hi)}
        assert field_rel({n: result.parameter_space[n][p, k] for n in names}, brute) < 1e-11
        assert rel(result.pushforward[p, k], lh.pushforward(model, B, brute)) < 1e-11
        # D_k = [v_{i,k}, v_{j,k}]: the bracket of the loss that keeps only term k
        self_brute = lh.lie_bracket(model, only_k, ex(x, y, i), ex(x, y, j))
        assert field_rel({n: result.self_parameter_space[n][p, k] for n in names}, self_brute) < 1e-11
        assert rel(result.self_pushforward[p, k], lh.pushforward(model, B, self_brute)) < 1e-11
        # J·v_{i,k} = −J g_{i,k}
        assert rel(result.first_order[i, k], -lh.pushforward(model, B, gik)) < 1e-12


def test_antisymmetry_swapping_the_examples_flips_every_part():
    model, loss_fn, x, y = CASES["independent"]()
    B = batch()
    forward = sb.source_brackets(model, loss_fn, x[:2], y[:2], B, self_part=True)
    backward = sb.source_brackets(model, loss_fn, x[[1, 0]], y[[1, 0]], B, self_part=True)
    assert rel(backward.pushforward, -forward.pushforward) < 1e-12
    assert rel(backward.self_pushforward, -forward.self_pushforward) < 1e-12
    assert rel(backward.first_order, forward.first_order[[1, 0]]) < 1e-14


def test_a_subset_of_sources_plus_rest_is_exact_and_matches_the_full_split():
    model, loss_fn, x, y = CASES["categorical hair"]()
    B = batch()
    every = sb.source_brackets(model, loss_fn, x, y, B, self_part=True)
    chosen = ["Eyeglasses", "Black_Hair+Blond_Hair+Brown_Hair+Gray_Hair", 3]
    subset = sb.source_brackets(model, loss_fn, x, y, B, sources=chosen, self_part=True)
    index = [every.sources.index("Eyeglasses"), len(every.sources) - 1, 3]
    assert subset.sources == [every.sources[k] for k in index] + [sb.REST]
    assert rel(subset.pushforward[:, :3], every.pushforward[:, index]) < 1e-12
    assert rel(subset.self_pushforward[:, :3], every.self_pushforward[:, index]) < 1e-12
    assert rel(subset.first_order[:, :3], every.first_order[:, index]) < 1e-12
    assert rel(subset.bracket_pushforward, every.bracket_pushforward) < 1e-12
    assert rel(subset.gradient_pushforward, every.gradient_pushforward) < 1e-12
    with pytest.raises(ValueError, match="Unknown source"):
        sb.source_brackets(model, loss_fn, x, y, B, sources=["Black_Hair"])   # inside the group: no term of its own


def test_the_model_is_left_as_it_was_and_chunking_changes_nothing():
    model, loss_fn, x, y = CASES["independent"]()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    B = batch()
    a = sb.source_brackets(model, loss_fn, x, y, B, self_part=True)
    b = sb.source_brackets(model, loss_fn, x, y, B, self_part=True, tangents_per_call=3)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert rel(b.pushforward, a.pushforward) < 1e-13 and rel(b.self_pushforward, a.self_pushforward) < 1e-13


def test_source_magnitude_is_rms_over_batch_then_median_over_pairs():
    parts = torch.randn(5, 3, 4, 6, dtype=DTYPE)
    expected = parts.pow(2).mean(dim=(2, 3)).sqrt().median(dim=0).values
    assert torch.allclose(sb.source_magnitude(parts), expected)
    assert torch.allclose(sb.source_magnitude(3 * parts), 3 * expected)
    assert torch.allclose(sb.source_magnitude(parts, outputs=[1]), parts[..., 1].pow(2).mean(2).sqrt().median(0).values)


@pytest.mark.parametrize("case", list(CASES))
def test_the_adjoint_on_chosen_outputs_equals_the_forward_split(case):
    model, loss_fn, x, y = CASES[case]()
    B = batch()
    forward = sb.source_brackets(model, loss_fn, x, y, B)
    outputs = [1, 3] if case == "independent" else [0, 37, 40]
    adjoint = sp.source_brackets_on_outputs(model, loss_fn, x, y, B, outputs)
    assert adjoint.sources == forward.sources
    assert rel(adjoint.pushforward, forward.pushforward[..., outputs]) < 1e-12
    assert rel(adjoint.first_order, forward.first_order[..., outputs]) < 1e-12


def test_projections_on_any_directions_are_the_inner_products_and_sketches_are_linear():
    model, loss_fn, x, y = CASES["independent"]()
    B = batch()
    forward = sb.source_brackets(model, loss_fn, x, y, B)
    u = torch.randn(7, 4, 5, generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    r = sp.source_projections(model, loss_fn, x, y, B, u)
    assert rel(r.pushforward, torch.einsum("mbo,psbo->psm", u, forward.pushforward)) < 1e-12
    assert rel(r.first_order, torch.einsum("mbo,esbo->esm", u, forward.first_order)) < 1e-12
    magnitude, first = sp.sketched_source_magnitudes(model, loss_fn, x, y, B, sketches=2000)
    exact = forward.pushforward.pow(2).mean(dim=(2, 3)).sqrt()
    assert float((magnitude / exact).log().abs().max()) < 0.15          # 2000 sketches: about ±3% each


# ----------------------------------------------------------------------------- Adam's self part (issue 20)

def adam_state(model, beta1=0.8, seed=5, step=7, eps=1e-8):
    """A frozen Adam state with random moments over the model's trainable parameters (float64)."""
    from lie_helpers.engine.adam import AdamState
    g = torch.Generator().manual_seed(seed)
    params = parameters_of(model)
    m = {k: 0.1 * torch.randn(t.shape, generator=g, dtype=DTYPE) for k, t in params.items()}
    v = {k: 0.01 * torch.rand(t.shape, generator=g, dtype=DTYPE) + 1e-4 for k, t in params.items()}
    return AdamState(m, v, step, (beta1, 0.999), eps, 5e-3)


class OneSource:
    """The whole loss as one source: its self part is the whole bracket."""

    def __init__(self, base):
        self.base = base

    def source_layout(self, n_outputs):
        return [sb.Source("all", tuple(range(n_outputs)))]

    def source_terms(self, logits, targets):
        return sb.source_terms(self.base, logits, targets).sum(1, keepdim=True)

    def __call__(self, logits, targets):
        return self.base(logits, targets)


@pytest.mark.parametrize("case", list(CASES))
def test_adams_self_part_of_a_one_source_loss_is_adams_bracket(case):
    from lie_helpers.engine.adam import adam_bracket
    model, base, x, y = CASES[case]()
    loss_fn, B, state = OneSource(base), batch(), adam_state(model)
    r = sb.adam_source_brackets(model, loss_fn, x, y, B, state, keep_parameter_space=True)
    whole = sb.adam_self_part(r, state)
    beta1 = state.betas[0]
    for p, (i, j) in enumerate(r.pairs):
        expected = adam_bracket(model, loss_fn, ex(x, y, i), ex(x, y, j), state)
        ours = {n: (1 - beta1) * r.self_parameter_space[n][p, 0] + beta1 * r.momentum_parameter_space[n][p, 0]
                for n in expected}
        assert field_rel(ours, expected) < 1e-12
        assert rel(whole[p, 0], lh.pushforward(model, B, expected)) < 1e-12
    pre = state.preconditioner()
    g0 = lh.gradient(model, loss_fn, ex(x, y, 0))
    assert rel(r.first_order[0, 0], -lh.pushforward(model, B, {n: pre[n] * t for n, t in g0.items()})) < 1e-12


def test_with_p_one_and_no_momentum_adams_self_part_is_the_sgd_self_part():
    model, loss_fn, x, y = CASES["categorical hair"]()
    B = batch()
    state = adam_state(model, beta1=0.0, eps=1.0)
    state = type(state)(state.m, {k: torch.zeros_like(t) for k, t in state.v.items()}, state.step, state.betas, 1.0)
    assert all(bool((t == 1).all()) for t in state.preconditioner().values())
    sgd = sb.source_brackets(model, loss_fn, x, y, B, self_part=True)
    adam = sb.adam_source_brackets(model, loss_fn, x, y, B, state, source_part=True)
    assert rel(adam.self_pushforward, sgd.self_pushforward) < 1e-13
    assert rel(sb.adam_self_part(adam, state), sgd.self_pushforward) < 1e-13
    assert rel(adam.pushforward, sgd.pushforward) < 1e-13 and rel(adam.first_order, sgd.first_order) < 1e-13


def test_adams_self_and_momentum_parts_against_brute_force():
    model, loss_fn, x, y = CASES["independent"]()
    B, state = batch(), adam_state(model)
    r = sb.adam_source_brackets(model, loss_fn, x, y, B, state, keep_parameter_space=True)
    pre, names = state.preconditioner(), list(parameters_of(model))
    i, j, p = 0, 2, r.pairs.index((0, 2))
    pm = [pre[n] * state.m[n] for n in names]
    for k in (0, 3):
        only_k = term_loss(loss_fn, k)
        pg = {e: [pre[n] * t for n, t in lh.gradient(model, only_k, ex(x, y, e)).items()] for e in (i, j)}
        self_brute = {n: pre[n] * (a - b) for n, a, b in zip(
            names, double_backward_product(model, only_k, ex(x, y, j), pg[i]),
            double_backward_product(model, only_k, ex(x, y, i), pg[j]))}
        momentum_brute = {n: pre[n] * (a - b) for n, a, b in zip(
            names, double_backward_product(model, only_k, ex(x, y, j), pm),
            double_backward_product(model, only_k, ex(x, y, i), pm))}
        assert field_rel({n: r.self_parameter_space[n][p, k] for n in names}, self_brute) < 1e-11
        assert field_rel({n: r.momentum_parameter_space[n][p, k] for n in names}, momentum_brute) < 1e-11
        assert rel(r.momentum_pushforward[p, k], lh.pushforward(model, B, momentum_brute)) < 1e-11
        assert rel(r.self_pushforward[p, k], lh.pushforward(model, B, self_brute)) < 1e-11


@pytest.mark.parametrize("w", [2.0, 8.0, 0.3])
def test_a_dose_at_a_fixed_adam_state_scales_the_parts_by_their_known_powers(w):
    from lie_helpers.analysis.controls import WeightedLoss
    model, loss_fn, x, y = CASES["categorical hair"]()
    B, state = batch(), adam_state(model)
    k = len(sb.source_layout(loss_fn, 41)) - 1                       # the hair softmax group
    one = sb.adam_source_brackets(model, loss_fn, x, y, B, state)
    dosed = sb.adam_source_brackets(model, WeightedLoss(loss_fn, {k: w}, 41), x, y, B, state)
    assert rel(dosed.self_pushforward[:, k], w ** 2 * one.self_pushforward[:, k]) < 1e-12      # D^A_k → w² D^A_k
    assert rel(dosed.momentum_pushforward[:, k], w * one.momentum_pushforward[:, k]) < 1e-12   # M_k → w M_k
    assert rel(dosed.first_order[:, k], w * one.first_order[:, k]) < 1e-12                     # J·P g_k → w J·P g_k
    rest = [s for s in range(len(one.sources)) if s != k]
    for part in ("self_pushforward", "momentum_pushforward", "first_order"):
        assert rel(getattr(dosed, part)[:, rest], getattr(one, part)[:, rest]) < 1e-12
    beta1 = state.betas[0]
    curve = (1 - beta1) * w ** 2 * one.self_pushforward[:, k] + beta1 * w * one.momentum_pushforward[:, k]
    assert rel(sb.adam_self_part(dosed, state)[:, k], curve) < 1e-12


def test_chunking_changes_nothing_in_adams_split():
    model, loss_fn, x, y = CASES["independent"]()
    B, state = batch(), adam_state(model)
    a = sb.adam_source_brackets(model, loss_fn, x, y, B, state)
    b = sb.adam_source_brackets(model, loss_fn, x, y, B, state, tangents_per_call=3)
    for part in ("self_pushforward", "momentum_pushforward", "first_order"):
        assert rel(getattr(b, part), getattr(a, part)) < 1e-13
    assert a.pushforward is None and sb.source_brackets(model, loss_fn, x, y, B, source_part=False,
                                                        self_part=True).pushforward is None
    with pytest.raises(ValueError, match="source_part or self_part"):
        sb.source_brackets(model, loss_fn, x, y, B, source_part=False)
