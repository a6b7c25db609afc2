"""A run folder that cannot lie: validated settings, one folder per experiment, a manifest that every
loader checks, resuming from the last good checkpoint, and a lock. The issue's reproductions
(issue 9) come first, then a few a hostile user would try."""
import hashlib
import shutil
import threading

import pytest
import torch

from lie_helpers.analysis import records as analysis
from lie_helpers.data import storage
from lie_helpers.training import run_folder
from lie_helpers.training import train as T
from lie_helpers.training.config import PROFILES, get_profile, run_folder_name, run_paths
from lie_helpers.training.run_folder import RunPaths

SETTINGS = dict(image_size=16, width=0.125, steps=5, batch_size=8, checkpoint_every=2, eval_images=12,
                bracket_examples=3, pushforward_batch=5, swap_checkpoints=0)
PROFILE = get_profile("ci", **SETTINGS)


def random_split(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 2, (n, 40), generator=g))


TRAIN, VALID, TEST = random_split(24, 0), random_split(16, 1), random_split(8, 2)


pytestmark = pytest.mark.usefixtures("one_thread")


def train(run_dir, profile=PROFILE):
    return T.train(profile, run_dir, TRAIN, VALID, fingerprint="data-a", progress=False, device="cpu")


def analyse(run_dir, profile=PROFILE):
    return analysis.analyse_run(profile, TEST, run_dir=run_dir, fingerprint="data-a", progress=False, device="cpu")


@pytest.fixture(scope="module")
def analysed(one_thread, tmp_path_factory):
    """A trained and analysed run that tests copy before damaging it."""
    run_dir = tmp_path_factory.mktemp("analysed")
    train(run_dir)
    analyse(run_dir)
    return run_dir


