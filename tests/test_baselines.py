"""First-order baselines against brute force on a tiny float64 conv net; the RMS-law statistics by simulation."""
import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from lie_helpers.analysis import first_order, rms_law
from lie_helpers.engine.brackets import BracketMatrix
from lie_helpers.training.losses import CategoricalHair, IndependentBCE

DTYPE = torch.float64
N_OUT = 3
loss_fn = IndependentBCE()


def tiny_net(seed=0):
    """Conv, BatchNorm (running statistics warmed up, then in train mode: bracket_mode must switch it), Mish, linear head."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.Mish(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, N_OUT)).to(DTYPE)
    with torch.no_grad():
        model.train()(torch.randn(16, 2, 5, 5, dtype=DTYPE))
    return model


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 5, 5, generator=g, dtype=DTYPE), (torch.rand(n, N_OUT, generator=g) > 0.5).to(DTYPE)


def eval_copy(model):
    copy = tiny_net()
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def flat_gradient(model, scalar):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, list(model.parameters()), retain_graph=True)])


def explicit_jacobian(model, batch):
    """[batch, outputs, parameters], one plain backward pass per logit (model in eval mode)."""
    logits = model(batch)
    return torch.stack([torch.stack([flat_gradient(model, logits[n, k]) for k in range(logits.shape[1])])
                        for n in range(logits.shape[0])])


def state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


@pytest.fixture
def setup():
    model = tiny_net()
    examples, targets = data(4, seed=1)
    batch, batch_targets = data(5, seed=2)
    reference = eval_copy(model)
    before = state(model)
    yield model, reference, examples, targets, batch, batch_targets
    after = state(model)
    for k, v in after[0].items():
        assert torch.equal(v, before[0][k]), f"{k} changed"
    assert after[1:] == before[1:], "train/eval modes or TF32 flags changed"


def test_gradient_pushforward_matches_explicit_jacobian_and_finite_differences(setup):
    model, reference, examples, targets, batch, _ = setup
    result = first_order.gradient_pushforward(model, loss_fn, examples, targets, batch)
    jacobian = explicit_jacobian(reference, batch).reshape(-1, sum(p.numel() for p in reference.parameters()))
    fields = [-flat_gradient(reference, loss_fn(reference(examples[i:i + 1]), targets[i:i + 1])) for i in range(4)]
    expected = torch.stack([(jacobian @ v).reshape(5, N_OUT) for v in fields])
    torch.testing.assert_close(result.per_example, expected, rtol=1e-10, atol=1e-12)

    h = 1e-6  # central differences of the logits along v_0
    shifted = []
    for sign in (1, -1):
        moved = eval_copy(reference)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(reference.parameters())
                                                + sign * h * fields[0], moved.parameters())
            shifted.append(moved(batch))
    torch.testing.assert_close(result.per_example[0], (shifted[0] - shifted[1]) / (2 * h), rtol=1e-6, atol=1e-9)

    pairs = BracketMatrix(4).pairs
    assert result.pair_difference.shape == (len(pairs), 5, N_OUT)
    for row, (i, j) in zip(result.pair_difference, pairs):
        torch.testing.assert_close(row, (jacobian @ (fields[i] - fields[j])).reshape(5, N_OUT), rtol=1e-10, atol=1e-12)


def test_per_attribute_loss_is_each_columns_bce_and_averages_to_the_loss(setup):
    model, reference, _, _, batch, batch_targets = setup
    got = first_order.per_attribute_loss(model, loss_fn, batch, batch_targets)
    logits = reference(batch).detach()
    expected = torch.stack([loss_fn(logits[:, k:k + 1], batch_targets[:, k:k + 1]) for k in range(N_OUT)])
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(got.mean(), loss_fn(logits, batch_targets), rtol=1e-13, atol=0)


def test_attribute_gradients_norms_and_conflict_match_plain_autograd(setup):
    model, reference, _, _, batch, batch_targets = setup
    gram = first_order.attribute_gradient_gram(model, loss_fn, batch, batch_targets)
    own = torch.stack([flat_gradient(reference, F.binary_cross_entropy_with_logits(reference(batch)[:, k],
                                                                                   batch_targets[:, k]))
                       for k in range(N_OUT)])
    torch.testing.assert_close(gram, own @ own.T, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(first_order.attribute_gradient_norms(gram), own.norm(dim=1), rtol=1e-10, atol=0)

    conflict = first_order.gradient_conflict(gram)
    for k in range(N_OUT):
        for m in range(N_OUT):
            assert float(conflict.cosine[k, m]) == pytest.approx(float(F.cosine_similarity(own[k], own[m], dim=0)),
                                                                 rel=1e-9)
        others = [max(0.0, -float(F.cosine_similarity(own[k], own[m], dim=0))) for m in range(N_OUT) if m != k]
        assert float(conflict.conflict[k]) == pytest.approx(np.mean(others), rel=1e-9, abs=1e-15)


def test_ggn_trace_per_output_estimates_the_explicit_jacobians_trace(setup):
    model, reference, _, _, batch, _ = setup
    jacobian = explicit_jacobian(reference, batch)                        # [batch, outputs, parameters]
    p = torch.sigmoid(reference(batch)).detach()
    ggn = [jacobian[:, k].T @ torch.diag(p[:, k] * (1 - p[:, k])) @ jacobian[:, k] for k in range(N_OUT)]
    exact = torch.stack([g.trace() for g in ggn])
    estimate = first_order.ggn_trace_per_output(model, loss_fn, batch, samples=4000, seed=3)
    z = (estimate.value - exact) / estimate.standard_error
    assert z.abs().max() < 4, z
    assert (estimate.standard_error / exact).max() < 0.05  # the estimate is informative, not just wide
    again = first_order.ggn_trace_per_output(model, loss_fn, batch, samples=4000, seed=3)
    assert torch.equal(again.value, estimate.value)


def test_per_attribute_baselines_refuse_the_categorical_loss(setup):
    model, _, _, _, batch, batch_targets = setup
    for fn in (first_order.per_attribute_loss, first_order.attribute_gradient_gram):
        with pytest.raises(ValueError, match="IndependentBCE"):
            fn(model, CategoricalHair(), batch, batch_targets)
    with pytest.raises(ValueError, match="IndependentBCE"):
        first_order.ggn_trace_per_output(model, CategoricalHair(), batch)


def test_calibration_error_matches_a_loop_over_bins():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(200, 4, generator=g, dtype=DTYPE)
    p[0, 0] = 1.0  # the right edge belongs to the last bin
    labels = (torch.rand(200, 4, generator=g, dtype=DTYPE) < p ** 2).to(DTYPE)
    got = first_order.calibration_error(p, labels, bins=7)
    for k in range(4):
        edges = np.linspace(0, 1, 8)
        total = 0.0
        for b in range(7):
            inside = (p[:, k] >= edges[b]) & ((p[:, k] < edges[b + 1]) | ((b == 6) & (p[:, k] <= 1)))
            if inside.any():
                total += inside.sum().item() / 200 * abs(labels[inside, k].mean().item() - p[inside, k].mean().item())
        assert float(got[k]) == pytest.approx(total, rel=1e-12)
    assert float(first_order.calibration_error(torch.full((4, 1), 0.5), torch.tensor([[0.], [1.], [1.], [0.]]))[0]) == 0
    with pytest.raises(ValueError, match="logits"):
        first_order.calibration_error(p * 3 - 1, labels)


def test_rank_agreement_is_spearman_per_checkpoint():
    rng = np.random.default_rng(0)
    a = rng.random((3, 40))
    b = np.stack([a[0] ** 3, -a[1], rng.random(40)])
    rho = first_order.rank_agreement(a, b)
    assert rho.shape == (3,)
    assert rho[0] == pytest.approx(1) and rho[1] == pytest.approx(-1)
    assert rho[2] == pytest.approx(scipy.stats.spearmanr(a[2], b[2]).statistic)


def test_bracket_residual_finds_outputs_the_gradient_does_not_predict():
    rng = np.random.default_rng(1)
    jg = 10 ** rng.uniform(-3, 0, 40)
    planted = np.zeros(40)
    planted[[7, 11]] = -0.8  # two outputs (say the hair colours) smaller than the gradient predicts
    bracket = 5 * jg * 10 ** (planted + 0.02 * rng.normal(size=40))
    fit = first_order.bracket_residual(bracket, jg)
    line = scipy.stats.linregress(np.log10(jg), np.log10(bracket))
    assert fit.slope == pytest.approx(line.slope) and fit.r_squared == pytest.approx(line.rvalue ** 2)
    assert set(np.argsort(fit.residual)[:2]) == {7, 11}


def test_third_example_null_pairs_each_third_example_with_the_pairs_geometric_mean():
    rng = np.random.default_rng(2)
    g = 10 ** rng.normal(size=(2, 5, 6))  # [checkpoints, examples, tensors]
    pairs = BracketMatrix(5).pairs
    x, y = rms_law.third_example_null(g, pairs)
    assert x.shape == y.shape == (2, len(pairs), 3, 6)
    for c in range(2):
        for p, (i, j) in enumerate(pairs):
            for t, k in enumerate(k for k in range(5) if k not in (i, j)):
                np.testing.assert_allclose(x[c, p, t], np.sqrt(g[c, i] * g[c, j]))
                np.testing.assert_array_equal(y[c, p, t], g[c, k])


def test_within_tensor_demeans_logs_per_tensor_and_drops_zeros():
    x = np.array([1.0, 10.0, 100.0, 1000.0, 0.0])
    y = np.array([2.0, 20.0, 5.0, 50.0, 3.0])
    lx, ly = rms_law.within_tensor(x, y, [0, 0, 1, 1, 1])
    np.testing.assert_allclose(lx, [-0.5, 0.5, -0.5, 0.5])
    np.testing.assert_allclose(ly, [-0.5, 0.5, -0.5, 0.5])


def noisy_line(rng, groups=15, tensors=20, slope=1.0, noise=0.5, offsets=None):
    """Values [groups, tensors] with log10 y = slope · t, log10 x = t + noise and log10 y + noise, t ~ N(0, 1)."""
    t = rng.normal(size=(groups, tensors))
    shift = 0 if offsets is None else offsets
    return 10 ** (t + shift + noise * rng.normal(size=t.shape)), 10 ** (slope * t + shift + noise * rng.normal(size=t.shape))


def test_noise_in_x_attenuates_least_squares_but_not_rma_or_tls():
    x, y = noisy_line(np.random.default_rng(3), groups=40, tensors=50)  # OLS expects 1 / (1 + 0.5²) = 0.8
    ols, rma, tls = (rms_law.slope_fit(x, y, method=m, n_resamples=199) for m in ("ols", "rma", "tls"))
    assert ols.slope < 0.85 and ols.high < 0.9
    for fit in (rma, tls):
        assert fit.slope == pytest.approx(1, abs=0.05) and fit.low < 1 < fit.high
    assert rma.interval == "BCa over groups" and rma.n_groups == 40 and rma.n_points == 2000


def test_within_tensor_fit_removes_the_shared_per_tensor_scale():
    rng = np.random.default_rng(4)
    offsets = 3 * rng.normal(size=20)  # per-tensor scale shared by x and y: slope 1 across tensors
    x, y = noisy_line(rng, slope=1.6, noise=0.1, offsets=offsets)
    assert rms_law.slope_fit(x, y, method="rma").slope == pytest.approx(1, abs=0.15)
    assert rms_law.slope_fit(x, y, within=True, method="rma").slope == pytest.approx(1.6, abs=0.1)


def test_bootstrap_interval_over_pairs_covers_the_true_slope():
    """200 simulated checkpoints of 15 pairs: the 95% BCa interval of the RMA slope should cover 1 in
    88-99% of them (a binomial 95% has standard deviation 1.5%; a bootstrap over 15 groups may under-cover a little)."""
    rng = np.random.default_rng(5)
    covered = 0
    for replicate in range(200):
        x, y = noisy_line(rng, groups=15, tensors=10, noise=0.3)
        fit = rms_law.slope_fit(x, y, method="rma", n_resamples=299, seed=replicate)
        covered += fit.low <= 1 <= fit.high
    assert 0.88 <= covered / 200 <= 0.99, covered


def synthetic_records(planted: float, seed: int = 0, n_steps: int = 4, outputs: int = 12):
    """Records whose bracket magnitude per output is J·g's times noise, and `planted`× more for output 0."""
    from lie_helpers.analysis.records import RunBrackets
    from lie_helpers.analysis.rms_law import paired_gradient_rms
    g = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    scale = torch.exp(torch.randn(outputs, generator=g))
    jg = torch.randn(n_steps, 4, 8, outputs, generator=g).abs() * scale
    noise = torch.exp(0.1 * torch.randn(n_steps, len(pairs), 8, outputs, generator=g))
    bracket = jg[:, :1].mean(1, keepdim=True) * noise * scale.mean()
    bracket[..., 0] *= planted
    gradient_rms = torch.exp(torch.randn(n_steps, 4, 5, generator=g)) * torch.logspace(-3, 0, 5)
    bracket_rms = torch.stack([paired_gradient_rms(r, pairs) for r in gradient_rms]) * 3
    gram = torch.eye(outputs, dtype=torch.float64).expand(n_steps, outputs, outputs).clone()
    return RunBrackets(steps=[50 * (k + 1) for k in range(n_steps)], tensor_names=[f"t{k}" for k in range(5)],
                       pairs=pairs, bracket_rms=bracket_rms, gradient_rms=gradient_rms, logit_perturbation=bracket,
                       batch_logits=torch.randn(n_steps, 8, outputs, generator=g), seconds=[1.0] * n_steps,
                       gradient_pushforward=jg, attribute_loss=torch.rand(n_steps, outputs, generator=g),
                       attribute_gradient_gram=gram, ggn_trace=torch.rand(n_steps, outputs, generator=g),
                       batch_targets=(torch.rand(n_steps, 8, outputs, generator=g) > 0.5).float())


