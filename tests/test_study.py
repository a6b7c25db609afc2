"""The decisive test's code (lie_helpers.study): arms, shared examples, resumable records, profiles, the
pre-registered contrasts and a verdict that follows them. End to end on tiny runs; the statistics
themselves are tested in test_stats.py."""
import numpy as np
import pytest
import torch

from lie_helpers.study import contrasts, design, records, stats, verdict
from lie_helpers.data.attributes import ATTRIBUTES
from lie_helpers.training.config import get_profile
from lie_helpers.analysis.currency import attribute_mask

pytestmark = pytest.mark.usefixtures("one_thread")

NEEDED = ("independent", "independent, no bands", "categorical, matched", "exclusive makeup")


@pytest.fixture(scope="module")
def tiny(one_thread, tmp_path_factory):
    """The four arms the contrasts need, 2 seeds each, 20 steps on the ci data (600 images)."""
    P = get_profile("ci", data_root=str(tmp_path_factory.mktemp("data")), steps=20, checkpoint_every=10)
    root = tmp_path_factory.mktemp("study-run")
    arms = [a for a in design.study_arms(P) if a.name in NEEDED]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(design, "study_arms", lambda profile: arms)
        records.train_study_runs(P, root, progress=False)
        profiles = contrasts.study_profiles(P, root)
    return P, root, arms, profiles


def test_the_arms_and_their_profiles():
    P = get_profile("study")
    arms = {a.name: a for a in design.study_arms(P)}
    assert set(NEEDED) <= set(arms)
    assert all(len(arms[n].seeds) == 8 for n in NEEDED)          # exact sign-flip p can reach 1/128
    assert arms["independent, no bands"].band == 0 and arms["independent"].band == P.study_band
    profile = design.arm_profile(P, arms["exclusive makeup"], 3)
    assert (profile.loss, profile.seed, profile.hair_noise_band, profile.glasses_noise_band) == \
        ("exclusive_makeup", 3, P.study_band, P.study_band)
    assert {a.width for a in arms.values() if a.role == "capacity"} == {0.5, 1.0}
    assert design.late_steps(P) == [1000, 1500, 2000]


def test_records_are_stored_once_and_resume(tiny, monkeypatch):
    P, root, arms, _ = tiny
    for arm in arms:
        for seed in arm.seeds:
            paths = [records.record_path(design.arm_run_dir(root, arm, seed), s) for s in design.late_steps(P)]
            assert all(p.exists() for p in paths)
    calls = []
    monkeypatch.setattr(design, "study_arms", lambda profile: arms)
    monkeypatch.setattr(records, "analyse_checkpoint", lambda *a, **k: calls.append(1))
    records.train_study_runs(P, root, progress=False)                    # everything done: nothing recomputed
    assert calls == []


def test_every_arm_uses_the_same_test_images(tiny):
    P, root, arms, _ = tiny
    sets, test = design.study_sets(P)
    s = sets[P.seeds[0]][0]
    assert set(s.bracket) == set(design.BRACKET_STRATA)
    assert len(s.pushforward) == P.study_batch
    assert not set(np.concatenate(list(s.bracket.values()))) & set(s.pushforward.tolist())


def test_a_record_is_relative_to_its_median_attribute():
    magnitudes = torch.rand(40, dtype=torch.float64) + 0.1
    assert np.median(contrasts._relative(magnitudes.log10())) == pytest.approx(0, abs=1e-12)


def test_profiles_pool_the_strata_and_the_contrasts_follow(tiny):
    P, root, arms, profiles = tiny
    for arm in arms:
        for p in profiles[arm.name]:
            assert p.pooled.shape == (40,) and np.isfinite(p.pooled).all()
            assert set(p.by_stratum) == set(design.BRACKET_STRATA)
            np.testing.assert_allclose(p.pooled, np.mean(list(p.by_stratum.values()), axis=0))
            assert p.first_order.shape == (40,) and np.isfinite(p.first_order).all()     # J·g for every loss
    table = contrasts.contrast_table(profiles, np.ones(40, bool))
    assert list(table) == [*contrasts.CONTRASTS, contrasts.DETECTION]
    assert all(0 < r["p"] <= r["p_holm"] <= 1 and r["low"] <= r["mean"] <= r["high"] for r in table.values())
    first = contrasts.contrast_table(profiles, np.ones(40, bool), first_order=True)
    lines = verdict.verdict(table, first, len(P.seeds), {"hair": [0.2, 0.8], "glasses": [0.2, 0.25]}, sensitivity=first)
    assert "hair band the model reaches the posterior 0.5 only on average" in lines[0]
    assert "glasses band the model does not reach the posterior" in lines[1] and "2 seeds" in lines[-1]
    assert any(line.startswith("On the log-odds scale") for line in lines)


def test_a_record_made_for_other_examples_is_refused(tiny):
    P, root, arms, _ = tiny
    sets, _ = design.study_sets(P)
    other = sets[1]                                                    # seed 1's sets given for seed 0's run
    with pytest.raises(ValueError, match="other examples or weights"):
        contrasts.run_profile(P, root, arms[0], 0, other)


def test_unpaired_seeds_are_refused():
    profiles = fake_profiles({})
    profiles["independent, no bands"] = profiles["independent, no bands"][::-1]
    with pytest.raises(ValueError, match="other seeds"):
        contrasts.contrast_table(profiles, np.ones(40, bool))


