"""Known-answer controls on a tiny float64 model: the dose's exact slopes, residuals held fixed under the
curvature manipulation, and the study's old relative-share readout computed by hand."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lie_helpers as lh
from lie_helpers.analysis import controls as C
from lie_helpers.data.attributes import ATTRIBUTES
from lie_helpers.engine.brackets import bracket_mode
from lie_helpers.training.losses import IndependentBCE

DTYPE = torch.float64
ROUND_OFF = 1e-9


def tiny_net(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Mish(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.Mish(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 40)).to(DTYPE)
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 6, 6, dtype=DTYPE))
    return model.eval()


def setup(n=3, m=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 6, 6, generator=g, dtype=DTYPE)
    y = (torch.rand(n, 40, generator=g) > 0.5).to(DTYPE)
    batch = torch.randn(m, 3, 6, 6, generator=g, dtype=DTYPE)
    return tiny_net(), IndependentBCE(), x, y, batch


def test_weighted_loss_multiplies_one_term():
    model, loss_fn, x, y, _ = setup()
    logits = model(x).detach()
    k = ATTRIBUTES.index("Eyeglasses")
    weighted = C.WeightedLoss(loss_fn, {"Eyeglasses": 4.0}, 40)
    term_k = F.binary_cross_entropy_with_logits(logits[:, k], y[:, k], reduction="sum") / logits.numel()
    assert float(weighted(logits, y)) == pytest.approx(float(loss_fn(logits, y) + 3 * term_k), rel=1e-14)
    assert float(C.WeightedLoss(loss_fn, {}, 40)(logits, y)) == pytest.approx(float(loss_fn(logits, y)), rel=1e-14)


def old_readout_by_hand(model, loss_fn, x, y, batch, attribute, w):
    """The study's relative share of `attribute`, from lie_bracket and pushforward, Fisher scale by its formula."""
    weighted = C.WeightedLoss(loss_fn, {attribute: w}, 40)
    pairs = lh.BracketMatrix(x.shape[0]).pairs
    d = torch.stack([lh.pushforward(model, batch, lh.lie_bracket(model, weighted, (x[i:i + 1], y[i:i + 1]),
                                                                  (x[j:j + 1], y[j:j + 1]))) for i, j in pairs])
    with torch.no_grad():
        p = torch.sigmoid(model(batch))
    fisher = d * (p * (1 - p)).sqrt()
    magnitude = fisher.pow(2).mean(dim=1).sqrt().median(dim=0).values.log10().numpy()   # RMS over batch, median over pairs
    relative = magnitude - np.median(magnitude)
    return relative[ATTRIBUTES.index(attribute)]


def test_the_dose_gives_the_known_slopes_exactly_and_the_old_readout_is_the_studys():
    model, loss_fn, x, y, batch = setup()
    result = C.loss_weight_dose(model, loss_fn, x, y, batch, "Eyeglasses")
    r = result.readouts
    assert result.weights == (1.0, 2.0, 4.0, 8.0)
    for own in ("", ", on attribute k"):
        assert r["source bracket, self part D_k" + own].slope == pytest.approx(2.0, abs=ROUND_OFF)
        assert r["J·g, source k" + own].slope == pytest.approx(1.0, abs=ROUND_OFF)
        for key in ("source bracket, self part D_k" + own, "J·g, source k" + own):   # exact powers at every step
            v = r[key].values
            assert np.diff(v) == pytest.approx(r[key].expected_slope * np.log10(2.0) * np.ones(3), abs=ROUND_OFF)
            assert r[key].passed
        source = r["source bracket, source part S_k" + own]
        assert source.max_curve_error < ROUND_OFF and source.passed
        assert 1.0 < source.slope < 2.0                                     # a mixture of w and w², as predicted
    for w_index, w in ((0, 1.0), (3, 8.0)):
        assert r["old relative share, bracket"].values[w_index] == pytest.approx(
            old_readout_by_hand(model, loss_fn, x, y, batch, "Eyeglasses", w), abs=1e-10)
    assert r["old relative share, bracket"].expected_slope == 2.0
    assert r["old relative share, J·g"].expected_slope == 1.0
    rows = result.table()
    assert [row["readout"] for row in rows] == list(r)
    with pytest.raises(ValueError, match="start at 1"):
        C.loss_weight_dose(model, loss_fn, x, y, batch, "Eyeglasses", weights=(2, 4))


