"""Stratified example sets and the fit to the true posterior, on generated data with noise bands."""
import numpy as np
import pytest
import torch

from lie_helpers.data import celeba, generated_celeba
from lie_helpers.study import example_sets
from lie_helpers.data.attributes import ATTRIBUTES
from lie_helpers.training.config import get_profile
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import build_model, prepare_inputs

IDX = {a: i for i, a in enumerate(ATTRIBUTES)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = generated_celeba.generate_celeba(tmp_path_factory.mktemp("bands") / "data", 1200, seed=0, progress=False,
                                            hair_band=0.3, glasses_band=0.3)
    test = celeba.CelebAFolder(root, "test", verify_checksums=False)
    return root, list(test.filename), test.attr.numpy()


def test_split_truth_is_the_ground_truth_of_the_split_s_files(data):
    root, names, _ = data
    all_names, posteriors = generated_celeba.read_true_posteriors(root)
    truth = example_sets.split_truth(root, names)
    gt = generated_celeba.read_ground_truth(root)["noise_bands"]
    for k, name in enumerate(names):
        i = all_names.index(name)
        assert all(truth.posteriors[a][k] == posteriors[a][i] for a in posteriors)
        assert truth.in_hair_band[k] == (name in gt["hair"]["images"])
        assert truth.in_glasses_band[k] == (name in gt["glasses"]["images"])
    assert truth.in_hair_band.any() and truth.in_glasses_band.any()
    with pytest.raises(ValueError, match="not in the ground truth"):
        example_sets.split_truth(root, ["999999.jpg"])


def test_strata_by_brute_force(data):
    root, names, attrs = data
    truth = example_sets.split_truth(root, names)
    found = example_sets.strata(attrs, truth)
    expected = {name: [] for name in example_sets.STRATA}
    for i, row in enumerate(attrs):
        black, brown = row[IDX["Black_Hair"]] == 1, row[IDX["Brown_Hair"]] == 1
        faint = 0.2 < truth.posteriors["Eyeglasses"][i] < 0.8
        own = truth.posteriors["Black_Hair" if black else "Brown_Hair"][i]
        if (black or brown) and not faint:
            if 0.2 < own < 0.8:
                expected["ambiguous black/brown"].append(i)
            elif own >= 0.8:
                expected["unambiguous black/brown"].append(i)
        elif faint and not (black or brown):
            expected["faint glasses"].append(i)
        elif not faint:
            expected["other"].append(i)
    assert {k: v.tolist() for k, v in found.items()} == expected
    assert all(len(v) >= 5 for v in expected.values())
    assert set(np.flatnonzero(truth.in_hair_band & ~truth.in_glasses_band)) <= set(expected["ambiguous black/brown"])


def test_example_sets_are_stratified_disjoint_and_deterministic_from_the_seed(data):
    root, names, attrs = data
    split_strata = example_sets.strata(attrs, example_sets.split_truth(root, names))
    bracket, pushforward = {"ambiguous black/brown": 3, "faint glasses": 2}, {"ambiguous black/brown": 4, "other": 5}
    sets = example_sets.draw_example_sets(split_strata, seed=3, n_sets=3, bracket=bracket, pushforward=pushforward)
    assert [s.number for s in sets] == [0, 1, 2] and all(s.seed == 3 for s in sets)
    for s in sets:
        assert {k: len(v) for k, v in s.bracket.items()} == bracket
        assert s.pushforward_strata == ("ambiguous black/brown",) * 4 + ("other",) * 5
        assert all(set(v) <= set(split_strata[k]) for k, v in s.bracket.items())
        assert all(i in split_strata[label] for i, label in zip(s.pushforward.tolist(), s.pushforward_strata))
        used = np.concatenate([*s.bracket.values(), s.pushforward])
        assert len(set(used.tolist())) == len(used) == 14                  # nothing drawn twice within a set
    again = example_sets.draw_example_sets(split_strata, seed=3, n_sets=3, bracket=bracket, pushforward=pushforward)
    assert all(all(np.array_equal(a.bracket[k], b.bracket[k]) for k in bracket)
               and np.array_equal(a.pushforward, b.pushforward) for a, b in zip(sets, again))
    other = example_sets.draw_example_sets(split_strata, seed=4, n_sets=3, bracket=bracket, pushforward=pushforward)
    assert any(not np.array_equal(a.pushforward, b.pushforward) for a, b in zip(sets, other))
    assert len({tuple(s.pushforward) for s in sets}) == 3                    # several different sets per run


def test_a_stratum_with_too_few_images_is_named_with_the_fix(data):
    root, names, attrs = data
    split_strata = example_sets.strata(attrs, example_sets.split_truth(root, names))
    have = len(split_strata["faint glasses"])
    with pytest.raises(ValueError, match=rf"(?s)'faint glasses' has {have} image.*needs {have + 1}.*generated_images"
                                         r".*glasses_noise_band"):
        example_sets.draw_example_sets(split_strata, 0, bracket={"faint glasses": have + 1}, pushforward={})
    with pytest.raises(ValueError, match="Unknown stratum"):
        example_sets.draw_example_sets(split_strata, 0, bracket={"blond": 2}, pushforward={})


def test_posterior_fit_against_the_recorded_posteriors(data):
    root, names, attrs = data
    truth = example_sets.split_truth(root, names)
    exact = np.full(attrs.shape, 0.3)
    for name in ("Black_Hair", "Eyeglasses"):
        exact[:, IDX[name]] = truth.posteriors[name]
    fit = example_sets.posterior_fit(exact, attrs, truth)
    black_or_brown = (attrs[:, IDX["Black_Hair"]] + attrs[:, IDX["Brown_Hair"]]) == 1
    assert fit["Black_Hair"]["n"] == black_or_brown.sum() and fit["Eyeglasses"]["n"] == len(attrs)
    for name in ("Black_Hair", "Eyeglasses"):
        assert fit[name]["mean_abs_error"] == 0 and fit[name]["band"]["gap"] == 0
        assert all(b["mean_posterior"] == b["mean_predicted"] for b in fit[name]["calibration"])
    off = exact.copy()
    off[:, IDX["Black_Hair"]] = 0.7
    fit = example_sets.posterior_fit(off, attrs, truth, bins=2)["Black_Hair"]
    true = truth.posteriors["Black_Hair"][black_or_brown]
    assert fit["band"]["n"] == truth.in_hair_band.sum() and fit["band"]["gap"] == pytest.approx(0.2)
    assert fit["mean_abs_error"] == pytest.approx(np.abs(0.7 - true).mean())
    low = true < 0.5
    assert [b["n"] for b in fit["calibration"]] == [low.sum(), (~low).sum()]
    assert fit["calibration"][0]["mean_posterior"] == pytest.approx(true[low].mean())


@pytest.mark.parametrize("loss", ["independent", "categorical_hair_matched", "exclusive_makeup"])
def test_predicted_probabilities_of_a_model(loss):
    model = build_model(get_profile("ci", image_size=16, width=0.125, loss=loss))
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    loss_fn = get_loss(loss)
    p = example_sets.predicted_probabilities(model, loss_fn, images)
    model.eval()
    with torch.no_grad():
        logits = model(prepare_inputs(images)).double()
    assert p.shape == (5, 40) and ((p > 0) & (p < 1)).all()
    binary = [ATTRIBUTES[i] for i in loss_fn.binary_index]
    np.testing.assert_allclose(p[:, IDX[binary[0]]], torch.sigmoid(logits[:, 0]).numpy(), rtol=1e-6)
    for members, at in zip(loss_fn.softmax_groups, loss_fn.group_slices()):   # a group member: its softmax p
        np.testing.assert_allclose(p[:, IDX[members[0]]], logits[:, at].softmax(-1)[:, 0].numpy(), rtol=1e-6)


def test_model_posterior_fit_on_a_split(data):
    root = data[0]
    split = celeba.load_split(root, "test", 16, verify_checksums=False, progress=False)
    profile = get_profile("ci", image_size=16, width=0.125)
    model, loss = build_model(profile), get_loss(profile.loss)
    fit = example_sets.model_posterior_fit(model, loss, split, root)
    expected = example_sets.posterior_fit(example_sets.predicted_probabilities(model, loss, split.images),
                                          split.attributes.numpy(), example_sets.split_truth(root, split.filenames))
    assert fit == expected and fit["Black_Hair"]["band"]["n"] > 0


def test_an_example_set_feeds_the_bracket_analysis(data):
    from lie_helpers.analysis import records as analysis
    root = data[0]
    split = celeba.load_split(root, "test", 16, verify_checksums=False, progress=False)
    split_strata = example_sets.strata(split.attributes.numpy(), example_sets.split_truth(root, split.filenames))
    s = example_sets.draw_example_sets(split_strata, seed=0, n_sets=1, bracket={"ambiguous black/brown": 3},
                                       pushforward={"unambiguous black/brown": 4, "other": 5})[0]
    profile = get_profile("ci", image_size=16, bracket_examples=3, pushforward_batch=9)
    examples, targets, batch = analysis.fixed_inputs(profile, (split.images, split.attributes),
                                                     example_indices=s.bracket["ambiguous black/brown"],
                                                     batch_indices=s.pushforward)
    assert torch.equal(examples, prepare_inputs(split.images[s.bracket["ambiguous black/brown"]]))
    assert torch.equal(batch, prepare_inputs(split.images[s.pushforward]))
    hair = targets[:, [IDX["Black_Hair"], IDX["Brown_Hair"]]]
    assert (hair.sum(1) == 1).all()                                          # black or brown, as the stratum says
