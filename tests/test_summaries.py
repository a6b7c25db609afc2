"""Numbers of notebook 03: log-log fits of the RMS law, per-attribute magnitudes, ranks and onsets."""
import numpy as np
import pytest
import torch

from lie_helpers.analysis import rms_law, summaries
from lie_helpers.engine import numerics
from lie_helpers.analysis.records import RunBrackets
from lie_helpers.data.attributes import ATTRIBUTES

HAIR = ("Black_Hair", "Brown_Hair")
STEPS = [0, 50, 100, 150, 200, 250]
HAIR_FROM = 3  # checkpoint index from which the planted hair signal is on


def synthetic_records(slope=1.0, n_examples=4, n_tensors=12, batch=8, seed=0, hair_factor=6.0):
    """RunBrackets with bracket RMS = 3 · (geometric-mean gradient RMS)^slope exactly, and logit
    perturbations whose scale varies by orders of magnitude across checkpoints, with the hair
    outputs `hair_factor` times larger than the others from checkpoint HAIR_FROM on."""
    g = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(n_examples) for j in range(i + 1, n_examples)]
    gradient_rms = 10 ** (-4 * torch.rand(len(STEPS), n_examples, n_tensors, generator=g, dtype=torch.float64))
    bracket_rms = 3 * rms_law.paired_gradient_rms(gradient_rms, pairs) ** slope
    scale = 10 ** torch.arange(len(STEPS), dtype=torch.float64).view(-1, 1, 1, 1)  # heavy tail across checkpoints
    perturbation = torch.randn(len(STEPS), len(pairs), batch, len(ATTRIBUTES), generator=g, dtype=torch.float64) * scale
    hair = [ATTRIBUTES.index(h) for h in HAIR]
    perturbation[HAIR_FROM:, :, :, hair] *= hair_factor
    return RunBrackets(steps=list(STEPS), tensor_names=[f"t{k}" for k in range(n_tensors)], pairs=pairs,
                       bracket_rms=bracket_rms.float(), gradient_rms=gradient_rms.float(),
                       logit_perturbation=perturbation.float(), batch_logits=torch.zeros(len(STEPS), batch, 40),
                       seconds=[0.0] * len(STEPS))


def test_loglog_fit_recovers_a_known_power_law_and_skips_zeros():
    rng = np.random.default_rng(0)
    x = 10 ** rng.uniform(-5, 0, 500)
    y = 2.0 * x**1.5 * 10 ** rng.normal(0, 0.05, 500)
    x[:7] = 0.0
    fit = numerics.loglog_fit(x, y)
    assert fit.slope == pytest.approx(1.5, abs=0.01)
    assert 10**fit.intercept == pytest.approx(2.0, rel=0.05)
    assert 0.99 < fit.r < 1.0
    assert fit.residual_sd == pytest.approx(0.05, rel=0.15)
    assert (fit.n_points, fit.n_dropped) == (493, 7)
    with pytest.raises(ValueError, match="at least 3"):
        numerics.loglog_fit([1.0, 0.0, 2.0], [1.0, 1.0, 0.0])


def test_paired_gradient_rms_is_the_geometric_mean_of_the_two_examples():
    gradient_rms = torch.tensor([[1.0, 4.0], [4.0, 9.0], [16.0, 1.0]])
    paired = rms_law.paired_gradient_rms(gradient_rms, [(0, 1), (0, 2), (1, 2)])
    torch.testing.assert_close(paired, torch.tensor([[2.0, 6.0], [4.0, 2.0], [8.0, 3.0]]))


