"""Run the notebooks in order: the whole paper, data to figures, as one command.

    python -m lie_helpers.chain --profile default        # run (or resume) every stage
    python -m lie_helpers.chain --list                   # which stages are up to date
    python -m lie_helpers.chain --profile ci --force     # rerun everything
    python -m lie_helpers.chain --from 02 --set steps=200
    python -m lie_helpers.chain --update-references      # refresh the committed notebooks

Each `notebooks/NN_*.ipynb` is a stage. Stages run in order with papermill, the kernel
started in notebooks/ (so the notebooks' relative paths, e.g. ../runs, mean the same as
in Jupyter), and the executed copies are written to `runs/<run folder>/notebooks/`. The run
folder is runs/<profile> for a plain profile and runs/<profile>-<overrides>-<hash> with
--set (config.run_folder_name, which the notebooks compute alike), or --run-dir DIR.
papermill writes each executed notebook beside its place (`NN_name.partial.ipynb`), which
replaces the executed copy only when the stage succeeds: a failed stage never replaces a
good executed notebook, and its partial notebook is kept for debugging.

Stages of a profile. A profile runs the notebooks its `stages` setting names (config.Profile):
the default chain 00–03 and 05, the `study` profile notebook 04 alone (the decisive test,
`make study`), `ci` all of them.

Parameters. Every notebook's first code cell is tagged `parameters` and defines
`profile = "default"` (notebook 04: `"study"`), `overrides = {}` and `run_dir = None`. The chain
injects only what differs from a notebook's own defaults, so a plain run of that profile injects
nothing and its executed notebooks can become the committed ones (what a reader of the
repository sees): --update-references after `default` for 00–03 and 05, after `study` for 04. Their key
results are checked separately, with tolerances: `python -m lie_helpers.results RUN_DIR`.

Skipping. A stage's key hashes its cells, its parameters, the key of the previous stage's
last successful run, and the lie_helpers sources. A stage whose key matches the one
recorded in `<run folder>/chain_state.json`, whose executed notebook exists, and whose
files verify is skipped: editing notebook 03 reruns 03 and what follows, not the training
before it. Its files: when a stage finishes, the chain records the files the run folder's
manifests then list (checkpoints, bracket records, study records, side runs; with sha256),
less those a later stage wrote; a stage one of whose files is missing, altered or no longer
in the manifest as it was is not up to date, and reruns (and so do the stages after it).

Guards (lie_helpers.pipeline.preflight). The chain holds the run folder's lock for the whole
run (the lock training and analysis take, handed to its kernels: a second chain on the same
folder refuses, naming the holder); it refuses a symbolic link inside the run folder or
figures/; and before the first stage it loads every split of data the stages that will run
read (drawing generated data, decoding every image), so bad data is named before any work.

Ctrl-C (or SIGTERM) stops a run within seconds at any point (lie_helpers.pipeline.execution),
says where it stopped and how to resume; the rerun skips finished stages and training resumes
from its last checkpoint. While a stage runs, its progress (training steps, checkpoints
analysed, swaps, study runs, notes such as a resume) is printed on the terminal.
Figures. Each stage's record in chain_state.json lists the files it wrote into <run folder>/figures/
(new or changed while it ran). A run of a profile whose figures are the committed ones (not ci, no
overrides, no --run-dir) copies the files its stages wrote into figures/, and after a full run (every
stage of the profile run or up to date, no --only/--from) removes the stale ones: files of figures/
named NN_… for a stage NN of the profile that no stage wrote (lie_helpers.pipeline.committed_figures). So a figure a notebook
stops making, or renames, leaves figures/ with the next full run, and a file an older version left in
the run folder is not copied back. Kept: other profiles' figures (04 on a default run), files named
after no stage, and the files made by hand (MADE_BY_HAND). A partial run copies and removes nothing, but names the stale files.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import signal
import sys
import time
from importlib.metadata import version
from pathlib import Path


from .. import PACKAGE_DIR, REPO_DIR
from ..data.storage import SHOW_FROM, atomic_write_json, json_digest, read_json, show
from ..training import run_folder
from ..training.config import PROFILES, get_profile
from ..training.results import results_dir
from .committed_figures import figure_files, publish_figures, written_since
from .execution import StageInterrupted, execute
from .preflight import ChainError, check_data, refuse_links
from .stages import (KERNEL_NAME, NOTEBOOK_NAME, Plan, Stage, _plan, as_reference, disk_full_message,  # noqa: F401
                     failure_message, find_stages, kernel_warning, notebook_cells, notebook_parameters,
                     notebook_profile, parse_overrides, select_stages)

STATE_FILE = "chain_state.json"
PROGRESS_FILE = ".progress.jsonl"   # the running stage's progress (lie_helpers.data.progress), in the run folder
# The profiles whose plain runs make the committed notebooks: default for the paper's chain, study for
# notebook 04 (the decisive test, config.PROFILES["study"].stages).
REFERENCE_PROFILES = ("default", "study")


def say(message: str) -> None:
    """Print a progress line now, so it stays in order with papermill's progress bar (stderr)."""
    print(message, flush=True)


class ChainInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the chain; `where` says where."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


# ----------------------------------------------------------------------------- keys

# The arithmetic of a run: another thread count, kernel set or torch version trains another
# trajectory, so a stage run under one must not count as up to date under another.
ARITHMETIC_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


# The chain's own modules: how stages are run does not change what they compute.
CHAIN_MODULES = ("chain.py", "execution.py", "preflight.py", "stages.py")


def package_fingerprint(package_dir=PACKAGE_DIR) -> str:
    """Hash of the lie_helpers sources the notebooks run and of the arithmetic they run with
    (torch's version, the CPU count, `ARITHMETIC_VARIABLES`). The chain itself (CHAIN_MODULES) is
    left out: how stages are run does not change what they compute."""
    files = sorted(p for p in Path(package_dir).rglob("*.py")
                   if p.name not in CHAIN_MODULES and "__pycache__" not in p.parts)
    arithmetic = {"torch": version("torch"), "cpus": os.cpu_count(),
                  **{name: os.environ.get(name) for name in ARITHMETIC_VARIABLES}}
    return json_digest([[str(p.relative_to(package_dir)), p.read_text(encoding="utf-8")] for p in files] + [arithmetic])


def stage_key(stage: Stage, parameters: dict, previous_key, fingerprint: str) -> str:
    """What a stage's result depends on: its cells, its parameters, the run of the stage
    before it (by that run's key) and the package sources."""
    return json_digest({"cells": notebook_cells(stage.source), "parameters": parameters,
                        "previous": previous_key, "package": fingerprint}, 16)


# ----------------------------------------------------------------------------- state

def load_state(run_root) -> dict:
    path = Path(run_root) / STATE_FILE
    state = read_json(path) if path.exists() else {}
    state.setdefault("stages", {})
    return state


def save_state(run_root, state: dict) -> None:
    atomic_write_json(Path(run_root) / STATE_FILE, state)


def stage_status(stage: Stage, key: str, record: dict | None, run_root, hashes: dict | None = None) -> str:
    """"up to date" when the stage's recorded key is `key`, its executed notebook exists and the files it read
    (record["files"]: run_folder.listed_files when it finished) verify; else why not."""
    if record is None:
        return "not run yet"
    if record.get("key") != key:
        return "changed since last run"
    if not stage.executed.exists():
        return "executed notebook missing"
    problem = run_folder.listed_files_problem(run_root, record.get("files", {}), hashes)
    return f"a file it read changed: {problem}" if problem else "up to date"


def stage_statuses(stages, state, parameters, fingerprint, run_root=None, hashes=None) -> list[tuple[Stage, str, str]]:
    """(stage, key it would run under now, status) for every stage, without running any.

    "up to date": its recorded key matches, its executed notebook exists and its files verify (stage_status).
    "upstream changed": it matches its predecessor's last run, but that predecessor will rerun.
    """
    rows, upstream_stale, previous = [], False, None
    hashes = {} if hashes is None else hashes
    for stage in stages:
        key = stage_key(stage, parameters[stage.name], previous, fingerprint)
        record = state["stages"].get(stage.name)
        status = stage_status(stage, key, record, run_root if run_root is not None else stage.executed.parents[1],
                              hashes)
        if status == "up to date" and upstream_stale:
            status = "upstream changed"
        upstream_stale |= status != "up to date"
        rows.append((stage, key, status))
        previous = record.get("key") if record else None
    return rows