def test_a_planted_bracket_excess_is_told_from_a_gradient_finding():
    names = [f"a{k}" for k in range(12)]
    plain = first_order.compare_with_first_order(synthetic_records(1.0), names, ("a0",))
    assert np.all(plain.rho["J·g (first order)"] > 0.8), plain.rho
    assert "a bracket finding" not in first_order.describe_first_order(plain, names)
    below = first_order.compare_with_first_order(synthetic_records(1 / 30), names, ("a0",))
    assert "below the first-order prediction" in first_order.describe_first_order(below, names)
    planted = first_order.compare_with_first_order(synthetic_records(30.0), names, ("a0",))
    assert np.all(planted.residual_rank[:, 0] == 1) and np.all(planted.bracket_rank[:, 0] == 1)
    assert "a bracket finding: it stands out beyond what J·g predicts" in first_order.describe_first_order(planted, names)
    # The rank agreement is scipy's Spearman on the same magnitudes.
    from lie_helpers.analysis.summaries import attribute_magnitude
    records = synthetic_records(1.0)
    expected = scipy.stats.spearmanr(attribute_magnitude(records.logit_perturbation)[1],
                                     attribute_magnitude(records.gradient_pushforward)[1]).statistic
    assert plain.rho["J·g (first order)"][1] == pytest.approx(expected)