@pytest.fixture
def run(analysed, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(analysed, copy)
    return RunPaths(copy)


def file_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_checkpoints(a, b):
    """The same complete checkpoints, bit-identical weights and the same metrics (timings and the order of
    safetensors' metadata aside)."""
    assert T.list_checkpoints(a) == T.list_checkpoints(b)
    for step in T.list_checkpoints(a):
        wa, wb = (storage.load_tensors(RunPaths(r).weights(step)) for r in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"step {step} differs"
    assert T.load_metrics(a) == T.load_metrics(b)


# ----------------------------------------------------------------------------- the manifest

def test_manifest_holds_the_sha256_and_key_of_every_checkpoint_and_record(run):
    manifest = run_folder.read_manifest(run)
    assert sorted(map(int, manifest["checkpoints"])) == [0, 2, 4, 5] == sorted(map(int, manifest["records"]))
    for step, entry in manifest["checkpoints"].items():
        assert entry["key"] == {"profile_hash": PROFILE.hash(), "data_fingerprint": "data-a"}
        assert entry["sha256"]["weights"] == hashlib.sha256(run.weights(int(step)).read_bytes()).hexdigest()
        assert entry["sha256"]["info"] == hashlib.sha256(run.info(int(step)).read_bytes()).hexdigest()
    # Optimizer state: every checkpoint's, and the manifest says so.
    assert [s for s, e in manifest["checkpoints"].items() if "optimizer" in e["sha256"]] == ["0", "2", "4", "5"]
    assert sorted(p.name for p in run.checkpoints.glob("*.optimizer.*")) == [
        f"step_00000{s}.optimizer.safetensors" for s in (0, 2, 4, 5)]
    for step, entry in manifest["records"].items():
        assert entry["key"] == analysis.analysis_key(PROFILE, "data-a")
        assert entry["sha256"] == hashlib.sha256(run.record(int(step)).read_bytes()).hexdigest()
        assert entry["checkpoint"] == manifest["checkpoints"][step]["sha256"]["weights"]


# ----------------------------------------------------------------------------- records that lie

def test_a_deleted_record_is_refused_by_the_loader_and_recomputed_by_the_analysis(run, analysed):
    """The issue: delete one record, rerun, and figures came from 3 of 4 checkpoints."""
    expected = storage.load_tensors(run.record(2))
    run.record(2).unlink()
    with pytest.raises(ValueError, match=r"step_000002.safetensors is missing.*analyse_run"):
        analysis.load_run_brackets(PROFILE, run.root)
    analyse(run.root)
    records = analysis.load_run_brackets(PROFILE, run.root)
    assert records.steps == [0, 2, 4, 5]
    assert torch.equal(records.bracket_rms[1], expected["bracket_rms"])     # same numbers as before


def test_a_stray_record_under_another_steps_name_is_refused(run):
    """The issue: a copy of a record under another step's name made '4 checkpoints' into 5."""
    shutil.copy(run.record(2), run.record(3))
    for read in (lambda: analysis.load_run_brackets(PROFILE, run.root), lambda: analyse(run.root)):
        with pytest.raises(ValueError, match=r"step_000003.safetensors: bracket record.*no checkpoint.*move"):
            read()


def test_a_same_size_overwrite_of_a_record_is_refused_then_recomputed(run, capsys):
    """The issue: a zeroed logit_perturbation of the same size was used silently."""
    good = storage.load_tensors(run.record(4))
    meta = storage.read_metadata(run.record(4))
    forged = dict(good, logit_perturbation=torch.zeros_like(good["logit_perturbation"]))
    size = run.record(4).stat().st_size
    storage.atomic_save_tensors(run.record(4), forged, meta)
    assert run.record(4).stat().st_size == size
    with pytest.raises(ValueError, match=r"step_000004.safetensors was altered"):
        analysis.load_run_brackets(PROFILE, run.root)
    analyse(run.root)
    assert "Recomputing 1 bracket record(s)" in capsys.readouterr().out
    assert torch.equal(analysis.load_run_brackets(PROFILE, run.root).logit_perturbation[2],
                       good["logit_perturbation"])


def test_a_record_of_another_analysis_or_another_checkpoint_is_foreign(run):
    wider = get_profile("ci", **{**SETTINGS, "pushforward_batch": 6})     # same run, other analysis key
    with pytest.raises(ValueError, match="another analysis key"):
        analysis.load_run_brackets(wider, run.root)
    # The checkpoint a record summarises changes under it (retrained elsewhere, copied in).
    manifest = run_folder.read_manifest(run)
    manifest["checkpoints"]["2"]["sha256"]["weights"] = "0" * 64
    storage.atomic_write_json(run.manifest, manifest)
    with pytest.raises(ValueError, match="summarises another checkpoint 2"):
        analysis.load_run_brackets(PROFILE, run.root)


# ----------------------------------------------------------------------------- checkpoints that lie

def test_a_same_size_overwrite_of_a_checkpoints_weights_is_refused_and_train_writes_it_again(run, analysed, capsys):
    """The issue: altered weights were used silently and wrote NaN records."""
    weights = storage.load_tensors(run.weights(4))
    meta = storage.read_metadata(run.weights(4))
    storage.atomic_save_tensors(run.weights(4), {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                                 for k, v in weights.items()}, meta)
    with pytest.raises(ValueError, match=r"step_000004.safetensors was altered.*Call train again"):
        T.load_checkpoint(run.root, 4, PROFILE)
    run.record(4).unlink()                 # its record must be recomputed from the altered weights: refused
    with pytest.raises(ValueError, match=r"checkpoints/step_000004.safetensors was altered"):
        analyse(run.root)
    train(run.root)                       # checks every checkpoint, resumes from the last good one with state
    out = capsys.readouterr().out
    assert "Checkpoint 4 of" in out and "Resuming from step 2, the last checkpoint with its optimizer state" in out
    assert_same_checkpoints(run.root, analysed)                                   # deterministic: the same run
    analyse(run.root)
    assert analysis.load_run_brackets(PROFILE, run.root).steps == [0, 2, 4, 5]


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_bad_final_checkpoint_resumes_from_the_previous_one_with_a_message(run, analysed, damage, capsys,
                                                                             monkeypatch):
    """The issue: a deleted or truncated final checkpoint cost the run ('Delete ../runs/ci')."""
    if damage == "delete":
        run.weights(5).unlink()
    else:
        run.weights(5).write_bytes(run.weights(5).read_bytes()[:100])
    monkeypatch.chdir(run.root.parent)
    train(run.root)
    out = capsys.readouterr().out
    relative = f"run/checkpoints/step_000005.safetensors {'is missing' if damage == 'delete' else 'was altered'}"
    assert f"Checkpoint 5 of run cannot be used: {relative}" in out        # a path valid from here
    assert "Resuming from step 4" in out and "Delete" not in out
    assert_same_checkpoints(run.root, analysed)


def test_a_truncated_final_checkpoint_does_not_pass_as_a_finished_run(run):
    """The issue: a truncated final checkpoint passed 01 --force (train returned at once)."""
    run.weights(5).write_bytes(run.weights(5).read_bytes()[:-10])
    calls = []
    real = T.train_step
    T.train_step = lambda *args: calls.append(1) or real(*args)
    try:
        train(run.root)
    finally:
        T.train_step = real
    assert len(calls) == 1 and run_folder.checkpoint_problem(run, 5) is None


def test_a_bad_latest_optimizer_state_falls_back_to_the_one_before(tmp_path, analysed, capsys, monkeypatch):
    """Killed after 4 steps of 5: step 4 is the latest; its optimizer state is truncated, step 2's kept."""
    real = T.train_step
    with monkeypatch.context() as m:
        calls = []
        m.setattr(T, "train_step", lambda *a: (calls.append(1), real(*a))[1] if len(calls) < 4 else (_ for _ in ()).throw(
            KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path)
    paths = RunPaths(tmp_path)
    assert T.list_checkpoints(tmp_path) == [0, 2, 4] and paths.optimizer(2).exists()
    paths.optimizer(4).write_bytes(b"")
    train(tmp_path)
    assert "Resuming from step 2, the last checkpoint with its optimizer state" in capsys.readouterr().out
    assert_same_checkpoints(tmp_path, analysed)


def test_checkpoints_in_no_manifest_are_rewritten_but_another_runs_are_refused(tmp_path, analysed):
    """A folder from before manifests (or with a manifest lost): same run -> trained again, identically;
    another run's checkpoints -> refused, and the message deletes no more than the checkpoints."""
    shutil.copytree(analysed / "checkpoints", tmp_path / "same" / "checkpoints")
    train(tmp_path / "same")
    assert_same_checkpoints(tmp_path / "same", analysed)
    shutil.copytree(analysed / "checkpoints", tmp_path / "other" / "checkpoints")
    before = file_bytes(tmp_path / "other")
    with pytest.raises(ValueError, match=r"different run.*lr: 0.005 there, 0.001 now.*delete .*other/checkpoints alone"):
        train(tmp_path / "other", get_profile("ci", **SETTINGS, lr=1e-3))
    assert {k: v for k, v in file_bytes(tmp_path / "other").items() if k.name != ".lock"} == before


def test_a_corrupt_manifest_is_named(run):
    run.manifest.write_text("{ truncated")
    with pytest.raises(ValueError, match=r"manifest.json is corrupt"):
        T.list_checkpoints(run.root)


# ----------------------------------------------------------------------------- the lock

def test_two_trainings_in_lockstep_on_one_folder_neither_crashes(tmp_path):
    """The issue: two train() calls in lockstep crashed with FileNotFoundError on an optimizer file.
    Now the second waits for the first's lock, then finds the run finished."""
    results, errors = [], []

    def one():
        try:
            results.append(train(tmp_path))
        except BaseException as err:   # noqa: BLE001 - the test reports any failure
            errors.append(err)
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert T.list_checkpoints(tmp_path) == [0, 2, 4, 5]


def test_a_second_writer_refuses_with_a_clear_message(run, monkeypatch):
    monkeypatch.setattr(run_folder, "LOCK_WAIT_SECONDS", 0.2)
    with run_folder.lock(run):
        with pytest.raises(RuntimeError, match=r"Another process is writing to the run folder .*\.lock.*0.2 s"):
            train(run.root)
        with pytest.raises(RuntimeError, match="Another process is writing"):
            analyse(run.root)
        analysis.load_run_brackets(PROFILE, run.root)          # readers need no lock


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("setting,value,allowed", [
    ("steps", "abc", "an integer >= 1"), ("steps", -5, "an integer >= 1"), ("steps", 2.0, "an integer >= 1"),
    ("steps", True, "an integer >= 1"), ("lr", 0, "a number > 0"), ("lr", float("nan"), "a number > 0"),
    ("betas", 0.9, r"a pair \[beta1, beta2\], each in \[0, 1\)"), ("betas", [0.9, 1.0], "a pair"),
    ("betas", [0.9], "a pair"), ("loss", "nope", "one of 'independent', 'categorical_hair_matched'"),
    ("width", -1, "a number > 0"), ("batch_size", 0, "an integer >= 1"), ("checkpoint_every", 0, ">= 1"),
    ("data_source", "web", "one of 'generated', 'real'"), ("bracket_examples", 1, ">= 2"),
    ("pushforward_batch", 0, ">= 1"), ("seeds", [], "non-empty list"), ("seeds", [0, 0], "distinct"),
    ("seeds", [0, -1], "integers >= 0"), ("depth", 19, "one of 18, 34, 50"), ("save_full_brackets", "yes", "true or false"),
    ("generated_images", 2, ">= 3"), ("image_size", "32", "an integer"),
    ("hair_noise_band", -0.1, r"a number in \[0, 0.9\]"), ("glasses_noise_band", 0.95, r"in \[0, 0.9\]"),
    ("hair_noise_band", "0.1", "a number"),
])
def test_bad_settings_are_refused_naming_the_setting_and_what_it_accepts(setting, value, allowed):
    with pytest.raises(ValueError, match=f"Setting {setting} must be .*{allowed}.*; got"):
        get_profile("ci", **{setting: value})


def test_settings_consistency_and_safe_coercions():
    with pytest.raises(ValueError, match=r"checkpoint_every must be at most steps \(80\), got 100"):
        get_profile("ci", checkpoint_every=100)
    p = get_profile("default", lr=1, betas=[0.9, 0.99], seeds=[3, 4])     # as JSON from --set gives them
    assert p.lr == 1.0 and isinstance(p.lr, float) and p.betas == (0.9, 0.99) and p.seeds == (3, 4)
    assert p.hash() == get_profile("default", lr=1.0, betas=(0.9, 0.99), seeds=(3, 4)).hash()
    assert all(PROFILES[name] == get_profile(name) for name in PROFILES)


def test_noise_bands_change_the_hash_and_the_data_folder_only_when_on():
    from lie_helpers.training.config import data_dir, describe_source
    for name in PROFILES:                  # today's hashes and data folders stay as they were
        assert get_profile(name, hair_noise_band=0, glasses_noise_band=0.0).hash() == get_profile(name).hash()
    assert get_profile("default").hash() == "d73ebf2f9099" and get_profile("ci").hash() == "783eb744251a"
    assert data_dir(get_profile("default")).name == "generated-n4000-seed0"
    hair, glasses = get_profile("default", hair_noise_band=0.1), get_profile("default", glasses_noise_band=0.1)
    assert len({get_profile("default").hash(), hair.hash(), glasses.hash()}) == 3
    assert data_dir(hair).name == "generated-n4000-seed0-hairband0.1"
    assert data_dir(get_profile("default", hair_noise_band=0.3, glasses_noise_band=0.1)).name == \
        "generated-n4000-seed0-hairband0.3-glassesband0.1"
    assert "hair noise band 0.1" in describe_source(hair)
    assert run_paths(hair).root.name != run_paths(get_profile("default")).root.name
    with pytest.raises(ValueError, match="only exist for generated data"):
        get_profile("default", data_source="real", hair_noise_band=0.1)


# ----------------------------------------------------------------------------- one folder per experiment

def test_a_run_with_overrides_has_its_own_folder():
    assert run_folder_name("default") == "default"
    assert run_folder_name("default", {"steps": 1000}) == "default"        # the profile's own value
    name = run_folder_name("default", {"steps": 2000})
    assert name.startswith("default-steps2000-") and name == run_folder_name("default", {"steps": 2000})
    assert run_folder_name("default", {"steps": 2000, "lr": 1e-3}) == run_folder_name(
        "default", {"lr": 0.001, "steps": 2000})                           # order and spelling do not matter
    assert len({run_folder_name("default", o) for o in ({"steps": 2000}, {"steps": 3000}, {"lr": 1e-3})}) == 3
    odd = run_folder_name("default", {"data_root": "/tmp/my data/../x"})
    assert "/" not in odd and " " not in odd
    assert run_paths(get_profile("default", steps=2000)).root.name == name
    assert run_paths(get_profile("default")).root.name == "default"
    assert run_paths(get_profile("default", steps=2000), "elsewhere").root.name == "elsewhere"


def test_a_failed_run_with_overrides_does_not_block_the_profiles_run(tmp_path, monkeypatch):
    """The issue: a failed experiment left a step-0 checkpoint in runs/<profile> and the next run refused."""
    experiment = get_profile("ci", **{**SETTINGS, "lr": 1e-3})
    monkeypatch.setattr(T, "train_step", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(run_paths(experiment, runs_root=tmp_path).root, experiment)
    monkeypatch.undo()
    train(run_paths(PROFILE, runs_root=tmp_path).root)
    assert run_paths(PROFILE, runs_root=tmp_path).root != run_paths(experiment, runs_root=tmp_path).root


def test_checkpoint_and_optimizer_sizes_of_the_profiles():
    """What keeping every optimizer state would cost (reported in the README): Adam keeps two
    float32 tensors per parameter, twice the weights."""
    for name, expected in (("default", 5.6), ("full", 89.6)):
        p = get_profile(name)
        n = sum(t.numel() for t in T.build_model(p).parameters())
        megabytes = 2 * 4 * n / 1e6
        assert megabytes == pytest.approx(expected, rel=0.05), (name, n, megabytes)
