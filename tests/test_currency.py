"""One currency for every loss's outputs (lie_helpers.analysis.currency), against autograd."""
import pytest
import torch
from torch.func import jvp

from lie_helpers.analysis import currency
from lie_helpers.training.losses import HAIR_INDEX, OTHER_INDEX, get_loss

torch.set_num_threads(1)
DTYPE = torch.float64


def random_logits(*shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=DTYPE), torch.randn(*shape, generator=g, dtype=DTYPE)


def log_odds(z):
    """log p_k/(1 − p_k) of softmax(z) = z_k − logsumexp_{j≠k} z_j, for autograd."""
    k = z.shape[-1]
    others = z.unsqueeze(-2).expand(*z.shape[:-1], k, k).masked_fill(torch.eye(k, dtype=torch.bool), float("-inf"))
    return z - others.logsumexp(-1)


# ----------------------------------------------------------------------------- comparable outputs

def test_log_softmax_pushforward_is_the_jvp_of_log_softmax():
    z, dz = random_logits(4, 3, 5)
    expected = jvp(lambda t: t.log_softmax(-1), (z,), (dz,))[1]
    torch.testing.assert_close(currency.log_softmax_pushforward(dz, z), expected, rtol=1e-12, atol=1e-12)


def test_log_odds_pushforward_is_the_jvp_of_the_log_odds_even_when_confident():
    z, dz = random_logits(4, 3, 5)
    z[0, 0, 2] = 40.0                      # p ≈ 1 − 1e-17: dividing d log p by 1 − p would fail here
    expected = jvp(log_odds, (z,), (dz,))[1]
    torch.testing.assert_close(currency.log_odds_pushforward(dz, z), expected, rtol=1e-12, atol=1e-12)
    moderate = z[1:]
    p = moderate.softmax(-1)
    torch.testing.assert_close(currency.log_odds_pushforward(dz[1:], moderate),
                               currency.log_softmax_pushforward(dz[1:], moderate) / (1 - p), rtol=1e-10, atol=1e-12)


def test_attribute_log_odds():
    z = random_logits(3, 41)[0]
    scores = currency.attribute_log_odds("categorical_hair_matched", z)
    torch.testing.assert_close(scores, categorical_attribute_scores(z, "log_odds"))
    p = z[:, 36:].softmax(-1)
    torch.testing.assert_close(scores[:, HAIR_INDEX], (p / (1 - p)).log()[:, :4])
    assert torch.equal(currency.attribute_log_odds("independent", z[:, :40]), z[:, :40])


def test_a_shared_shift_of_the_softmax_logits_changes_nothing():
    z, dz = random_logits(6, 5)
    shifted = dz + torch.randn(6, 1, dtype=DTYPE)
    for pushforward in (currency.log_softmax_pushforward, currency.log_odds_pushforward):
        torch.testing.assert_close(pushforward(shifted, z), pushforward(dz, z), rtol=1e-12, atol=1e-12)


def categorical_attribute_scores(z, scale):
    """The 40 attributes' log-odds (or log-probabilities) of the categorical-hair model, for autograd."""
    n = len(OTHER_INDEX)
    out = torch.zeros(*z.shape[:-1], 40, dtype=z.dtype)
    out[..., OTHER_INDEX] = z[..., :n] if scale == "log_odds" else torch.nn.functional.logsigmoid(z[..., :n])
    hair = log_odds(z[..., n:]) if scale == "log_odds" else z[..., n:].log_softmax(-1)
    out[..., HAIR_INDEX] = hair[..., :4]
    return out


@pytest.mark.parametrize("scale", ["log_odds", "log_prob"])
def test_attribute_perturbations_match_autograd(scale):
    z, dz = random_logits(3, 41)
    torch.testing.assert_close(currency.attribute_perturbations("categorical_hair_matched", dz, z, scale),
                               jvp(lambda t: categorical_attribute_scores(t, scale), (z,), (dz,))[1],
                               rtol=1e-12, atol=1e-12)
    z, dz = random_logits(3, 40)
    binary = (lambda t: t) if scale == "log_odds" else torch.nn.functional.logsigmoid
    torch.testing.assert_close(currency.attribute_perturbations("independent", dz, z, scale),
                               jvp(binary, (z,), (dz,))[1], rtol=1e-12, atol=1e-12)


