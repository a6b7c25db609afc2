"""The two-loss experiment: comparable outputs (against autograd), summaries, runs, verdict."""
import json

import numpy as np
import pytest
import scipy.stats
import torch
from torch.func import jvp

from lie_helpers import celeba, hypothesis as hyp
from lie_helpers.analysis import load_run_brackets
from lie_helpers.attributes import ATTRIBUTES
from lie_helpers.config import get_profile, run_paths
from lie_helpers.losses import HAIR_INDEX, OTHER_INDEX, get_loss
from lie_helpers.train import list_checkpoints, load_checkpoint, train

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
    torch.testing.assert_close(hyp.log_softmax_pushforward(dz, z), expected, rtol=1e-12, atol=1e-12)


def test_log_odds_pushforward_is_the_jvp_of_the_log_odds_even_when_confident():
    z, dz = random_logits(4, 3, 5)
    z[0, 0, 2] = 40.0                      # p ≈ 1 − 1e-17: dividing d log p by 1 − p would fail here
    expected = jvp(log_odds, (z,), (dz,))[1]
    torch.testing.assert_close(hyp.log_odds_pushforward(dz, z), expected, rtol=1e-12, atol=1e-12)
    moderate = z[1:]
    p = moderate.softmax(-1)
    torch.testing.assert_close(hyp.log_odds_pushforward(dz[1:], moderate),
                               hyp.log_softmax_pushforward(dz[1:], moderate) / (1 - p), rtol=1e-10, atol=1e-12)


def test_attribute_log_odds():
    z = random_logits(3, 41)[0]
    scores = hyp.attribute_log_odds("categorical_hair_matched", z)
    torch.testing.assert_close(scores, categorical_attribute_scores(z, "log_odds"))
    p = z[:, 36:].softmax(-1)
    torch.testing.assert_close(scores[:, HAIR_INDEX], (p / (1 - p)).log()[:, :4])
    assert torch.equal(hyp.attribute_log_odds("independent", z[:, :40]), z[:, :40])


def test_a_shared_shift_of_the_softmax_logits_changes_nothing():
    z, dz = random_logits(6, 5)
    shifted = dz + torch.randn(6, 1, dtype=DTYPE)
    for pushforward in (hyp.log_softmax_pushforward, hyp.log_odds_pushforward):
        torch.testing.assert_close(pushforward(shifted, z), pushforward(dz, z), rtol=1e-12, atol=1e-12)
    assert hyp.common_mode_fraction(torch.ones(2, 5, dtype=DTYPE)).tolist() == [1.0, 1.0]
    assert hyp.common_mode_fraction(torch.tensor([[1.0, -1.0, 0, 0, 0]], dtype=DTYPE)).item() == 0.0


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
    torch.testing.assert_close(hyp.attribute_perturbations("categorical_hair_matched", dz, z, scale),
                               jvp(lambda t: categorical_attribute_scores(t, scale), (z,), (dz,))[1],
                               rtol=1e-12, atol=1e-12)
    z, dz = random_logits(3, 40)
    binary = (lambda t: t) if scale == "log_odds" else torch.nn.functional.logsigmoid
    torch.testing.assert_close(hyp.attribute_perturbations("independent", dz, z, scale),
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
    torch.testing.assert_close(hyp.attribute_log_odds("exclusive_makeup", z), (p / (1 - p)).log())
    for scale, score in (("log_odds", lambda t: torch.logit(makeup_attribute_probabilities(t))),
                         ("log_prob", lambda t: makeup_attribute_probabilities(t).log())):
        torch.testing.assert_close(hyp.attribute_perturbations("exclusive_makeup", dz, z, scale),
                                   jvp(score, (z,), (dz,))[1], rtol=1e-10, atol=1e-10)


def bernoulli_kl(p, q):
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


@pytest.mark.parametrize("loss, n_outputs", [("independent", 40), ("categorical_hair_matched", 41), ("exclusive_makeup", 41)])
def test_fisher_scale_is_the_root_of_twice_the_kl_of_each_attribute(loss, n_outputs):
    """|fisher| = √(2 KL(p_k ‖ p_k + dp_k)) to first order in the step, for sigmoid and softmax outputs alike."""
    z, dz = random_logits(4, n_outputs, scale=1.5)
    probability = lambda t: torch.sigmoid(hyp.attribute_log_odds(loss, t))       # noqa: E731
    fisher = hyp.attribute_perturbations(loss, dz, z, "fisher")
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
        base = hyp.attribute_perturbations(loss, dz, z, "fisher")
        torch.testing.assert_close(hyp.attribute_perturbations(loss, dz + shift, z, "fisher"), base, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hyp.attribute_perturbations(loss, dz, z + 7 * shift, "fisher"), base,
                                   rtol=1e-10, atol=1e-12)
    assert hyp.SCALES[0] == "fisher"


def test_attribute_perturbations_broadcast_logits_over_pairs_and_check_names():
    z, dz = random_logits(2, 1, 4, 41)[0], random_logits(2, 3, 4, 41)[1]
    out = hyp.attribute_perturbations("categorical_hair_matched", dz, z)
    assert out.shape == (2, 3, 4, 40)
    torch.testing.assert_close(out[:, 1], hyp.attribute_perturbations("categorical_hair_matched", dz[:, 1], z[:, 0]))
    with pytest.raises(ValueError, match="scale"):
        hyp.attribute_perturbations("independent", dz, z, "logits")
    with pytest.raises(ValueError, match="Unknown loss"):
        hyp.attribute_perturbations("mse", dz, z)


# ----------------------------------------------------------------------------- summaries

def test_attribute_magnitudes_rms_over_batch_median_over_pairs():
    p = torch.zeros(1, 3, 2, 40, dtype=DTYPE)
    p[0, :, 0, 0] = torch.tensor([3.0, 30.0, 300.0])      # pair k: RMS over the batch = value / √2
    p[0, :, 1, 1] = 4.0
    magnitudes = hyp.attribute_magnitudes(p)
    assert magnitudes.shape == (1, 40)
    assert magnitudes[0, 0].item() == pytest.approx(30 / 2 ** 0.5)     # the extreme pair does not count
    assert magnitudes[0, 1].item() == pytest.approx(4 / 2 ** 0.5)
    assert magnitudes[0, 2].item() == 0


def test_auroc_against_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 40)).round(1)            # rounding makes ties
    positive = hyp.attribute_mask(hyp.HAIR_PAIR)
    for row, got in zip(scores, hyp.auroc(scores, positive)):
        pairs = [(p > n) + 0.5 * (p == n) for p in row[positive] for n in row[~positive]]
        assert got == pytest.approx(np.mean(pairs))
    top = np.where(positive, 10.0, 0.0)
    assert hyp.auroc(top, positive) == 1 and hyp.auroc(-top, positive) == 0
    assert hyp.auroc(np.zeros(40), positive) == 0.5


