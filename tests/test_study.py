"""The decisive test's pipeline (lie_helpers.study) end to end on tiny runs: arms, shared examples, resumable records
(old readout, source records, the known-answer controls), shares, contrasts and the verdict. The readout's
mathematics is tested in test_study_sources.py, the statistics in test_stats.py and test_stats_intervals.py."""
import numpy as np
import pytest
import torch

from lie_helpers.study import (contrasts, design, known_answers, old_readout, records, source_records, sources,
                               verdict)
from lie_helpers.training.config import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")

NEEDED = ("independent", "independent, no bands", "independent, bands / 3", "categorical, matched", "exclusive makeup")


@pytest.fixture(scope="module")
def tiny(one_thread, tmp_path_factory):
    """The five arms the contrasts and controls need, 2 seeds each, 20 steps on the ci data (600 images), three
    bracket examples a stratum (three pairs)."""
    P = get_profile("ci", data_root=str(tmp_path_factory.mktemp("data")), steps=20, checkpoint_every=10,
                    study_examples=3)
    root = tmp_path_factory.mktemp("study-run")
    arms = [a for a in design.study_arms(P) if a.name in NEEDED]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(design, "study_arms", lambda profile: arms)
        records.train_study_runs(P, root, progress=False)
        sets, test = design.study_sets(P)
        shares = contrasts.study_shares(P, root, sets=sets)
        record = known_answers.control_record(P, root, sets[P.seeds[0]], test)
        training = known_answers.training_dose(P, root)
        profiles = old_readout.study_profiles(P, root, sets=sets)
        log_odds = contrasts.study_shares(P, root, "log_odds", sets=sets)
    return P, root, arms, shares, record, training, profiles, log_odds


def test_the_arms_and_their_profiles():
    P = get_profile("study")
    arms = {a.name: a for a in design.study_arms(P)}
    assert set(NEEDED) <= set(arms)
    assert all(len(arms[n].seeds) == 8 for n in NEEDED if n != "independent, bands / 3")   # exact p can reach 1/128
    assert arms["independent, no bands"].band == 0 and arms["independent"].band == P.study_band
    profile = design.arm_profile(P, arms["exclusive makeup"], 3)
    assert (profile.loss, profile.seed, profile.hair_noise_band, profile.glasses_noise_band) == \
        ("exclusive_makeup", 3, P.study_band, P.study_band)
    assert {a.width for a in arms.values() if a.role == "capacity"} == {0.5, 1.0}
    assert design.record_steps(P) == [2000] and design.control_run(P) == ("independent", 0)


def test_every_record_is_stored_once_and_resumes(tiny, monkeypatch):
    P, root, arms, *_ = tiny
    for arm in arms:
        for seed in arm.seeds:
            run = design.arm_run_dir(root, arm, seed)
            assert records.record_path(run, 20).exists() and source_records.source_record_path(run, 20).exists()
    assert known_answers.controls_path(root).exists()
    calls = []
    monkeypatch.setattr(design, "study_arms", lambda profile: arms)
    monkeypatch.setattr(records, "analyse_checkpoint", lambda *a, **k: calls.append("old"))
    monkeypatch.setattr(sources, "source_brackets", lambda *a, **k: calls.append("sources"))
    monkeypatch.setattr(known_answers, "dose_control", lambda *a, **k: calls.append("dose"))
    records.train_study_runs(P, root, progress=False)                    # everything done: nothing recomputed
    assert calls == []


def test_every_arm_uses_the_same_test_images(tiny):
    P, *_ = tiny
    sets, test = design.study_sets(P)
    s = source_records.source_set(sets[P.seeds[0]])
    assert set(sources.SOURCE_STRATA) <= set(s.bracket) and len(s.pushforward) == P.study_batch
    assert not set(np.concatenate(list(s.bracket.values()))) & set(s.pushforward.tolist())


def test_a_record_made_for_other_examples_is_refused(tiny):
    P, root, arms, *_ = tiny
    sets, _ = design.study_sets(P)
    with pytest.raises(ValueError, match="other examples"):
        contrasts.run_shares(P, root, arms[0], 0, sets[1])                  # seed 1's sets given for seed 0's run


