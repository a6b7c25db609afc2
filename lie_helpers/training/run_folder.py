"""The run folder: its layout, the manifest that says which files are good, and its lock.

    manifest.json                                  what is complete, with content hashes (see below)
    metrics.json                                   one record per complete checkpoint (lie_helpers.training.train)
    checkpoints/step_000050.safetensors            model state_dict
    checkpoints/step_000050.optimizer.safetensors  Adam state (m, v, step count), kept at every checkpoint
    checkpoints/step_000050.json                   metadata: losses, accuracy, profile, data fingerprint
    brackets/step_000050.safetensors               the bracket record of checkpoint 50 (lie_helpers.analysis.records)
    brackets/full/step_000050.safetensors          optional (save_full_brackets): every full bracket (float16)
    hypothesis/<loss>-seed<k>/                     notebook 05's side run of another loss (lie_helpers.study.runs):
                                                   a run folder of its own (manifest, checkpoints/, brackets/, lock)
    study/<arm>-seed<k>/                           notebook 04's run of one arm and seed (lie_helpers.study.design):
                                                   a run folder of its own (manifest, checkpoints/, lock) with
    study/<arm>-seed<k>/study_records/step_000080[.first_order].safetensors
                                                   its study records (lie_helpers.study.records), in its manifest
    results/00.json …                              each notebook's key results (lie_helpers.training.results)
    figures/                                       the figures the notebooks save
    notebooks/NN_name.ipynb                        the chain's executed notebooks (NN_name.partial.ipynb: a failed
                                                   or interrupted stage's, kept for debugging)
    chain_state.json                               the chain's record of each finished stage: its key and the files
                                                   the manifests listed when it finished (lie_helpers.pipeline.chain)
    .lock, .lock.holder                            the lock, and who holds it (pid, host, command, since)
    .progress.jsonl                                while the chain runs a stage: its progress (lie_helpers.data.progress)

The manifest is the one source of truth. A checkpoint is complete when it has an entry
(written after its files, so a killed write leaves none), holding the sha256 of each file
and the key it was made under (profile hash and data fingerprint); a bracket record's entry
holds its sha256, its analysis key and the sha256 of the checkpoint weights it summarises;
other files (the study's records) are listed under `files` with their sha256 and key.
Loaders compare files with their entries: a missing, stray (no checkpoint of that step),
foreign (other key) or altered (other hash) file is never used silently. Writers hold the
folder's lock (`lock`), so two processes never write one run folder at once; the chain holds
it for a whole run and hands it to its notebooks' kernels. Taking the lock removes the
temporary files of writers that were killed (lie_helpers.data.storage); a lock file that is a
symbolic link is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from ..data import storage
from ..data.storage import show

LOCK_WAIT_SECONDS = 10.0    # how long a second writer waits for the lock before it refuses
# Locks a process holds on behalf of its children ({lock path: token}, JSON): the chain takes a run folder's lock
# and hands it to its notebooks' kernels, whose `lock` then enters without waiting (see `lock`).
HELD_LOCKS = "LIE_HELPERS_HELD_LOCKS"
MANIFEST_VERSION = 1


def step_name(step: int) -> str:
    return f"step_{step:06d}"


@dataclass(frozen=True)
class RunPaths:
    """Where one run's artifacts live. Each notebook reads the folders of the one before."""
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def brackets(self) -> Path:
        return self.root / "brackets"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def holder(self) -> Path:
        """Who holds the lock (pid, command, since when, a token): for messages and for handing the lock on."""
        return self.root / ".lock.holder"

    def weights(self, step: int) -> Path:
        return self.checkpoints / f"{step_name(step)}.safetensors"

    def optimizer(self, step: int) -> Path:
        return self.checkpoints / f"{step_name(step)}.optimizer.safetensors"

    def info(self, step: int) -> Path:
        return self.checkpoints / f"{step_name(step)}.json"

    def record(self, step: int) -> Path:
        return self.brackets / f"{step_name(step)}.safetensors"

    def full_record(self, step: int) -> Path:
        return self.brackets / "full" / f"{step_name(step)}.safetensors"