def test_hair_vs_controls_is_a_log_ratio_to_the_median_control():
    log_m = np.zeros(40)
    log_m[hyp.attribute_mask(hyp.HAIR_PAIR)] = [2.0, 4.0]            # geometric mean: 10^3
    log_m[hyp.attribute_mask(hyp.CONTROLS)] = [0.0, 1.0, 5.0]        # median: 10^1
    assert hyp.hair_vs_controls(log_m) == pytest.approx(2.0)
    assert hyp.hair_vs_controls(np.stack([log_m, log_m - 1])).tolist() == pytest.approx([2.0, 2.0])


def test_summary_is_a_t_interval_of_seed_means_paired_by_seed():
    rng = np.random.default_rng(0)
    tables = {q: {loss: rng.normal(size=(4, 3)) for loss in hyp.LOSS_NAMES} for q in hyp.QUANTITIES}
    rows = hyp.Comparison([0, 1, 2, 3], [0, 10, 20], tables).summary()
    a, b = (tables["effect"][loss].mean(1) for loss in hyp.LOSS_NAMES)
    d = a - b
    half = scipy.stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert rows["effect difference"] == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    assert rows["effect independent"][0] == pytest.approx(a.mean())


def test_group_aurocs_average_over_seeds_and_late_checkpoints():
    log_m = np.zeros((2, 40))
    log_m[:, hyp.attribute_mask(hyp.HAIR_PAIR)] = 1.0          # hair on top at both checkpoints
    log_m[1, hyp.attribute_mask([hyp.NOISE_CONTROL])] = 2.0     # noise on top only at the late one
    runs = [hyp.RunMagnitudes(loss, seed, [0, 10], log_m, float("nan")) for loss in hyp.LOSS_NAMES for seed in (0, 1)]
    groups = {"hair": list(hyp.HAIR_PAIR), "noise": [hyp.NOISE_CONTROL], "empty": []}
    late = hyp.group_aurocs(runs, groups, from_step=5)
    assert set(late) == {"hair", "noise"}
    assert late["noise"] == {"independent": 1.0, "categorical_hair_matched": 1.0}
    assert late["hair"]["independent"] == pytest.approx(37 / 38)               # beaten only by noise
    assert hyp.group_aurocs(runs, groups)["noise"]["independent"] == pytest.approx((0.5 * 37 / 39 + 1) / 2)