def test_the_controls_on_the_studys_own_checkpoint_pass_and_the_old_readout_is_beside_them(tiny):
    *_, record, training, _, _ = tiny
    assert set(record["dose"]) == set(known_answers.DOSE_SOURCES) and record["arm"] == "independent"
    for dose in record["dose"].values():
        r = dose["readouts"]
        assert r["Q, self-share"]["slope"] == pytest.approx(2.0, abs=1e-4)       # float32: exact up to round-off
        assert r["Q^g, J·g share"]["slope"] == pytest.approx(1.0, abs=1e-4)
        assert r["Q − 2·Q^g (C5's statistic)"]["slope"] == pytest.approx(0.0, abs=1e-4)
        assert {"old readout, bracket", "old readout, J·g"} <= set(r)
    assert known_answers.readouts_passed(record) == dict.fromkeys(("Q", "Q^g", "C5", "Q^A", "Q^Ag", "C5^A", "Adam full"),
                                                                  True)
    assert set(record["adam_dose"]) == set(known_answers.DOSE_SOURCES)
    for dose in record["adam_dose"].values():                                   # Adam's readout, its state fixed
        slopes = [dose["readouts"][name]["slope"] for name in known_answers.ADAM_DOSE_EXPECTED]
        np.testing.assert_allclose(slopes, [2.0, 1.0, 0.0], atol=1e-4)
        assert dose["full"]["deviation"] < 1e-4
    checks = record["curvature"]["checks"]
    for name in ("residual change", "J·g change (log10)", "bracket change against its closed form"):
        assert checks[name]["passed"], (name, checks[name])
    assert training["bands"] == [0.0, 0.1, 0.3] and training["images"] > 0
    assert all(len(v) == len(training["seeds"]) for v in training["per_seed"].values())


def test_shares_contrasts_and_verdict_follow_from_the_records(tiny):
    P, root, arms, shares, record, training, profiles, log_odds = tiny
    for arm in arms:
        for r in shares[arm.name]:
            assert set(r.self) == set(sources.SOURCES) - {sources.REST}
            assert np.isfinite(list(r.self.values())).all() and np.isfinite(list(r.first_order.values())).all()
            assert np.isfinite(r.hair_leave_one_out) and 0 < r.hair_dominant_share <= 1
    tables = contrasts.contrast_tables(shares)
    assert list(tables["Q"]) == list(contrasts.CONTRASTS)
    lines = verdict.verdict(tables, record, len(P.seeds), training=training, posterior={"hair": [0.2, 0.8]},
                            sensitivity=contrasts.contrast_tables(log_odds),
                            robustness=contrasts.robustness_table(shares))
    assert any(line.startswith("Power:") for line in lines) and any(line.startswith("C5:") for line in lines)
    assert "2 seeds" in lines[-1]
    old = old_readout.old_contrast_table(profiles)
    assert all(r["low"] <= r["mean"] <= r["high"] for r in old.values())


def test_adams_whole_bracket_table_and_momentum_share_come_from_the_adam_records(tiny):
    P, root, arms, shares, record, training, profiles, log_odds = tiny
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(design, "study_arms", lambda profile: arms)
        whole = contrasts.adam_whole_table(P, root)
        momentum = contrasts.adam_momentum_ratios(P, root)
        adam = contrasts.adam_contrast_tables(P, root, record)
    assert list(whole) == contrasts.PAIRED and all(r["low"] <= r["mean"] <= r["high"] for r in whole.values())
    assert set(momentum) == set(sources.SOURCES) and np.isfinite([momentum[k] for k in sources.REFERENCE]).all()
    lines = verdict.adam_lines(record, adam, contrasts.contrast_tables(shares), whole=whole, momentum=momentum)
    assert any(line.startswith("In Adam's self bracket the momentum part") for line in lines)
    assert lines[-1].endswith("The primary's is the registered verdict.")


def test_unpaired_seeds_are_refused():
    q = dict.fromkeys(sources.SOURCES[:-1], 0.0)
    r = contrasts.RunShares("x", 0, q, q, q, 0.0, 0.0)
    shares = {"independent": [r], "independent, no bands": [contrasts.RunShares("x", 1, q, q, q, 0.0, 0.0)],
              "categorical, matched": [r], "exclusive makeup": [r]}
    with pytest.raises(ValueError, match="other seeds"):
        contrasts.family(shares, "Q")


def test_shards_split_the_runs_disjointly_and_balance_their_cost():
    P = get_profile("study")
    every = design.study_runs(P)
    shares = [design.study_runs(P, (k, 2)) for k in range(2)]
    assert len(every) == 40 and sorted(map(str, shares[0] + shares[1])) == sorted(map(str, every))
    assert not set(map(str, shares[0])) & set(map(str, shares[1]))
    assert {shares[0][0][0].width, shares[1][0][0].width} == {0.5, 1.0}     # one slow run per process
    loads = [sum(design.run_cost(P, *run) for run in share) for share in shares]
    assert abs(loads[0] - loads[1]) <= 1.0 + 1e-9                           # within one run at the profile's width
    with pytest.raises(ValueError, match="shard"):
        design.study_runs(P, (2, 2))


def test_the_old_readout_is_relative_to_its_median_attribute():
    magnitudes = torch.rand(40, dtype=torch.float64) + 0.1
    assert np.median(old_readout._relative(magnitudes.log10())) == pytest.approx(0, abs=1e-12)


# ---------------------------------------------------------------- issue 18, item 1: study records are hash-checked

