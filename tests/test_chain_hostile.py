"""The chain cannot be fooled (issue 18): a deleted record reruns its stage, a second chain is refused, planted links
are refused, bad data is named before the first stage, Ctrl-C stops a run within seconds and the rerun resumes,
and notebook 05 runs with any seed. Dummy notebooks (tests/test_chain.py's) where the real ones are not needed;
the real notebooks on tiny settings where they are. Each starts kernels: marked slow."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from lie_helpers.data import generated_celeba, storage
from lie_helpers.pipeline import chain
from lie_helpers.pipeline.chain import ChainError, main
from lie_helpers.training import run_folder
from test_chain import chain_in, runs, write_notebook

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

CHECKPOINT = """
import torch
from lie_helpers.data import storage
from lie_helpers.training import run_folder
from lie_helpers.training.config import get_profile, run_paths
paths = run_paths(get_profile(profile, **overrides), run_dir)
with run_folder.lock(paths):       # the lock the chain holds: handed to this kernel
    storage.atomic_save_tensors(paths.weights(0), {"w": torch.ones(3)})
    storage.atomic_save_tensors(paths.optimizer(0), {"m": torch.zeros(3)})
    storage.atomic_write_json(paths.info(0), {"step": 0})
    run_folder.add_checkpoint(paths, 0, {"profile_hash": "x", "data_fingerprint": "y"})
"""
RECORD = """
import torch
from lie_helpers.data import storage
from lie_helpers.training import run_folder
from lie_helpers.training.config import get_profile, run_paths
paths = run_paths(get_profile(profile, **overrides), run_dir)
with run_folder.lock(paths):
    storage.atomic_save_tensors(paths.record(0), {"r": torch.rand(4)})
    run_folder.add_record(paths, 0, "key")
"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """tests/test_chain.py's layout: 00 logs, 01 writes a checkpoint, 02 a bracket record, both through run_folder."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))            # the kernels import this lie_helpers
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "figures").mkdir()
    log = tmp_path / "log.jsonl"
    write_notebook(tmp_path / "notebooks" / "00_data.ipynb", log)
    write_notebook(tmp_path / "notebooks" / "01_train.ipynb", log, body=CHECKPOINT)
    write_notebook(tmp_path / "notebooks" / "02_brackets.ipynb", log, body=RECORD, figure="brackets.png")
    return tmp_path


def statuses(repo):
    return dict(chain.list_stages("default", notebooks_dir=repo / "notebooks", runs_root=repo / "runs", log=lambda m: 0))


# ----------------------------------------------------------------------------- item 3

def test_a_deleted_or_altered_file_makes_its_stage_rerun(repo):
    """The issue: after `--only 01,02,03`, deleting brackets/step_000040.safetensors left every stage "skipped
    (unchanged)" and `--list` "up to date"."""
    assert [r[1] for r in chain_in(repo)] == ["ran"] * 3
    paths = run_folder.RunPaths(repo / "runs" / "default")
    state = json.loads((paths.root / "chain_state.json").read_text())
    assert "brackets/step_000000.safetensors" in state["stages"]["02_brackets"]["files"]
    paths.record(0).unlink()
    status = statuses(repo)
    assert status["00_data"] == status["01_train"] == "up to date"
    assert status["02_brackets"].startswith("a file it read changed") and "step_000000.safetensors is missing" in \
        status["02_brackets"]
    assert [r[1] for r in chain_in(repo)] == ["skipped", "skipped", "ran"]
    assert paths.record(0).exists() and set(statuses(repo).values()) == {"up to date"}
    # Altered with its size kept: the checkpoint's stage reruns (and writes it again).
    data = bytearray(paths.weights(0).read_bytes())
    data[-1] ^= 1
    paths.weights(0).write_bytes(bytes(data))
    assert "was altered" in statuses(repo)["01_train"]
    assert [r[1] for r in chain_in(repo)][:2] == ["skipped", "ran"]
    assert set(statuses(repo).values()) == {"up to date"}
    # A record whose manifest entry is gone is no longer one the stage's readers accept: the stage reruns.
    manifest = run_folder.read_manifest(paths)
    del manifest["records"]["0"]
    storage.atomic_write_json(paths.manifest, manifest)
    assert "no longer in the manifest" in statuses(repo)["02_brackets"]
    assert [r[1] for r in chain_in(repo)] == ["skipped", "skipped", "ran"]