def _paths(run_dir) -> RunPaths:
    return run_dir if isinstance(run_dir, RunPaths) else RunPaths(Path(run_dir))


# ----------------------------------------------------------------------------- the lock

class LockError(RuntimeError):
    """The run folder's lock cannot be taken: another process holds it, or the lock file is a link."""


@contextlib.contextmanager
def lock(run_dir, timeout: float | None = None, *, hand_on: bool = False):
    """Hold the run folder's lock; a second writer waits `timeout` seconds (LOCK_WAIT_SECONDS), then refuses, naming
    the holder. On taking it, temporary files that killed writers left in the folder are removed.

    Re-entrant for the holder's own children: with `hand_on`, the lock is handed to child processes through the
    environment variable HELD_LOCKS (the chain does this for its notebooks' kernels), and a `lock` in a process
    that inherited it, while the holder that handed it on still holds it, enters at once.
    """
    paths = _paths(run_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    if paths.lock.is_symlink() or paths.holder.is_symlink():
        link = paths.lock if paths.lock.is_symlink() else paths.holder
        raise LockError(f"{show(link)} is a symbolic link, not this project's lock file: remove it "
                           f"(rm {show(link)}) and run again. The run folder's lock is never taken through a link.")
    if _handed_to_us(paths):
        yield
        return
    timeout = LOCK_WAIT_SECONDS if timeout is None else timeout
    file_lock = filelock.FileLock(paths.lock, timeout=timeout)
    try:
        file_lock.acquire()
    except filelock.Timeout:
        raise LockError(
            f"Another process is writing to the run folder {show(paths.root)} ({_holder_text(paths)}; it holds "
            f"{show(paths.lock)}; waited {timeout:g} s). Let it finish and run again (finished work is kept), or use "
            "another run folder.") from None
    token = secrets.token_hex(8)
    previous = os.environ.get(HELD_LOCKS)
    try:
        storage.atomic_write_json(paths.holder, {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                                                 "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
                                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        storage.remove_stale_temporaries(paths.root)
        if hand_on:
            os.environ[HELD_LOCKS] = json.dumps({**_held_locks(), str(paths.lock.resolve()): token})
        yield
    finally:
        if hand_on:
            if previous is None:
                os.environ.pop(HELD_LOCKS, None)
            else:
                os.environ[HELD_LOCKS] = previous
        with contextlib.suppress(OSError):
            paths.holder.unlink()
        file_lock.release()


def _held_locks() -> dict:
    try:
        held = json.loads(os.environ.get(HELD_LOCKS) or "{}")
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def _read_holder(paths: RunPaths) -> dict:
    try:
        holder = json.loads(paths.holder.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _handed_to_us(paths: RunPaths) -> bool:
    """Whether this process inherited the lock from a holder that still holds it (same token, same host, alive)."""
    token = _held_locks().get(str(paths.lock.resolve()))
    if not token:
        return False
    holder = _read_holder(paths)
    return (holder.get("token") == token and holder.get("host") == socket.gethostname()
            and isinstance(holder.get("pid"), int) and storage.pid_alive(holder["pid"]))


def _holder_text(paths: RunPaths) -> str:
    holder = _read_holder(paths)
    if not holder.get("pid"):
        return "holder unknown"
    return (f"process {holder['pid']} on {holder.get('host', '?')}, `{holder.get('command', '?')}`, "
            f"since {holder.get('since', '?')}")


# ----------------------------------------------------------------------------- the manifest

def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(run_dir) -> dict:
    """The manifest ({"checkpoints": {step: entry}, "records": {step: entry}, "files": {path: entry}}, steps as
    strings, paths relative to the run folder); empty when absent."""
    path = _paths(run_dir).manifest
    manifest = storage.read_json(path) if path.exists() else {}
    manifest.setdefault("version", MANIFEST_VERSION)
    manifest.setdefault("checkpoints", {})
    manifest.setdefault("records", {})
    manifest.setdefault("files", {})
    return manifest


def _write_manifest(run_dir, manifest: dict) -> None:
    storage.atomic_write_json(_paths(run_dir).manifest, manifest)


def complete_checkpoints(run_dir) -> list[int]:
    """Steps of the checkpoints the manifest lists as complete, ascending (their files are checked on use)."""
    return sorted(int(s) for s in read_manifest(run_dir)["checkpoints"])


def checkpoint_entry(run_dir, step: int) -> dict:
    entry = read_manifest(run_dir)["checkpoints"].get(str(step))
    if entry is None:
        raise FileNotFoundError(f"{show(_paths(run).root)} has no complete checkpoint at step {step} "
                                f"(complete: {complete_checkpoints(run)}).")
    return entry


def add_checkpoint(run_dir, step: int, key: dict) -> None:
    """Mark checkpoint `step` complete: hash its files (all written) into the manifest. Hold the lock."""
    paths = _paths(run_dir)
    manifest = read_manifest(paths)
    files = {"weights": paths.weights(step), "optimizer": paths.optimizer(step), "info": paths.info(step)}
    manifest["checkpoints"][str(step)] = {"key": key, "sha256": {k: sha256(p) for k, p in files.items()}}
    _write_manifest(paths, manifest)


def forget_checkpoints_after(run_dir, step: int) -> None:
    """Drop the entries of checkpoints after `step` (training rewrites them). Hold the lock."""
    manifest = read_manifest(run_dir)
    manifest["checkpoints"] = {s: e for s, e in manifest["checkpoints"].items() if int(s) <= step}
    _write_manifest(run_dir, manifest)


def checkpoint_problem(run_dir, step: int, parts=("weights", "info")) -> str | None:
    """Why checkpoint `step`'s `parts` (weights, optimizer, info) cannot be trusted, or None when they can."""
    paths = _paths(run_dir)
    entry = read_manifest(paths)["checkpoints"].get(str(step))
    if entry is None:
        return f"checkpoint {step} is not complete (no manifest entry in {show(paths.manifest)})"
    files = {"weights": paths.weights(step), "optimizer": paths.optimizer(step), "info": paths.info(step)}
    for part in parts:
        expected = entry["sha256"].get(part)
        if expected is None:
            return f"checkpoint {step} keeps no {part} state"
        problem = file_problem(files[part], expected)
        if problem:
            return problem
    return None


def file_problem(path: Path, expected_sha256: str) -> str | None:
    """'<path> is missing' or '<path> was altered …' when the file is not the one recorded, else None."""
    if not path.exists():
        return f"{show(path)} is missing"
    if sha256(path) != expected_sha256:
        return f"{show(path)} was altered or truncated (its sha256 differs from the manifest's)"
    return None


def add_record(run_dir, step: int, key: str) -> None:
    """Mark the bracket record of `step` (written) as made under `key` from the checkpoint now listed. Hold the lock."""
    paths = _paths(run_dir)
    manifest = read_manifest(paths)
    manifest["records"][str(step)] = {"key": key, "sha256": sha256(paths.record(step)),
                                      "checkpoint": manifest["checkpoints"][str(step)]["sha256"]["weights"]}
    _write_manifest(paths, manifest)


def record_problem(run_dir, step: int, key: str) -> str | None:
    """Why the bracket record of checkpoint `step` cannot be used under analysis `key`, or None when it can."""
    paths = _paths(run_dir)
    manifest = read_manifest(paths)
    entry, checkpoint = manifest["records"].get(str(step)), manifest["checkpoints"].get(str(step))
    path = paths.record(step)
    if entry is None or not path.exists():
        return f"{show(path)} is missing" if not path.exists() else f"{show(path)} is in no manifest entry"
    if entry["key"] != key:
        return f"{show(path)} was made under another analysis key (other settings or data)"
    if checkpoint is None or entry["checkpoint"] != checkpoint["sha256"]["weights"]:
        return f"{show(path)} summarises another checkpoint {step} than the one now in the run"
    return file_problem(path, entry["sha256"])


def add_file(run_dir, relative: str, key: str) -> None:
    """List the file `relative` (to the run folder; written) in the manifest with its sha256 and the key it was made
    under: the study's records (lie_helpers.study.records). Hold the lock."""
    paths = _paths(run_dir)
    manifest = read_manifest(paths)
    manifest["files"][relative] = {"key": key, "sha256": sha256(paths.root / relative)}
    _write_manifest(paths, manifest)


def listed_file_problem(run_dir, relative: str, key: str | None = None) -> str | None:
    """Why the file `relative` (to the run folder) cannot be used under `key` (None: any key), or None when it can:
    missing, in no manifest entry, made under another key, or altered since it was listed."""
    paths = _paths(run_dir)
    path, entry = paths.root / relative, read_manifest(paths)["files"].get(relative)
    if not path.exists():
        return f"{show(path)} is missing"
    if entry is None:
        return f"{show(path)} is in no manifest entry of {show(paths.manifest)}"
    if key is not None and entry["key"] != key:
        return f"{show(path)} was made under another key (for other examples or weights, or other settings)"
    return file_problem(path, entry["sha256"])


def listed_files(run_dir) -> dict[str, str]:
    """Every file the manifests of the run folder and of the runs inside it (hypothesis/, study/) list, as
    {path relative to the run folder: sha256}: what a stage that read the folder depends on (the chain
    records it when a stage finishes and checks it before calling the stage up to date)."""
    root = _paths(run_dir).root
    manifests = [root / "manifest.json"] if (root / "manifest.json").is_file() else []
    manifests += sorted(p for p in root.glob("*/*/manifest.json") if p.is_file())     # hypothesis/*/, study/*/
    listed = {}
    for path in manifests:
        paths, manifest = RunPaths(path.parent), read_manifest(path.parent)
        files = {}
        for step, entry in manifest["checkpoints"].items():
            parts = {"weights": paths.weights, "optimizer": paths.optimizer, "info": paths.info}
            files.update({parts[part](int(step)): sha for part, sha in entry["sha256"].items() if part in parts})
        files.update({paths.record(int(step)): entry["sha256"] for step, entry in manifest["records"].items()})
        files.update({paths.root / relative: entry["sha256"] for relative, entry in manifest["files"].items()})
        listed.update({p.relative_to(root).as_posix(): sha for p, sha in files.items()})
    return dict(sorted(listed.items()))


def listed_files_problem(run_dir, files: dict[str, str], hashes: dict | None = None) -> str | None:
    """The first of `files` ({relative path: sha256}, listed_files) that the manifests no longer list as it was, or
    that is missing or altered in the run folder (named as the user can type it), or None. `hashes` caches what
    is read (sha256 by path, the listing under None) across calls: clear it when the folder changes."""
    root = _paths(run_dir).root
    hashes = {} if hashes is None else hashes
    if None not in hashes:
        hashes[None] = listed_files(root)
    for relative, expected in files.items():
        path = root / relative
        if hashes[None].get(relative) != expected:
            return f"{show(path)} is no longer in the manifest as it was (its entry was removed or changed)"
        if path not in hashes:
            hashes[path] = sha256(path) if path.is_file() else None
        if hashes[path] is None:
            return f"{show(path)} is missing"
        if hashes[path] != expected:
            return f"{show(path)} was altered (its sha256 differs from when the stage ran)"
    return None


def stray_files(run_dir) -> list[Path]:
    """Checkpoint files and bracket records of steps that are no complete checkpoint (e.g. a copy under another
    step's name, or an interrupted write); training rewrites checkpoint files of the steps it reaches."""
    paths = _paths(run_dir)
    steps = set(complete_checkpoints(paths))
    files = [*paths.checkpoints.glob("step_*"), *paths.brackets.glob("step_*.safetensors")]
    return sorted(p for p in files if not (p.name[5:11].isdigit() and int(p.name[5:11]) in steps))
