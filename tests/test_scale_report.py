"""The comparison of two runs' results (lie_helpers.pipeline.scale_report): a row a quantity, words from rules."""
from lie_helpers.pipeline import scale_report
from lie_helpers.training import results


def test_the_words_follow_the_numbers(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    results.record(small, "03", hair_median_rank=[3.0, 5.0], hair_residual_rank_median=[30.0, 35.0],
                   rho_jg_mean=0.95, rho_jg_random=0.92, rms_within_r=[0.6, 0.7])
    results.record(large, "03", hair_median_rank=[14.0, 6.0], hair_residual_rank_median=[25.0, 10.0],
                   rho_jg_mean=0.9, rho_jg_random=0.5, rms_within_r=[0.5, 0.5])
    results.record(small, "02", persist_adam_cosine=0.97)
    results.record(large, "02", persist_adam_cosine=0.95)
    text = scale_report.report(small, large)
    assert "| hair colours' median rank among the outputs, by bracket (Black, Brown) | 3, 5 | 14, 6 |" in text
    assert "among the top ten at the small scale only" in text
    assert "in the bottom half at the small scale and in the middle at the large" in text
    assert "neither scale shows a bracket finding" in text
    assert "exceeds its random-direction null by +0.03, +0.40" in text and "more than the null's at one scale" in text
    assert "Adam's bracket predicts it at both scales" in text
    assert "| ρ(Adam's bracket, J·g) | – | – |" in text     # missing results show as a dash


def test_the_rms_null_and_the_swaps_are_read_by_their_rules(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    results.record(small, "03", rms_rma_slope=[1.02, 1.05], rms_null_rma_slope=[1.02, 1.03])
    results.record(large, "03", rms_rma_slope=[1.3, 1.4], rms_null_rma_slope=[1.0, 1.05])
    results.record(small, "02", swap_bracket_ratio=0.001, swap_bracket_cosine=-0.06, swaps=8,
                   swap_adam_aware_cosine=0.99, swap_sgd_control_cosine=0.93, swap_sgd_control_ratio=0.98)
    results.record(large, "02", swap_bracket_ratio=0.02, swap_bracket_cosine=0.5, swaps=2,
                   swap_adam_aware_cosine=0.98, swap_sgd_control_cosine=0.6, swap_sgd_control_ratio=0.7)
    text = scale_report.report(small, large)
    assert "against its null" in text and ": not at both scales (rule: medians within 0.1)" in text
    assert "0.001 and 0.02 of the real effect (small, large; medians of 8 and 2 swaps)" in text
    assert "not a small part at both scales" in text
    assert "does not pass its control at both scales" in text
    results.record(large, "02", swap_bracket_ratio=2e-5, swap_sgd_control_cosine=0.94)
    text = scale_report.report(small, large)
    assert "small part of a real order effect at both scales" in text
    assert "direction at both scales, its size at the small scale only" in text
    results.record(large, "02", swap_sgd_control_ratio=0.95)
    assert "direction and size at both scales" in scale_report.report(small, large)