# ----------------------------------------------------------------------------- item 5

WAIT_FOR_GO = """
import time, pathlib
ready = pathlib.Path(run_dir or "../runs/default").parent.parent / "in-stage-01"
ready.touch()
waited = time.time()
while not (ready.parent / "go").exists() and time.time() - waited < 300:
    time.sleep(0.1)
"""


def test_a_second_chain_on_the_same_run_folder_is_refused_naming_the_holder(repo, monkeypatch, capsys):
    """The issue: two `chain --only 02,03 --force` at once both ran both stages (the chain took no lock)."""
    write_notebook(repo / "notebooks" / "01_train.ipynb", repo / "log.jsonl", body=WAIT_FOR_GO + CHECKPOINT)
    first = subprocess.Popen([sys.executable, "-m", "lie_helpers.chain", "--root", str(repo), "--no-progress-bar"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo)
    try:
        started = time.time()
        while not (repo / "in-stage-01").exists():
            assert first.poll() is None and time.time() - started < 120, first.communicate()
            time.sleep(0.2)
        monkeypatch.setattr(run_folder, "LOCK_WAIT_SECONDS", 1.0)
        assert main(["--root", str(repo), "--no-progress-bar", "--force"]) == 1
        err = capsys.readouterr().err
        assert "Another process is writing to the run folder" in err and f"process {first.pid}" in err
        assert "lie_helpers.chain" in err
    finally:
        (repo / "go").touch()
        out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    assert [r["stage"] for r in runs(repo)] == ["00_data", "01_train", "02_brackets"]   # each ran once
    assert not (repo / "runs" / "default" / ".lock.holder").exists()


def test_planted_links_in_the_run_folder_are_refused(repo, tmp_path_factory):
    """The issue: a symlink planted at runs/ci/notebooks/02_brackets.partial.ipynb made the chain write notebook JSON
    into the file outside it pointed to; a planted figures/ symlink made figures land outside."""
    chain_in(repo, only="00")
    outside = tmp_path_factory.mktemp("outside")
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    partial = repo / "runs" / "default" / "notebooks" / "02_brackets.partial.ipynb"
    partial.symlink_to(victim)
    with pytest.raises(ChainError, match=r"02_brackets.partial.ipynb is a symbolic link inside the run folder"):
        chain_in(repo, only="02")
    assert victim.read_text() == "keep me" and [r["stage"] for r in runs(repo)] == ["00_data"]
    partial.unlink()
    (repo / "runs" / "default" / "figures").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ChainError, match=r"figures is a symbolic link inside the run folder.*remove it"):
        chain_in(repo, only="02")
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    (repo / "runs" / "default" / "figures").unlink()
    (repo / "figures" / "brackets.png").symlink_to(victim)             # a link where the chain copies a figure
    with pytest.raises(ChainError, match=r"brackets.png is a symbolic link inside figures/"):
        chain_in(repo, only="02")
    assert victim.read_text() == "keep me" and [r["stage"] for r in runs(repo)] == ["00_data"]


# ----------------------------------------------------------------------------- item 7