def test_rms_null_tells_a_within_tensor_law_from_shared_scale():
    """Brackets exactly proportional to their pair's gradients: r = 1 within tensors, the null much lower."""
    records = synthetic_records(1.0)
    fits = rms_law.rms_law_with_null(records, [0, 1])
    for fit in fits.values():
        assert fit.within.r == pytest.approx(1.0) and fit.bracket.slope == pytest.approx(1.0)
        assert fit.within_p < 0.05 and fit.within_null_r < 0.3
    assert "a pair whose gradients are larger on a tensor has a larger bracket" in rms_law.describe_rms_null(fits)


PAIRS6 = [(i, j) for i in range(6) for j in range(i + 1, 6)]


def example_level(rng, tensors=10, related=False):
    """x, y [15 pairs, tensors] built from six examples: x the pair's geometric-mean gradient RMS, y from
    the pair's own per-example values (related) or from independent ones; the tensor scale shared."""
    scale = np.linspace(-3, 0, tensors)
    b, a = rng.normal(0, 0.5, (6, tensors)), rng.normal(0, 0.5, (6, tensors))
    own = b if related else a
    lx = np.array([scale + (b[i] + b[j]) / 2 for i, j in PAIRS6])
    ly = np.array([scale + (own[i] + own[j]) / 2 for i, j in PAIRS6]) + rng.normal(0, 0.1, (15, tensors))
    return 10 ** lx, 10 ** ly