def test_relative_log_magnitudes_subtract_the_median_attribute():
    log_m = np.zeros((3, 40))
    log_m[:, 0] = [5.0, 1.0, 2.0]
    log_m[2] += 7                                    # a whole checkpoint ten million times larger: no effect
    m = hyp.RunMagnitudes("independent", 0, [0, 10, 20], log_m, float("nan"))
    rel = hyp.relative_log_magnitudes(m, from_step=10)
    assert rel[0] == pytest.approx(1.5) and np.all(rel[1:] == 0)


def test_ambiguity_contrast_compares_the_confusable_with_the_unconfusable_hair_colours():
    log_m = np.zeros(40)
    log_m[hyp.attribute_mask(hyp.HAIR_PAIR)] = [2.0, 4.0]
    log_m[hyp.attribute_mask(hyp.UNAMBIGUOUS_HAIR)] = [1.0, 1.0]
    assert hyp.ambiguity_contrast(log_m) == pytest.approx(2.0)


def summary(effect_a, difference, ambiguity_a=(0.0, -0.1, 0.1)):
    rows = {f"{q} {k}": (0.0, -0.1, 0.1) for q in hyp.QUANTITIES for k in (*hyp.LOSS_NAMES, "difference")}
    rows.update({"effect independent": effect_a, "effect difference": difference, "ambiguity independent": ambiguity_a,
                 "auroc independent": (0.9, 0.8, 1.0)})
    return rows


def test_verdict_follows_the_intervals():
    supported = hyp.verdict({"fisher": summary((1.0, 0.5, 1.5), (1.0, 0.4, 1.6), (0.5, 0.2, 0.8)),
                             "log_prob": summary((1.0, 0.5, 1.5), (0.5, 0.1, 0.9))})
    text = " ".join(supported)
    assert len(supported) == 4
    assert "reproduced." in text and "stands out" in text and "as the hypothesis predicts" in text
    assert "reads the same" in text and "AUROC 0.90 [0.80, 1.00]" in text and "×10.00" in text
    unclear = " ".join(hyp.verdict({"fisher": summary((0.1, -0.2, 0.4), (0.1, -0.3, 0.5))}))
    assert "not reproduced" in unclear and "does not stand out" in unclear and "includes zero" in unclear
    against = " ".join(hyp.verdict({"fisher": summary((1.0, 0.5, 1.5), (-1.0, -1.6, -0.4)),
                                    "log_prob": summary((1.0, 0.5, 1.5), (0.2, -0.1, 0.5))}))
    assert "against the hypothesis" in against and "does not read the same" in against
    assert hyp.ci_text((0.123, -0.05, 0.3)) == "+0.12 [-0.05, +0.30]"


# ----------------------------------------------------------------------------- runs and ground truth

def test_hypothesis_profiles_thin_checkpoints_and_reuse_the_main_run():
    assert hyp.hypothesis_profile(get_profile("default"), "categorical_hair_matched", 1).checkpoint_every == 200
    assert hyp.hypothesis_profile(get_profile("ci"), "independent", 1).checkpoint_every == 40
    assert hyp.hypothesis_profile(get_profile("full"), "independent", 1).checkpoint_every == 1000
    P = get_profile("default")
    paths = run_paths(P, "runs/x")
    runs = hyp.hypothesis_runs(P, paths)
    assert [(r.loss, r.seed) for r in runs] == [(loss, s) for loss in hyp.LOSS_NAMES for s in P.seeds]
    assert runs[0].run_dir == paths.root and runs[0].profile == P
    assert runs[4].run_dir == paths.root / "hypothesis" / "categorical_hair_matched-seed1"
    assert runs[4].profile.loss == "categorical_hair_matched" and runs[4].profile.seed == 1


def random_split(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, 2, (n, 40), generator=g))


TINY = dict(image_size=16, width=0.125, steps=4, checkpoint_every=2, batch_size=8, eval_images=16,
            bracket_examples=3, pushforward_batch=5, seeds=(0, 1))


def test_thinning_checkpoints_keeps_the_trajectory(tmp_path):
    """hypothesis_profile's premise: the cadence of checkpoints does not change the weights."""
    data = random_split(32, 16, 0), random_split(16, 16, 1)
    every_2, every_4 = get_profile("ci", **TINY), get_profile("ci", **{**TINY, "checkpoint_every": 4})
    train(every_2, tmp_path / "a", *data, fingerprint="d", progress=False)
    train(every_4, tmp_path / "b", *data, fingerprint="d", progress=False)
    assert list_checkpoints(tmp_path / "b") == [0, 4]
    a, b = load_checkpoint(tmp_path / "a", 4, every_2), load_checkpoint(tmp_path / "b", 4, every_4)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