@pytest.fixture(scope="module")
def real_notebooks(tmp_path_factory):
    """A checkout's notebooks in a folder of their own (its runs/ and figures/ stay apart from the repository's)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "figures").mkdir()
    return root


@pytest.fixture(scope="module")
def ci_data(tmp_path_factory):
    """The ci profile's generated data (600 images), made once for this module's chains."""
    root = tmp_path_factory.mktemp("data")
    generated_celeba.generate_celeba(root / "generated-n600-seed0", 600, 0, progress=False)
    return root


def test_missing_real_data_is_named_before_any_stage_from_where_the_user_stands(real_notebooks, tmp_path, monkeypatch,
                                                                            capsys):
    """The issue: `--set data_source=real` without data ran notebook 00 (about a minute) before saying so, and told
    the user to put files into ../data/celeba/ (relative to notebooks/) and to "fix the notebook"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nodata").mkdir()
    run_dir = tmp_path / "run"
    rc = main(["--root", str(real_notebooks), "--run-dir", str(run_dir), "--no-progress-bar",
               "--set", "data_source=real", "--set", f"data_root={tmp_path / 'nodata'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "nothing has run" in err and "Traceback" not in err
    assert "into\n    nodata/celeba/ so that nodata/celeba/img_align_celeba/000001.jpg exists" in err
    assert "fix the notebook" not in err
    assert not (run_dir / "notebooks").exists()                   # notebook 00 never ran


def test_a_corrupt_test_image_is_named_before_training(real_notebooks, ci_data, tmp_path, capsys):
    """The issue: a corrupt test-split image (`--set data_root=…`) was found after notebook 01 had trained."""
    data = tmp_path / "data"
    shutil.copytree(ci_data / "generated-n600-seed0", data / "generated-n600-seed0")
    image = data / "generated-n600-seed0" / "celeba" / "img_align_celeba" / "000600.jpg"   # the last: test split
    image.write_bytes(image.read_bytes()[:200])
    run_dir = tmp_path / "run"
    rc = main(["--root", str(real_notebooks), "--profile", "ci", "--run-dir", str(run_dir), "--only", "01,02",
               "--no-progress-bar", "--set", f"data_root={data}"])
    err = capsys.readouterr().err
    assert rc == 1 and "000600.jpg cannot be decoded" in err and "nothing has run" in err
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "notebooks").exists()


# ----------------------------------------------------------------------------- item 9

STUBBORN = """
import os, pathlib, time
try:
    from lie_helpers.data import progress
except ImportError:             # a version without progress reports: the test still sends its Ctrl-C
    progress = None
home = pathlib.Path(run_dir or "../runs/default").parent.parent
home.joinpath("kernel.pid").write_text(str(os.getpid()))
if progress:
    progress.note("a stubborn cell: it swallows KeyboardInterrupt")
step = 0
while True:
    try:
        step += 1
        if progress:
            progress.report("spinning", step, 10**6, unit="turns")
        if step == 40:
            home.joinpath("spinning").touch()
        time.sleep(0.05)
    except KeyboardInterrupt:
        pass
"""


class Chain:
    """The chain in a subprocess of its own process group (as a terminal runs it), its output in files."""

    def __init__(self, command, folder: Path, **kwargs):
        self.out, self.err = folder / "chain.out", folder / "chain.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, start_new_session=True, **kwargs)

    def interrupt_when(self, ready, timeout=300, signum=signal.SIGINT, group: bool = True) -> float:
        """SIGINT to the chain's process group (a terminal's Ctrl-C; `group=False`: to the chain alone), or `signum`
        to the chain alone, once ready(stdout) holds; the seconds until the chain exited (60 and a SIGKILL when it
        does not)."""
        started = time.time()
        while not ready(self.out.read_text()):
            assert self.proc.poll() is None, f"the chain ended first:\n{self.out.read_text()}\n{self.err.read_text()}"
            assert time.time() - started < timeout, f"never ready:\n{self.out.read_text()}\n{self.err.read_text()}"
            time.sleep(0.2)
        sent = time.monotonic()
        if signum == signal.SIGINT and group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            os.kill(self.proc.pid, signum)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)              # not stopped: the test fails, leaving nothing
            self.proc.wait()
        return time.monotonic() - sent