def makeup_attribute_probabilities(z):
    """p(attribute present) [..., 40] of the exclusive_makeup control, written out: σ for 38, softmax for 2."""
    loss_fn = get_loss("exclusive_makeup")
    out = torch.zeros(*z.shape[:-1], 40, dtype=z.dtype)
    out[..., loss_fn.binary_index] = torch.sigmoid(z[..., :38])
    out[..., loss_fn.group_index[0]] = z[..., 38:].softmax(-1)[..., :2]
    return out


def test_softmax_groups_of_any_loss_map_to_their_attributes():
    z, dz = random_logits(3, 41)
    p = makeup_attribute_probabilities(z)
    torch.testing.assert_close(currency.attribute_log_odds("exclusive_makeup", z), (p / (1 - p)).log())
    for scale, score in (("log_odds", lambda t: torch.logit(makeup_attribute_probabilities(t))),
                         ("log_prob", lambda t: makeup_attribute_probabilities(t).log())):
        torch.testing.assert_close(currency.attribute_perturbations("exclusive_makeup", dz, z, scale),
                                   jvp(score, (z,), (dz,))[1], rtol=1e-10, atol=1e-10)


def bernoulli_kl(p, q):
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


@pytest.mark.parametrize("loss, n_outputs", [("independent", 40), ("categorical_hair_matched", 41), ("exclusive_makeup", 41)])
def test_fisher_scale_is_the_root_of_twice_the_kl_of_each_attribute(loss, n_outputs):
    """|fisher| = √(2 KL(p_k ‖ p_k + dp_k)) to first order in the step, for sigmoid and softmax outputs alike."""
    z, dz = random_logits(4, n_outputs, scale=1.5)
    probability = lambda t: torch.sigmoid(currency.attribute_log_odds(loss, t))       # noqa: E731
    fisher = currency.attribute_perturbations(loss, dz, z, "fisher")
    for eps in (1e-4, 1e-5):
        p, q = probability(z), probability(z + eps * dz)
        kl_root = (2 * bernoulli_kl(p, q)).sqrt() * torch.sign(q - p) / eps
        torch.testing.assert_close(fisher, kl_root, rtol=30 * eps, atol=30 * eps)


def test_fisher_scale_ignores_a_shared_shift_of_a_softmax_group():
    z, dz = random_logits(5, 41)
    for loss in ("categorical_hair_matched", "exclusive_makeup"):
        group = get_loss(loss).group_slices()[0]
        shift = torch.zeros(5, 41, dtype=DTYPE)
        shift[:, group] = torch.randn(5, 1, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
        base = currency.attribute_perturbations(loss, dz, z, "fisher")
        torch.testing.assert_close(currency.attribute_perturbations(loss, dz + shift, z, "fisher"), base, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(currency.attribute_perturbations(loss, dz, z + 7 * shift, "fisher"), base,
                                   rtol=1e-10, atol=1e-12)
    assert currency.PERTURBATION_SCALES[0] == "fisher"


def test_attribute_perturbations_broadcast_logits_over_pairs_and_check_names():
    z, dz = random_logits(2, 1, 4, 41)[0], random_logits(2, 3, 4, 41)[1]
    out = currency.attribute_perturbations("categorical_hair_matched", dz, z)
    assert out.shape == (2, 3, 4, 40)
    torch.testing.assert_close(out[:, 1], currency.attribute_perturbations("categorical_hair_matched", dz[:, 1], z[:, 0]))
    with pytest.raises(ValueError, match="scale"):
        currency.attribute_perturbations("independent", dz, z, "logits")
    with pytest.raises(ValueError, match="Unknown loss"):
        currency.attribute_perturbations("mse", dz, z)


# ----------------------------------------------------------------------------- summaries

def test_attribute_magnitudes_rms_over_batch_median_over_pairs():
    p = torch.zeros(1, 3, 2, 40, dtype=DTYPE)
    p[0, :, 0, 0] = torch.tensor([3.0, 30.0, 300.0])      # pair k: RMS over the batch = value / √2
    p[0, :, 1, 1] = 4.0
    magnitudes = currency.attribute_magnitudes(p)
    assert magnitudes.shape == (1, 40)
    assert magnitudes[0, 0].item() == pytest.approx(30 / 2 ** 0.5)     # the extreme pair does not count
    assert magnitudes[0, 1].item() == pytest.approx(4 / 2 ** 0.5)
    assert magnitudes[0, 2].item() == 0