# ----------------------------------------------------------------------------- running

def run_chain(profile: str = "default", *, notebooks_dir=None, runs_root=None, figures_dir=None,
              run_dir=None, overrides=None, force=False, only=None, start=None, update_references=False,
              package_dir=PACKAGE_DIR, kernel_name=KERNEL_NAME, progress_bar=True, log=say) -> list:
    """Run the chain for `profile`; returns [(stage name, "ran" | "skipped" | "not selected", seconds)].

    Folders default to the repository's notebooks/, runs/ and figures/. The run folder is
    runs/<run_folder_name(profile, overrides)> unless `run_dir` is given. Only a plain profile's
    run (not ci, no overrides, no run_dir) copies its figures to figures/.
    Everything that can be wrong with the request (profile, settings, stage names, links, the lock, the data)
    fails before any work. Raises ChainError with a message for the terminal when a notebook fails, and
    ChainInterrupted on Ctrl-C (KeyboardInterrupt) or SIGTERM, saying where it stopped.
    """
    figures_dir = Path(figures_dir or REPO_DIR / "figures").resolve()
    plan = _plan(profile, notebooks_dir, runs_root, run_dir, overrides)
    run_root, stages = plan.run_root, plan.stages
    if update_references and (plan.overrides or plan.own_folder or profile not in REFERENCE_PROFILES):
        why = (f"profile {profile!r}" if profile not in REFERENCE_PROFILES
               else "--set overrides" if plan.overrides else f"a run folder elsewhere ({run_root})")
        raise ChainError(
            f"--update-references is only for a plain run of {' or '.join(map(repr, REFERENCE_PROFILES))} "
            f"(each updates its own notebooks), not for {why}. The committed notebooks are what a reader sees "
            "when they open notebooks/, so they must come from the profile that notebook is committed from.")
    if not stages:
        raise ChainError(f"No notebooks named NN_*.ipynb in {plan.notebooks_dir}.")
    selected = {s.name for s in select_stages(stages, only, start)}
    warning = kernel_warning(kernel_name)
    if warning:
        log(f"Warning: {warning}")
    where = ["before the first stage (taking the run folder's lock)"]
    try:
        refuse_links(run_root, "the run folder")
        refuse_links(figures_dir, "figures/")
        with _messages_from_here(), _held(run_root):
            return _run_locked(profile, plan, selected, figures_dir, force, update_references, package_dir,
                               kernel_name, progress_bar, log, where)
    except StageInterrupted as err:
        raise ChainInterrupted(f"{where[0]} ({err.where})") from None
    except KeyboardInterrupt:
        raise ChainInterrupted(where[0]) from None


@contextlib.contextmanager
def _messages_from_here():
    """Messages of the notebooks' kernels (which run in notebooks/) give paths from where the chain was started."""
    previous = os.environ.get(SHOW_FROM)
    os.environ[SHOW_FROM] = previous or os.getcwd()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SHOW_FROM, None)