def stop_bound(seconds: float = 15.0) -> float:
    """`seconds` on an idle machine, proportionally more on a busy one (load per core above 1): the stop is a chain of
    process wake-ups (kernel SIGINT, grace, SIGKILL, papermill noticing), each slowed by contention; measured 4–7 s idle
    and 20–26 s at a load of 3 per core."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_a_stage_whose_cell_ignores_it_within_seconds(repo, signum):
    """The issue: SIGINT to the chain and its process group went unheard (the notebook client's own SIGINT handler),
    and SIGTERM stopped it silently; here even a cell that swallows KeyboardInterrupt is stopped (its kernel is
    killed after a grace period), with the chain's message."""
    write_notebook(repo / "notebooks" / "01_train.ipynb", repo / "log.jsonl", body=STUBBORN)
    chain_run = Chain([sys.executable, "-m", "lie_helpers.chain", "--root", str(repo), "--no-progress-bar"], repo,
                      cwd=repo)
    kernel = repo / "kernel.pid"
    try:
        seconds = chain_run.interrupt_when(lambda out: (repo / "spinning").exists(), signum=signum)
    finally:
        if kernel.exists() and _pid_alive(int(kernel.read_text())):
            os.kill(int(kernel.read_text()), signal.SIGKILL)       # the test failed: leave no kernel spinning
            pytest.fail("the kernel outlived the chain")
    out, err = chain_run.out.read_text(), chain_run.err.read_text()
    print(f"stopped {seconds:.1f} s after {signal.Signals(signum).name}")
    assert chain_run.proc.returncode == 130 and seconds < stop_bound(), (seconds, stop_bound(), err)
    assert "a stubborn cell" in out and "spinning: 1 of 1000000 turns" in out    # notes and progress reach the terminal
    assert "Chain interrupted in stage 01_train (last progress: spinning:" in err
    assert f"To resume:\n  {sys.executable} -m lie_helpers.chain --root {repo} --no-progress-bar" in err
    assert not (repo / "runs" / "default" / ".lock.holder").exists()
    state = json.loads((repo / "runs" / "default" / "chain_state.json").read_text())
    assert list(state["stages"]) == ["00_data"]                      # 01 is not recorded as finished


def test_kill_int_stops_a_chain_started_in_the_background(repo):
    """`python -m lie_helpers.chain … &` from a script starts it with SIGINT ignored; `kill -INT` went unheard (found
    stopping the full run). The chain takes SIGINT back and stops as on Ctrl-C."""
    write_notebook(repo / "notebooks" / "01_train.ipynb", repo / "log.jsonl", body=STUBBORN)
    chain_run = Chain([sys.executable, "-m", "lie_helpers.chain", "--root", str(repo), "--no-progress-bar"], repo,
                      cwd=repo, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    seconds = chain_run.interrupt_when(lambda out: (repo / "spinning").exists(), group=False)
    assert chain_run.proc.returncode == 130 and seconds < stop_bound(), (seconds, chain_run.err.read_text())
    assert "Chain interrupted in stage 01_train" in chain_run.err.read_text()


def test_ctrl_c_mid_training_stops_within_seconds_and_the_rerun_resumes(real_notebooks, ci_data, tmp_path):
    """The issue: mid-training, SIGINT went unheard (training went on from step 250 to 850 and stage 01 finished),
    the terminal showed only a frozen "Executing 18/29 cells", and a resume said so only inside the notebook."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "lie_helpers.chain", "--root", str(real_notebooks), "--profile", "ci",
               "--run-dir", str(run_dir), "--only", "01", "--no-progress-bar", "--set", f"data_root={ci_data}",
               "--set", "steps=1000", "--set", "checkpoint_every=25"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    chain_run = Chain(command, tmp_path, env=env)
    steps = re.compile(r"training run: (\d+) of 1000 steps")         # training progress on the terminal
    seconds = chain_run.interrupt_when(lambda out: any(int(m) > 25 for m in steps.findall(out)))
    err = chain_run.err.read_text()
    print(f"stopped {seconds:.1f} s after SIGINT")
    assert chain_run.proc.returncode == 130 and seconds < stop_bound(), (seconds, stop_bound(), err)
    assert "Chain interrupted in stage 01_training (last progress: training run:" in err and "To resume" in err
    done = run_folder.complete_checkpoints(run_dir)
    assert 0 < done[-1] < 1000
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"training run: resuming from the checkpoint at step {done[-1]} of 1000" in again.stdout
    assert run_folder.complete_checkpoints(run_dir)[-1] == 1000


def test_notebook_05_runs_with_a_seed_outside_the_profiles_seeds(real_notebooks, ci_data, tmp_path):
    """The issue: `make run ARGS="--set seed=3"` failed in notebook 05 with KeyError: ('categorical_hair_matched', 3)."""
    run_dir = tmp_path / "run"
    rc = main(["--root", str(real_notebooks), "--profile", "ci", "--run-dir", str(run_dir), "--only", "01,05",
               "--no-progress-bar", "--set", "seed=3", "--set", "steps=20", "--set", "checkpoint_every=10",
               "--set", f"data_root={ci_data}"])
    assert rc == 0
    executed = nbformat.read(run_dir / "notebooks" / "05_symmetry.ipynb", as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert (run_dir / "hypothesis" / "categorical_hair_matched-seed3" / "manifest.json").exists()
    assert json.loads((run_dir / "results" / "05.json").read_text())["softmax_worst_share"] < 1e-9