class Split:
    def __init__(self, data, fingerprint="d"):
        self.images, self.attributes, self.fingerprint = *data, fingerprint


def test_end_to_end_on_tiny_runs(tmp_path):
    P = get_profile("ci", **TINY)
    paths = run_paths(P, tmp_path / "run")
    runs = hyp.hypothesis_runs(P, paths)
    seconds = hyp.train_and_analyse(runs, Split(random_split(32, 16, 0)), Split(random_split(16, 16, 1)),
                                    Split(random_split(8, 16, 2)), progress=False)
    assert set(seconds) == {(loss, seed) for loss in hyp.LOSS_NAMES for seed in (0, 1)}
    steps = hyp.matched_steps(runs, from_step=2)
    assert steps == [2, 4]
    magnitudes = [hyp.run_magnitudes(r, steps) for r in runs]
    assert magnitudes[0].log_magnitudes.shape == (2, 40) and np.isfinite(magnitudes[2].log_magnitudes).all()
    assert np.isnan(magnitudes[0].common_mode) and 0 <= magnitudes[2].common_mode <= 1
    comparison = hyp.compare(magnitudes, hyp.HAIR_PAIR)
    assert set(comparison.tables) == set(hyp.QUANTITIES) and comparison.steps == steps
    assert comparison.tables["effect"]["independent"].shape == (2, 2)
    late = hyp.compare(magnitudes, hyp.HAIR_PAIR, from_step=4)
    assert late.steps == [4]
    assert late.tables["auroc"]["categorical_hair_matched"][0, 0] == comparison.tables["auroc"]["categorical_hair_matched"][0, 1]
    summaries = {scale: hyp.compare([hyp.run_magnitudes(r, steps, scale) for r in runs], hyp.HAIR_PAIR).summary()
                 for scale in hyp.SCALES}
    assert set(summaries["fisher"]) == {f"{q} {k}" for q in hyp.QUANTITIES for k in (*hyp.LOSS_NAMES, "difference")}
    assert all(low <= mean <= high for s in summaries.values() for mean, low, high in s.values())
    assert len(hyp.verdict(summaries)) == 4
    # log_odds_per_spread: the log-odds magnitudes divided by each attribute's log-odds spread over the batch.
    record = load_run_brackets(runs[2].profile, runs[2].run_dir)
    spread = hyp.attribute_log_odds("categorical_hair_matched", record.batch_logits[1:]).std(dim=1).log10().numpy()
    per_spread = hyp.run_magnitudes(runs[2], steps, "log_odds_per_spread").log_magnitudes
    log_odds = hyp.run_magnitudes(runs[2], steps, "log_odds").log_magnitudes
    np.testing.assert_allclose(per_spread, log_odds - spread, rtol=1e-12)
    with pytest.raises(ValueError, match="no bracket records"):
        hyp.run_magnitudes(runs[2], [3])
    with pytest.raises(ValueError, match="scale"):
        hyp.run_magnitudes(runs[2], steps, "logits")


def test_attribute_groups_come_from_the_generated_ground_truth(tmp_path):
    P = get_profile("ci", data_root=str(tmp_path), generated_images=60)
    celeba.prepare_data(P, progress=False)
    groups = hyp.attribute_groups(P)
    assert groups["exclusive & ambiguous"] == list(hyp.HAIR_PAIR)
    assert set(groups["exclusive only"]) == {"Blond_Hair", "Gray_Hair", "Straight_Hair", "Wavy_Hair"}
    assert hyp.NOISE_CONTROL in groups["noise"] and groups["hidden (correlated)"] == ["High_Cheekbones"]
    assert sorted(a for g in groups.values() for a in g) == sorted(ATTRIBUTES)
    gt = json.loads((tmp_path / "generated-n60-seed0" / "celeba" / "ground_truth.json").read_text())
    pairs = [set(p["attributes"]) for p in gt["correlated_pairs"]]
    assert set(hyp.CORRELATED_CONTROLS) in pairs                      # the controls are what they claim
    assert not any(set(hyp.CORRELATED_CONTROLS) <= set(g) for g in gt["exclusive_groups"])
    ambiguous = hyp.ambiguous_filenames(P)
    assert ambiguous == set(gt["ambiguous_pairs"][0]["ambiguous_images"]) and ambiguous
    assert hyp.ambiguous_filenames(get_profile("ci", data_source="real")) == set()
    real = hyp.attribute_groups(get_profile("ci", data_source="real"))
    assert real["exclusive & ambiguous"] == list(hyp.HAIR_PAIR) and real["noise"] == []