def _flip_tensor_bytes(path):
    """Change a few low-order mantissa bytes of the tensor data (same size, still finite, still parses)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    for k in range(start, len(data) - 4, 4 * max(1, (len(data) - start) // 64)):
        data[k] ^= 0x55
    path.write_bytes(bytes(data))


def test_an_altered_study_record_is_refused_by_the_reader_and_recomputed_by_the_study(tiny, tmp_path, capsys):
    """The issue: bytes flipped (same size) in study_records/step_000080.safetensors were used silently by notebook 04
    (its contrasts and detection AUROC changed): study_records/ was in no manifest."""
    import shutil
    from lie_helpers.training import run_folder

    P, root, arms, shares, _, _, profiles, _ = tiny
    copy = tmp_path / "study-run"
    shutil.copytree(root, copy)
    arm, seed, step = arms[0], P.seeds[0], design.record_steps(P)[-1]
    arm_dir = design.arm_run_dir(copy, arm, seed)
    sets, _ = design.study_sets(P)
    manifest = run_folder.read_manifest(arm_dir)
    assert {f"study_records/step_{step:06d}.safetensors", f"study_records/step_{step:06d}.first_order.safetensors"} \
        <= set(manifest["files"])                                       # listed, with their sha256
    for path in (records.record_path(arm_dir, step), records.first_order_path(arm_dir, step)):
        size = path.stat().st_size
        _flip_tensor_bytes(path)
        assert path.stat().st_size == size
        with pytest.raises(ValueError, match=rf"{path.name} was altered.*python -m lie_helpers.study"):
            old_readout.run_profile(P, copy, arm, seed, sets[seed])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(design, "study_arms", lambda profile: arms)
            records.train_study_runs(P, copy, progress=False)          # what notebook 04 runs: recomputes it
        assert f"Recomputing study record(s) that do not verify: {path.name}" in capsys.readouterr().out.replace(
            str(path), path.name)
        again = old_readout.run_profile(P, copy, arm, seed, sets[seed])
        original = next(p for p in profiles[arm.name] if p.seed == seed)
        np.testing.assert_allclose(again.pooled, original.pooled, rtol=1e-6)
        np.testing.assert_allclose(again.first_order, original.first_order, rtol=1e-6)
    # the primary readout's source record, and the known-answer controls, are listed and checked the same way
    source = source_records.source_record_path(arm_dir, step)
    assert f"study_records/{source.name}" in run_folder.read_manifest(arm_dir)["files"]
    assert "study/controls.json" in run_folder.read_manifest(copy)["files"]
    _flip_tensor_bytes(source)
    with pytest.raises(ValueError, match=rf"{source.name} was altered"):
        contrasts.run_shares(P, copy, arm, seed, sets[seed])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(design, "study_arms", lambda profile: arms)
        records.train_study_runs(P, copy, progress=False)
    assert "Recomputing a source record that does not verify" in capsys.readouterr().out
    again = contrasts.run_shares(P, copy, arm, seed, sets[seed])
    original = next(r for r in shares[arm.name] if r.seed == seed)
    assert again.self == pytest.approx(original.self, rel=1e-6)


def test_adams_source_record_is_keyed_by_the_optimizer_state_and_refused_when_altered(tiny, tmp_path, capsys):
    """Adam's readout's record (issue 20) is listed, checked and recomputed like the source record; its key holds the
    sha256 of the checkpoint's Adam state file."""
    import json
    import shutil
    from lie_helpers.training import run_folder

    P, root, arms, *_ = tiny
    copy = tmp_path / "study-run"
    shutil.copytree(root, copy)
    arm, seed, step = arms[0], P.seeds[0], design.record_steps(P)[-1]
    arm_dir = design.arm_run_dir(copy, arm, seed)
    sets, _ = design.study_sets(P)
    path = source_records.adam_record_path(arm_dir, step)
    assert f"study_records/{path.name}" in run_folder.read_manifest(arm_dir)["files"]
    original = contrasts.run_shares(P, copy, arm, seed, sets[seed], kind="adam")
    assert set(original.self) == set(sources.SOURCES) - {sources.REST} and np.isfinite(list(original.self.values())).all()
    _flip_tensor_bytes(path)
    with pytest.raises(ValueError, match=rf"{path.name} was altered"):
        contrasts.run_shares(P, copy, arm, seed, sets[seed], kind="adam")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(design, "study_arms", lambda profile: arms)
        records.train_study_runs(P, copy, progress=False)
    assert "Recomputing an Adam source record that does not verify" in capsys.readouterr().out
    again = contrasts.run_shares(P, copy, arm, seed, sets[seed], kind="adam")
    assert again.self == pytest.approx(original.self, rel=1e-6)
    manifest_path = run_folder.RunPaths(arm_dir).manifest
    manifest = json.loads(manifest_path.read_text())
    manifest["checkpoints"][str(step)]["sha256"]["optimizer"] = "0" * 64        # another Adam state
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="another key"):
        contrasts.run_shares(P, copy, arm, seed, sets[seed], kind="adam")
    contrasts.run_shares(P, copy, arm, seed, sets[seed])                       # the primary's record does not depend on it