@contextlib.contextmanager
def _held(run_root: Path):
    """The run folder's lock for the whole run, handed to the kernels (run_folder.lock, hand_on)."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(run_folder.lock(run_root, hand_on=True))
    except run_folder.LockError as err:
        raise ChainError(str(err)) from None
    with stack:
        yield


def _run_locked(profile, plan, selected, figures_dir, force, update_references, package_dir, kernel_name,
                progress_bar, log, where) -> list:
    notebooks_dir, run_root, parameters, stages = plan.notebooks_dir, plan.run_root, plan.parameters, plan.stages
    where[0] = "before the first stage (checking which stages are up to date)"
    fingerprint = package_fingerprint(package_dir)
    state = load_state(run_root)
    state["profile"], state["parameters"] = profile, parameters
    hashes = {}      # what the statuses read of the run folder, until a stage changes it
    rows = stage_statuses(stages, state, parameters, fingerprint, run_root, hashes)
    statuses = {s.name: status for s, _, status in rows}
    width = max(len(s.name) for s in stages)
    log(f"Chain '{profile}': {len(stages)} notebooks → {show(run_root)}"
        + (f" (overrides {plan.overrides})" if plan.overrides else ""))
    # The data of every selected stage from the first that will run on (one that reruns may make the next rerun).
    first = next((i for i, s in enumerate(stages) if s.name in selected and (force or statuses[s.name] != "up to date")),
                 len(stages))
    coming = [s.source for s in stages[first:] if s.name in selected]
    if coming:
        where[0] = "before the first stage (checking the data)"
        check_data(get_profile(profile, **plan.overrides), coming, notebooks_dir, log, progress=progress_bar)

    results, previous = [], None
    for i, stage in enumerate(stages, 1):
        label = f"[{i}/{len(stages)}] {stage.name:<{width}}"
        key = stage_key(stage, parameters[stage.name], previous, fingerprint)
        record = state["stages"].get(stage.name)
        status = stage_status(stage, key, record, run_root, hashes)
        if stage.name not in selected:
            if statuses[stage.name] != "up to date" and any(
                    s.name in selected for s in stages[i:]):
                log(f"{label}  not selected; warning: {statuses[stage.name]}, so the stages after it "
                    "may read stale or missing results")
            results.append((stage.name, "not selected", 0.0))
        elif not force and status == "up to date":
            log(f"{label}  skipped (unchanged; --force reruns)")
            results.append((stage.name, "skipped", 0.0))
        else:
            if status.startswith("a file it read changed"):
                log(f"{label}  {status}")
            where[0] = f"in stage {stage.name}"
            seconds = _run_stage(stage, key, parameters[stage.name], state, plan, kernel_name, progress_bar, log,
                                 label)
            hashes.clear()
            where[0] = f"after stage {stage.name}, before the next"
            results.append((stage.name, "ran", seconds))
        previous = state["stages"].get(stage.name, {}).get("key")

    where[0] = "after the last stage (copying figures)"
    if profile != "ci" and not plan.own_folder and not plan.overrides:   # figures/ shows the plain profiles' runs
        publish_figures(stages, selected, state, run_root / "figures", figures_dir, log)
    if update_references:
        for stage, _, status in stage_statuses(stages, state, parameters, fingerprint, run_root):
            if status == "up to date":
                as_reference(stage.executed, stage.source)
                log(f"Updated reference {show(stage.source)}")
            else:
                log(f"Not updated {show(stage.source)}: {status}")
    return results


def _run_stage(stage: Stage, key: str, parameters: dict, state: dict, plan, kernel_name, progress_bar, log,
               label) -> float:
    """Execute one stage into its partial notebook, then make it the executed one and record the stage (its key
    and the files it depends on: see _depends_on); returns the seconds it took."""
    run_root = plan.run_root
    refuse_links(run_root, "the run folder")
    log(f"{label}  running …")
    started = time.perf_counter()
    before = run_folder.listed_files(run_root)
    figures_before = figure_files(run_root / "figures")
    try:
        # Its old results are about to be overwritten: forget them first, so an
        # interrupted or failed run is never mistaken for a finished one.
        state["stages"].pop(stage.name, None)
        save_state(run_root, state)
        # Its recorded results too: a result the notebook no longer records must not linger.
        (results_dir(run_root) / f"{stage.number}.json").unlink(missing_ok=True)
        stage.executed.parent.mkdir(parents=True, exist_ok=True)
        try:
            execute(stage.source, stage.partial, parameters or None, cwd=plan.notebooks_dir, kernel_name=kernel_name,
                    progress_bar=progress_bar, progress_file=run_root / PROGRESS_FILE, log=log)
        except (OSError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise ChainError(failure_message(stage, err)) from err
        os.replace(stage.partial, stage.executed)
        seconds = time.perf_counter() - started
        state["stages"][stage.name] = {"key": key, "seconds": round(seconds, 1),
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "files": _depends_on(stage, state, before, plan),
                                       "figures": written_since(figures_before, run_root / "figures")}
        save_state(run_root, state)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ChainError(disk_full_message(stage, err)) from err
        raise ChainError(failure_message(stage, err)) from err
    finally:
        if stage.name not in state["stages"]:        # failed or interrupted: what it wrote is still its own
            with contextlib.suppress(Exception):
                _depends_on(stage, state, before, plan)
                save_state(run_root, state)
    log(f"{label}  ran in {seconds:.1f} s")
    return seconds


def _depends_on(stage: Stage, state: dict, before: dict, plan) -> dict:
    """The files (run_folder.listed_files: path -> sha256) a stage that just ran depends on: those the manifests list
    now, except those a later stage wrote. Who wrote what is kept in state["writers"]: a listed file that is new, or
    changed, since `before` (the listing when the stage started) was written by this stage; a file whose writer
    is unknown (made outside the chain, e.g. by `make study`'s processes) counts as a dependency of every stage."""
    now = run_folder.listed_files(plan.run_root)
    writers = {path: name for path, name in state.get("writers", {}).items() if path in now}
    writers.update({path: stage.name for path, sha in now.items() if before.get(path) != sha})
    state["writers"] = writers
    order = {s.name: i for i, s in enumerate(plan.stages)}
    mine = order[stage.name]
    return {path: sha for path, sha in now.items() if order.get(writers.get(path), -1) <= mine}


def list_stages(profile: str = "default", *, notebooks_dir=None, runs_root=None, run_dir=None, overrides=None,
                package_dir=PACKAGE_DIR, log=say) -> list:
    """Print every stage with its status (what a run would do) and last run time."""
    plan = _plan(profile, notebooks_dir, runs_root, run_dir, overrides)
    state = load_state(plan.run_root)
    rows = stage_statuses(plan.stages, state, plan.parameters, package_fingerprint(package_dir), plan.run_root)
    log(f"Chain '{profile}' ({show(plan.run_root)}):" if rows else f"No notebooks in {plan.notebooks_dir}.")
    width = max((len(s.name) for s in plan.stages), default=0)
    for stage, _, status in rows:
        seconds = state["stages"].get(stage.name, {}).get("seconds")
        last = f"  (last run {seconds:.1f} s)" if seconds is not None else ""
        log(f"  {stage.name:<{width}}  {status}{last}")
    return [(stage.name, status) for stage, _, status in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lie_helpers.chain", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES)} (default: default)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a profile setting (JSON value where it parses); repeatable")
    parser.add_argument("--force", action="store_true", help="rerun every selected stage")
    parser.add_argument("--only", metavar="NN[,NN…]", help="run only these stages, e.g. 01,02")
    parser.add_argument("--from", dest="start", metavar="NN", help="run from this stage on")
    parser.add_argument("--update-references", action="store_true",
                        help="after a default-profile run, copy the executed notebooks over notebooks/")
    parser.add_argument("--list", action="store_true", help="print the stages and their status, run nothing")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide papermill's progress bar")
    parser.add_argument("--run-dir", type=Path, metavar="DIR",
                        help="run folder (default: runs/<profile>, or runs/<profile>-<overrides>-<hash> with "
                             "--set); its figures are not copied to figures/")
    parser.add_argument("--root", type=Path, default=REPO_DIR,
                        help="folder holding notebooks/, runs/ and figures/ (default: the repository)")
    args = parser.parse_args(argv)
    folders = {"notebooks_dir": args.root / "notebooks", "runs_root": args.root / "runs"}
    argv = sys.argv[1:] if argv is None else list(argv)
    resume = shlex.join([show(sys.executable), "-m", "lie_helpers.chain", *(a for a in argv if a != "--force")])
    try:    # SIGTERM stops like Ctrl-C, with the same message; so does SIGINT where a shell's `chain &` ignored it
        previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:                                         # not the main thread: signals are not ours to handle
        previous = {}
    try:
        overrides = parse_overrides(args.overrides)
        if args.list:
            list_stages(args.profile, overrides=overrides, run_dir=args.run_dir, **folders)
            return 0
        run_chain(args.profile, overrides=overrides, force=args.force, only=args.only, start=args.start,
                  update_references=args.update_references, progress_bar=not args.no_progress_bar,
                  figures_dir=args.root / "figures", run_dir=args.run_dir, **folders)
    except ChainError as err:
        print(f"\nChain stopped. {err}", file=sys.stderr)
        return 1
    except (ChainInterrupted, KeyboardInterrupt) as err:
        where = f" {err.where}" if isinstance(err, ChainInterrupted) else ""
        print(f"\nChain interrupted{where}. Finished stages are kept and will be skipped; an interrupted training or "
              f"analysis resumes from its last checkpoint or record. To resume:\n  {resume}", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
