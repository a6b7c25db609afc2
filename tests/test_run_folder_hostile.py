"""A run folder that cannot be fooled, part two (issue 18): the reproductions of a hostile probe, each failing on
the version the issue was filed against. Chain-level ones (a deleted record, planted links, a second chain,
Ctrl-C) are in tests/test_chain_hostile.py."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lie_helpers.data import storage
from lie_helpers.training import run_folder
from lie_helpers.training import train as T
from lie_helpers.training.config import get_profile
from lie_helpers.training.run_folder import RunPaths
from test_run_folder import PROFILE, SETTINGS, analyse, train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, **kwargs)


@pytest.fixture(scope="module")
def trained(one_thread, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    train(run_dir)
    return run_dir


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return RunPaths(copy)


# ----------------------------------------------------------------------------- item 8: smaller

def test_a_files_sha256_is_the_same_in_every_process():
    """The issue: a checkpoint's sha256 differed between processes for identical tensors (the order of
    safetensors' metadata follows a per-process hash seed)."""
    code = ("import hashlib, sys, torch\nfrom lie_helpers.data import storage\n"
            "storage.atomic_save_tensors(sys.argv[1], {'w': torch.arange(6.0), 'b': torch.ones(2, dtype=torch.int64)},"
            " {k: i for i, k in enumerate(['step', 'profile_hash', 'key', 'seconds', 'tensor_names', 'zeta'])})\n"
            "print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())\n")
    hashes = set()
    for k in range(4):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code, f"/dev/shm/hash-{os.getpid()}-{k}.safetensors"],
                             capture_output=True, text=True, env=env, check=True).stdout
        Path(f"/dev/shm/hash-{os.getpid()}-{k}.safetensors").unlink()
        hashes.add(out.strip())
    assert len(hashes) == 1
    # And the files stay ordinary safetensors files.
    storage.atomic_save_tensors(Path("/dev/shm") / f"read-{os.getpid()}.safetensors", {"w": torch.arange(3.0)}, {"b": 1, "a": 2})
    path = Path("/dev/shm") / f"read-{os.getpid()}.safetensors"
    assert torch.equal(storage.load_tensors(path)["w"], torch.arange(3.0)) and storage.read_metadata(path) == {"a": "2", "b": "1"}
    path.unlink()


def test_temporary_files_of_a_killed_write_are_removed_on_the_next_run(run):
    """The issue: kill -9 during a write left .tmp files (up to 1.45 MB each) that nothing removed."""
    target = run.checkpoints / "step_000002.safetensors"
    killed = python("import os, signal, sys\nfrom lie_helpers.data import storage\n"
                    "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
                    f"storage.atomic_write_bytes({str(target)!r}, b'x' * 100000)\n")
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in run.checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].stat().st_size == 100000
    old = run.brackets / ".step_000004.safetensors.abc12345.tmp"     # the old naming (no owner): by age
    old.parent.mkdir(exist_ok=True)
    old.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = run.checkpoints / f".step_000005.json.{os.getpid()}.live1234.tmp"   # a live writer's: kept
    fresh.write_bytes(b"z")
    notes = run.root / "notes.tmp"                                    # not this project's: kept
    notes.write_bytes(b"mine")
    train(run.root)
    assert not left[0].exists() and not old.exists()
    assert fresh.exists() and notes.exists()


def test_a_lock_that_is_a_symbolic_link_is_refused_with_a_message(run, tmp_path):
    """The issue: a `.lock` symlink gave "Too many levels of symbolic links"."""
    outside = tmp_path / "outside"
    outside.write_text("keep")
    run.lock.unlink(missing_ok=True)
    run.lock.symlink_to(outside)
    with pytest.raises(RuntimeError, match=r"\.lock is a symbolic link.*remove it"):
        train(run.root)
    assert outside.read_text() == "keep"
    run.lock.unlink()
    run.lock.symlink_to(run.lock)                                     # a loop
    with pytest.raises(RuntimeError, match=r"\.lock is a symbolic link"):
        analyse(run.root)


def test_shard_0_of_0_is_a_message_before_any_data_loads(monkeypatch, capsys):
    """The issue: `--shard 0/0` was a traceback after the data loaded."""
    from lie_helpers.study import __main__ as study_cli, design

    monkeypatch.setattr(design, "study_sets", lambda *a, **k: pytest.fail("the data was loaded"))
    monkeypatch.setattr(study_cli, "train_study_runs", lambda *a, **k: pytest.fail("the runs were started"))
    for shard in ("0/0", "2/2", "=-1/2", "a/b", "1"):
        with pytest.raises(SystemExit, match=r"--shard .*K/N.*0 <= K < N") as err:
            study_cli.main(["--profile", "ci", f"--shard{shard}" if shard.startswith("=") else "--shard", *([] if shard.startswith("=") else [shard])])
        assert err.value.code != 0


# ----------------------------------------------------------------------------- item 7: bad input found early

def test_a_diverging_run_stops_at_once_with_the_step_and_the_learning_rate(tmp_path):
    """The issue: `--set lr=1000` trained to the end without a word (train loss 382,830); the run then failed in
    notebook 02 with "A log-log fit needs at least 3 positive points"."""
    wild = get_profile("ci", **{**SETTINGS, "steps": 40, "checkpoint_every": 10, "lr": 1000.0})
    calls = []
    real = T.train_step
    with pytest.MonkeyPatch.context() as m:
        m.setattr(T, "train_step", lambda *a: calls.append(1) or real(*a))
        with pytest.raises(T.TrainingDiverged, match=r"(?s)step \d+.*lr = 1000.*learning rate") as err:
            train(tmp_path, wild)
    assert len(calls) < 10, "it trained on after the loss exploded"
    assert "--set lr=" in str(err.value)
    assert T.list_checkpoints(tmp_path) == [0]          # nothing after the divergence is kept as a checkpoint


@pytest.mark.parametrize("what", ["loss", "weight"])
def test_training_stops_at_the_first_non_finite_loss_or_weight(tmp_path, monkeypatch, what):
    real, calls = T.train_step, []

    def step(model, *args):
        loss = real(model, *args)
        calls.append(1)
        if len(calls) == 3:
            if what == "loss":
                return float("nan")
            with torch.no_grad():
                next(model.parameters())[0].fill_(float("inf"))
        return loss
    monkeypatch.setattr(T, "train_step", step)
    with pytest.raises(T.TrainingDiverged, match=rf"(?s)non-finite {what}.*step 3.*learning rate"):
        train(tmp_path)
    assert len(calls) == 3 and T.list_checkpoints(tmp_path) == [0, 2]


def test_analysis_refuses_a_checkpoint_with_non_finite_weights_naming_it(run):
    """The issue: a checkpoint with NaN weights produced NaN bracket records registered as good in the manifest."""
    weights = storage.load_tensors(run.weights(4))
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
    storage.atomic_save_tensors(run.weights(4), weights, storage.read_metadata(run.weights(4)))
    key = run_folder.checkpoint_entry(run, 4)["key"]
    run_folder.add_checkpoint(run, 4, key)                  # registered as if training had written it
    with pytest.raises(ValueError, match=r"(?s)checkpoints/step_000004.safetensors.*non-finite"):
        analyse(run.root)
    assert "4" not in run_folder.read_manifest(run)["records"]
    with pytest.raises(ValueError, match=r"step_000004.safetensors.*non-finite"):
        T.load_checkpoint(run.root, 4, PROFILE)