def test_the_example_permutation_null_holds_its_level_and_finds_a_relation():
    """Unrelated within tensors: rejections at 5% stay near 5% (shuffling pairs freely gave 13%); related: found."""
    rng = np.random.default_rng(0)
    rejections = sum(rms_law.within_tensor_permutation(*example_level(rng), PAIRS6)[0] < 0.05 for _ in range(40))
    assert rejections <= 5, rejections            # 40 × 5% = 2 expected; P(more than 5) < 2% under the null
    p, null_r = rms_law.within_tensor_permutation(*example_level(rng, related=True), PAIRS6)
    assert p < 0.01 and abs(null_r) < 0.15


def test_the_jackknife_over_examples_covers_at_its_level():
    """Six examples whose brackets carry example-level noise (y = x · e_i e_j): the 95% interval covers the
    population RMA slope in 88-100% of 150 draws (resampling the 15 pairs instead covered about 46%)."""
    rng = np.random.default_rng(1)
    scale = np.linspace(-3, 0, 10)
    truth = np.sqrt((np.var(scale) + 0.125 + 0.125 + 0.01) / (np.var(scale) + 0.125))
    covered = 0
    for _ in range(150):
        b, a = rng.normal(0, 0.5, (6, 10)), rng.normal(0, 0.5, (6, 10))
        lx = np.array([scale + (b[i] + b[j]) / 2 for i, j in PAIRS6])
        ly = lx + np.array([(a[i] + a[j]) / 2 for i, j in PAIRS6]) + rng.normal(0, 0.1, (15, 10))
        fit = rms_law.slope_fit(10 ** lx, 10 ** ly, method="rma", pairs=PAIRS6)
        covered += fit.low <= truth <= fit.high
    assert fit.interval == "jackknife-t over examples"
    assert 0.88 <= covered / 150 <= 1.0, covered