@pytest.mark.parametrize("slope", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("average_pairs", [False, True])
def test_rms_fits_recover_the_planted_slope(slope, average_pairs):
    records = synthetic_records(slope=slope)
    fits = rms_law.rms_fits(records, [1, 5], average_pairs=average_pairs)
    assert list(fits) == [50, 250]
    for fit in fits.values():
        assert fit.slope == pytest.approx(slope, abs=1e-4)
        assert 10**fit.intercept == pytest.approx(3.0, rel=1e-3)
        assert fit.r == pytest.approx(1.0, abs=1e-6)
        assert fit.residual_sd < 1e-6
        assert fit.n_points == (12 if average_pairs else 6 * 12)


def test_rms_points_leave_out_zero_gradients_when_averaging():
    records = synthetic_records()
    records.gradient_rms[2, :, 0] = 0.0   # a tensor whose gradient vanishes for every example
    x, y = rms_law.rms_points(records, 2, average_pairs=True)
    assert x[0] == 0.0 and np.all(x[1:] > 0)
    assert numerics.loglog_fit(x, y).n_dropped == 1


def test_spread_checkpoints():
    steps = list(range(0, 1001, 50))
    assert summaries.spread_checkpoints(steps, 4) == [1, 7, 14, 20]
    assert summaries.spread_checkpoints(steps, 3, skip_initial=False) == [0, 10, 20]
    assert summaries.spread_checkpoints([0, 40, 80], 4) == [1, 2]


def test_ranks_ratios_and_magnitudes():
    magnitude = torch.tensor([[1.0, 5.0, 3.0, 3.0, 2.0]], dtype=torch.float64)
    assert summaries.ranks(magnitude).tolist() == [[5, 1, 2, 3, 4]]
    assert summaries.ratio_to_median(magnitude)[0].tolist() == pytest.approx([1 / 3, 5 / 3, 1.0, 1.0, 2 / 3])
    assert summaries.median_output(torch.tensor([[1.0, 2.0, 4.0, 10.0]])).item() == 3.0  # even count: mean of middle
    perturbation = torch.tensor([[[[1.0, -2.0], [-3.0, 4.0]], [[0.0, 0.0], [1.0, 2.0]]]])  # [1, 2 pairs, 2, 2]
    torch.testing.assert_close(summaries.attribute_magnitude(perturbation),
                               torch.tensor([[5 / 4, 8 / 4]], dtype=torch.float64))


def test_onset_step():
    steps = [0, 10, 20, 30, 40]
    assert summaries.onset_step(steps, [30, 2, 12, 3, 1], top=10) == 30
    assert summaries.onset_step(steps, [1, 2, 3, 4, 5], top=10) == 0
    assert summaries.onset_step(steps, [1, 2, 3, 4, 11], top=10) is None


def test_planted_hair_signal_is_found_within_each_checkpoint():
    records = synthetic_records()
    summary = summaries.summarise_attributes(records, ATTRIBUTES, HAIR, top=2)
    assert summary.magnitude.shape == (len(STEPS), 40)
    # Raw magnitudes grow 10x per checkpoint; within-checkpoint ranks and ratios do not care.
    assert np.all(summary.rank[HAIR_FROM:] <= 2)
    assert np.all(summary.rank[:HAIR_FROM] > 2)
    assert np.all(summary.ratio[HAIR_FROM:] == pytest.approx(6.0, rel=0.35))
    assert np.all(summary.ratio[:HAIR_FROM] == pytest.approx(1.0, rel=0.35))
    assert np.all(summary.pair_share[HAIR_FROM:] == 1.0)
    assert summary.onset == {h: STEPS[HAIR_FROM] for h in HAIR}
    assert summary.joint_onset == STEPS[HAIR_FROM]
    # Medians over the trained checkpoints (steps 50..250): two of five before the signal, three after.
    assert all(summary.median_rank[h] <= 2 for h in HAIR)
    assert all(summary.median_ratio[h] == pytest.approx(6.0, rel=0.35) for h in HAIR)
    top3 = summaries.most_perturbed(summary.magnitude[-1], ATTRIBUTES, 2)
    assert sorted(top3) == sorted(HAIR)


def test_outputs_are_found_by_name():
    records = synthetic_records()
    names = list(ATTRIBUTES)[::-1]   # a loss whose outputs come in another order
    planted = names[ATTRIBUTES.index("Black_Hair")]   # the name now on the planted column
    summary = summaries.summarise_attributes(records, names, (planted, "Black_Hair"), top=2)
    assert np.all(summary.rank[HAIR_FROM:, 0] <= 2) and np.all(summary.rank[HAIR_FROM:, 1] > 2)
    with pytest.raises(ValueError):
        summaries.summarise_attributes(records, names, ("No_Such_Output",))


@pytest.mark.parametrize("hair_factor, verdict", [(6.0, "singled out"), (1.6, "elevated"), (1.0, "not elevated")])
def test_the_generated_reading_follows_the_numbers(hair_factor, verdict):
    records = synthetic_records(hair_factor=hair_factor)
    summary = summaries.summarise_attributes(records, ATTRIBUTES, HAIR, top=2)
    text = summaries.describe_highlighted(summary, ATTRIBUTES)
    assert f"they are {verdict}" in text
    for k, name in enumerate(HAIR):
        assert f"median rank {summary.median_rank[name]:g}" in text


def test_leading_outputs_count_the_most_perturbed_output_of_each_trained_checkpoint():
    records = synthetic_records()
    summary = summaries.summarise_attributes(records, ATTRIBUTES, HAIR, top=2)
    counts = summaries.leading_outputs(summary, ATTRIBUTES)
    expected = {}
    for c, step in enumerate(summary.steps):   # brute force: argmax per trained checkpoint
        if step > 0:
            name = ATTRIBUTES[int(np.argmax(summary.magnitude[c]))]
            expected[name] = expected.get(name, 0) + 1
    assert counts == expected and sum(counts.values()) == len(STEPS) - 1
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