def fake_profiles(shift: dict, n_seeds: int = 8, seed: int = 0, first_order: float = 0.5):
    """RunProfiles with noise, plus `shift` (arm -> {attribute: log10 added}); J·g is `first_order` × brackets."""
    rng = np.random.default_rng(seed)
    out = {}
    for arm in NEEDED:
        rows = []
        for k in range(n_seeds):
            pooled = rng.normal(0, 0.05, 40)
            for name, value in shift.get(arm, {}).items():
                pooled[ATTRIBUTES.index(name)] += value
            rows.append(contrasts.RunProfile(arm, k, {"other": pooled}, pooled, first_order * pooled))
        out[arm] = rows
    return out


def test_a_planted_positive_control_is_flagged_and_nothing_else():
    planted = {"exclusive makeup": {"Heavy_Makeup": 1.0, "Wearing_Lipstick": 1.0}}
    profiles = fake_profiles(planted, first_order=0.0)             # J·g shows nothing
    table = contrasts.contrast_table(profiles, np.ones(40, bool))
    c1, *others = table.values()
    assert c1["mean"] == pytest.approx(1.0, abs=0.1) and c1["p_holm"] < 0.05
    assert all(r["p_holm"] > 0.05 for r in others[:3])
    lines = verdict.verdict(table, contrasts.contrast_table(profiles, np.ones(40, bool), first_order=True), 8)
    assert lines[0].startswith("Brackets flag the mis-specified loss") and "J·g of the same examples does not" in lines[0]
    assert "no detectable change at this power" in lines[1]


def test_a_finding_that_one_gradient_step_shows_too_is_called_first_order():
    planted = {"exclusive makeup": {"Heavy_Makeup": 1.0, "Wearing_Lipstick": 1.0}}
    profiles = fake_profiles(planted, first_order=1.0)             # J·g moves exactly like the brackets
    table = contrasts.contrast_table(profiles, np.ones(40, bool))
    lines = verdict.verdict(table, contrasts.contrast_table(profiles, np.ones(40, bool), first_order=True), 8)
    assert "a first-order effect, not one of brackets" in lines[0]


def test_the_verdict_reads_ambiguity_and_exclusivity_from_the_contrasts():
    planted = {"independent": {"Black_Hair": 0.8, "Brown_Hair": 0.8, "Eyeglasses": 0.8}}
    profiles = fake_profiles(planted, seed=1, first_order=0.0)
    table = contrasts.contrast_table(profiles, np.ones(40, bool))
    lines = verdict.verdict(table, contrasts.contrast_table(profiles, np.ones(40, bool), first_order=True), 8)
    assert lines[0].startswith("Brackets do not flag")
    assert "the hair band raises the Black & Brown hair share" in lines[1]
    assert "the faint-glasses band raises the Eyeglasses share" in lines[2]
    assert "lowers the hair pair's share" in lines[4]             # (a) − (b) > 0 on hair


def test_detection_auroc_is_stats_auroc_over_the_eligible_attributes():
    profiles = fake_profiles({"independent": {"Black_Hair": 1.0}})["independent"]
    eligible = np.ones(40, bool)
    eligible[:3] = False
    got = contrasts.detection_aurocs(profiles, eligible)
    positive = attribute_mask(design.MANIPULATED)
    expected = [stats.auroc(p.pooled[eligible], positive[eligible]) for p in profiles]
    np.testing.assert_allclose(got, expected)


def test_eligible_attributes_leave_out_outputs_that_never_change():
    attributes = torch.zeros(200, 40, dtype=torch.int64)
    attributes[:100, 5] = 1
    attributes[:1, 6] = 1                                             # 0.5%: below 1%
    assert np.flatnonzero(contrasts.eligible_attributes(attributes)).tolist() == [5]


def test_shards_split_the_runs_disjointly_widest_first():
    P = get_profile("study")
    every = design.study_runs(P)
    shares = [design.study_runs(P, (k, 2)) for k in range(2)]
    assert len(every) == 40 and sorted(map(str, shares[0] + shares[1])) == sorted(map(str, every))
    assert not set(map(str, shares[0])) & set(map(str, shares[1]))
    assert {shares[0][0][0].width, shares[1][0][0].width} == {0.5, 1.0}     # one slow run per process
    with pytest.raises(ValueError, match="shard"):
        design.study_runs(P, (2, 2))


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

    P, root, arms, profiles = tiny
    copy = tmp_path / "study-run"
    shutil.copytree(root, copy)
    arm, seed, step = arms[0], P.seeds[0], design.late_steps(P)[-1]
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
            contrasts.run_profile(P, copy, arm, seed, sets[seed])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(design, "study_arms", lambda profile: arms)
            records.train_study_runs(P, copy, progress=False)          # what notebook 04 runs: recomputes it
        assert f"Recomputing study record(s) that do not verify: {path.name}" in capsys.readouterr().out.replace(
            str(path), path.name)
        again = contrasts.run_profile(P, copy, arm, seed, sets[seed])
        original = next(p for p in profiles[arm.name] if p.seed == seed)
        np.testing.assert_allclose(again.pooled, original.pooled, rtol=1e-6)
        np.testing.assert_allclose(again.first_order, original.first_order, rtol=1e-6)