def test_the_third_example_null_is_anti_correlated_within_tensors():
    """r = −1/√10 whatever the data: no within-tensor null (the permutation test is)."""
    g = np.random.default_rng(0)
    gradient_rms = np.exp(g.normal(size=(6, 20)))
    nx, ny = rms_law.third_example_null(gradient_rms, PAIRS6)
    ids = np.broadcast_to(np.arange(20), nx.shape)
    assert np.corrcoef(*rms_law.within_tensor(nx, ny, ids))[0, 1] == pytest.approx(-1 / np.sqrt(10))


def test_records_without_baselines_are_refused():
    records = synthetic_records(1.0)
    records.gradient_pushforward = None
    with pytest.raises(ValueError, match="rerun the bracket analysis"):
        first_order.compare_with_first_order(records, [f"a{k}" for k in range(12)], ("a0",))


def test_the_first_order_figure_draws_every_baseline():
    import matplotlib
    matplotlib.use("Agg")
    from lie_helpers.figures import brackets as bracket_figures
    records, names = synthetic_records(1.0), [f"a{k}" for k in range(12)]
    comparison = first_order.compare_with_first_order(records, names, ("a0", "a1"))
    fig = bracket_figures.plot_first_order(comparison, rms_law.rms_law_with_null(records, [0, 1]))
    left, middle, right = fig.axes
    assert len(left.get_lines()) >= len(comparison.rho) and len(middle.get_lines()) >= 6
    assert [t.get_text() for t in right.get_xticklabels()] == ["50", "100"]
