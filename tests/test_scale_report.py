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
    assert "bottom half at one scale only" in text
    assert "exceeds its random-direction null by +0.03, +0.40" in text and "more than the null's at one scale" in text
    assert "Adam's bracket predicts it at both scales" in text
    assert "| ρ(Adam's bracket, J·g) | – | – |" in text     # missing results show as a dash