def test_readout_passes_and_log_slope():
    assert C.log_slope([1, 10, 100], [0.0, 2.0, 4.0]) == pytest.approx(2.0)
    assert C.readout_passes(1.8, 2.0, 0.3) and not C.readout_passes(0.05, 2.0, 0.3)
    assert not C.readout_passes(float("nan"), 2.0, 0.3)


def test_temperature_targets_keep_the_residual_and_change_the_curvature():
    z = torch.linspace(-4, 4, 9, dtype=DTYPE)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=DTYPE)
    for tau in (0.5, 2.0, 4.0):
        target = C.temperature_targets(z, y, tau)
        zz = z.clone().requires_grad_(True)
        term = tau * F.binary_cross_entropy_with_logits(zz / tau, target, reduction="sum")
        (g,) = torch.autograd.grad(term, zz, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), zz)
        assert torch.allclose(g, torch.sigmoid(z) - y, atol=1e-15)                  # residual σ(z) − y held
        p = torch.sigmoid(z / tau)
        assert torch.allclose(h, p * (1 - p) / tau, atol=1e-15)                     # curvature σ'(z/τ)/τ


def test_curvature_control_holds_residuals_and_gradients_and_moves_only_brackets():
    model, loss_fn, x, y, batch = setup()
    result = C.curvature_control(model, loss_fn, x, y, batch, "Eyeglasses")
    assert max(result.residual_change) < 1e-16                                      # residuals: held exactly
    for key in ("J·g, all sources", "J·g, source k", "old relative share, J·g"):
        assert np.abs(result.log10_ratio[key]).max() < 1e-12                        # J·g: unchanged
    assert max(result.prediction_error) < 1e-9                                      # bracket: the closed form
    assert np.abs(result.log10_ratio["whole bracket"]).max() > 1e-4                 # ... and it does move
    assert np.abs(result.log10_ratio["source bracket, self part D_k"]).max() > 1e-2
    k = ATTRIBUTES.index("Eyeglasses")
    with torch.no_grad():
        z = model(x)[:, k]
    for tau, factor in zip(result.taus, result.curvature_factor):
        p, q = torch.sigmoid(z / tau), torch.sigmoid(z)
        assert np.allclose(factor, (p * (1 - p) / tau / (q * (1 - q))).numpy(), rtol=1e-12)


def test_tempered_loss_equals_the_base_loss_at_temperature_one():
    model, loss_fn, x, y, _ = setup()
    with torch.no_grad():
        logits = model(x)
    adjusted = C.tempered_targets(model, loss_fn, x, y, "Eyeglasses", 1.0)
    assert torch.allclose(adjusted, y, atol=1e-15)
    assert float(C.TemperedLoss(loss_fn, "Eyeglasses", 1.0, 40)(logits, adjusted)) == pytest.approx(
        float(loss_fn(logits, y)), rel=1e-14)


def test_mean_abs_residual_flip_labels_and_monotone():
    model, loss_fn, x, y, _ = setup(n=10)
    k = ATTRIBUTES.index("Eyeglasses")
    with bracket_mode(model), torch.no_grad():
        expected = (torch.sigmoid(model(x)[:, k]) - y[:, k]).abs().mean().item()
    assert C.mean_abs_residual(model, loss_fn, x, y, "Eyeglasses", batch_size=3) == pytest.approx(expected, rel=1e-14)
    many = torch.zeros(20000, 40)
    flipped = C.flip_labels(many, "Eyeglasses", 0.2, seed=0)
    assert flipped[:, k].mean().item() == pytest.approx(0.2, abs=0.01)
    assert flipped[:, :k].abs().sum() == 0 and torch.equal(C.flip_labels(many, "Eyeglasses", 0.0), many)
    assert C.monotone([0.1, 0.2, 0.3]) and not C.monotone([0.1, 0.3, 0.2]) and C.monotone([3, 2], increasing=False)
