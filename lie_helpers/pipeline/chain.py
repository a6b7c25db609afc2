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
recorded in `<run folder>/chain_state.json`, and whose executed notebook exists, is
skipped: editing notebook 03 reruns 03 and what follows, not the training before it.

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
import errno
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import papermill
from jupyter_client.kernelspec import KernelSpecManager
from papermill.exceptions import PapermillExecutionError

from .. import PACKAGE_DIR, REPO_DIR
from ..training.config import PROFILES, get_profile, run_folder_name
from ..training.results import results_dir
from ..data.storage import atomic_write_bytes, atomic_write_json, json_digest, read_json, show
from .committed_figures import figure_files, publish_figures, written_since

NOTEBOOK_NAME = re.compile(r"^(\d\d)_.+\.ipynb$")
KERNEL_NAME = "python3"   # ipykernel's own spec: the interpreter running the chain
STATE_FILE = "chain_state.json"
# The profiles whose plain runs make the committed notebooks: default for the paper's chain, study for
# notebook 04 (the decisive test, config.PROFILES["study"].stages).
REFERENCE_PROFILES = ("default", "study")


def say(message: str) -> None:
    """Print a progress line now, so it stays in order with papermill's progress bar (stderr)."""
    print(message, flush=True)


class ChainError(Exception):
    """A chain failure with a message meant for the person at the terminal."""


@dataclass
class Stage:
    """One notebook of the chain."""
    name: str            # file stem, e.g. "02_brackets"
    number: str          # its two-digit prefix, e.g. "02"
    source: Path         # the notebook in notebooks/
    executed: Path       # its executed copy in <run folder>/notebooks/

    @property
    def partial(self) -> Path:
        """Where papermill writes while the stage runs; renamed to `executed` on success."""
        return self.executed.with_suffix(".partial.ipynb")


# ----------------------------------------------------------------------------- discovery

def find_stages(notebooks_dir, run_root) -> list[Stage]:
    """The `NN_*.ipynb` notebooks of `notebooks_dir`, in order of their names."""
    paths = sorted(p for p in Path(notebooks_dir).glob("*.ipynb") if NOTEBOOK_NAME.match(p.name))
    return [Stage(p.stem, p.name[:2], p, Path(run_root) / "notebooks" / p.name) for p in paths]


def select_stages(stages: list[Stage], only=None, start=None) -> list[Stage]:
    """The stages named by `only` ("01,03") or from `start` ("02") on; all when neither.

    A stage may be named by its number ("2" or "02"), its stem or its file name.
    """
    if only and start:
        raise ChainError("Use either --only or --from, not both.")

    def find(token: str) -> int:
        token = token.strip().removesuffix(".ipynb")
        for i, stage in enumerate(stages):
            if token in (stage.name, stage.number) or (token.isdigit() and int(token) == int(stage.number)):
                return i
        raise ChainError(f"No stage {token!r}. Stages: {', '.join(s.name for s in stages)}.")

    if only:
        wanted = {find(t) for t in only.split(",") if t.strip()}
        return [s for i, s in enumerate(stages) if i in wanted]
    if start:
        return stages[find(start):]
    return list(stages)


# ----------------------------------------------------------------------------- keys

def notebook_cells(path) -> list:
    """Type and source of every cell. Markdown counts too: a skipped stage keeps its old
    executed copy, and --update-references must never copy stale text over an edit."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [[c.get("cell_type"), "".join(c.get("source", ""))] for c in nb.get("cells", [])]


# The arithmetic of a run: another thread count, kernel set or torch version trains another
# trajectory, so a stage run under one must not count as up to date under another.
ARITHMETIC_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def package_fingerprint(package_dir=PACKAGE_DIR) -> str:
    """Hash of the lie_helpers sources the notebooks run and of the arithmetic they run with
    (torch's version, the CPU count, `ARITHMETIC_VARIABLES`). The chain itself (this file) is
    left out: how stages are run does not change what they compute."""
    files = sorted(p for p in Path(package_dir).rglob("*.py")
                   if p.name != "chain.py" and "__pycache__" not in p.parts)
    arithmetic = {"torch": version("torch"), "cpus": os.cpu_count(),
                  **{name: os.environ.get(name) for name in ARITHMETIC_VARIABLES}}
    return json_digest([[str(p.relative_to(package_dir)), p.read_text(encoding="utf-8")] for p in files] + [arithmetic])


def stage_key(stage: Stage, parameters: dict, previous_key, fingerprint: str) -> str:
    """What a stage's result depends on: its cells, its parameters, the run of the stage
    before it (by that run's key) and the package sources."""
    return json_digest({"cells": notebook_cells(stage.source), "parameters": parameters,
                        "previous": previous_key, "package": fingerprint}, 16)


# ----------------------------------------------------------------------------- parameters

def parse_overrides(pairs) -> dict:
    """`["steps=200", "betas=[0.9,0.99]", "loss=softmax"]` → dict; JSON values where they parse."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ChainError(f"--set expects KEY=VALUE, got {pair!r}.")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def notebook_parameters(profile: str, overrides: dict, run_dir, notebook_profile: str = "default") -> dict:
    """Only what differs from the notebook's own defaults (profile=`notebook_profile`, overrides={},
    run_dir=None), so a plain run of a notebook's own profile injects no cell at all."""
    parameters = {}
    if profile != notebook_profile:
        parameters["profile"] = profile
    if overrides:
        parameters["overrides"] = overrides
    if run_dir is not None:
        parameters["run_dir"] = str(run_dir)
    return parameters


def notebook_profile(path) -> str:
    """The profile a notebook's `parameters` cell sets (`profile = "..."`): "default" for all but notebook 04."""
    for cell in json.loads(Path(path).read_text())["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            found = re.search(r"""^profile\s*=\s*["']([^"']+)["']""", "".join(cell["source"]), re.M)
            if found:
                return found.group(1)
    return "default"


def load_state(run_root) -> dict:
    path = Path(run_root) / STATE_FILE
    state = read_json(path) if path.exists() else {}
    state.setdefault("stages", {})
    return state


def save_state(run_root, state: dict) -> None:
    atomic_write_json(Path(run_root) / STATE_FILE, state)


def stage_statuses(stages, state, parameters, fingerprint) -> list[tuple[Stage, str, str]]:
    """(stage, key it would run under now, status) for every stage, without running any.

    "up to date": its recorded key matches and its executed notebook exists.
    "upstream changed": it matches its predecessor's last run, but that predecessor will rerun.
    """
    rows, upstream_stale, previous = [], False, None
    for stage in stages:
        key = stage_key(stage, parameters[stage.name], previous, fingerprint)
        record = state["stages"].get(stage.name)
        if record is None:
            status = "not run yet"
        elif record.get("key") != key:
            status = "changed since last run"
        elif not stage.executed.exists():
            status = "executed notebook missing"
        elif upstream_stale:
            status = "upstream changed"
        else:
            status = "up to date"
        upstream_stale |= status != "up to date"
        rows.append((stage, key, status))
        previous = record.get("key") if record else None
    return rows


# ----------------------------------------------------------------------------- kernel

def kernel_warning(kernel_name=KERNEL_NAME):
    """A warning when `kernel_name` would not run this interpreter (a user-level kernelspec
    shadowing ipykernel's own), else None: the notebooks must see this environment."""
    try:
        argv0 = KernelSpecManager().get_kernel_spec(kernel_name).argv[0]
    except Exception as err:  # no such kernel: papermill will say so with the notebook named
        return f"kernel {kernel_name!r} not found ({err})."
    version = sys.version_info
    if argv0 in {"python", f"python{version[0]}", f"python{version[0]}.{version[1]}"}:
        return None   # jupyter_client substitutes sys.executable for these
    if os.path.abspath(argv0) != os.path.abspath(sys.executable):
        return (f"kernel {kernel_name!r} runs {argv0}, not this interpreter ({sys.executable}); "
                f"the notebooks may not see lie_helpers. Check `jupyter kernelspec list`.")
    return None


# ----------------------------------------------------------------------------- running

def _failure_message(stage: Stage, err) -> str:
    """Name the notebook, the cell and the exception, and where the partial notebook is."""

    where = show(stage.source)
    if isinstance(err, PapermillExecutionError):
        cells = notebook_cells(stage.source)
        number = next((i + 1 for i, (kind, src) in enumerate(cells)
                       if kind == "code" and src == err.source), err.cell_index + 1)
        first_line = next((line for line in err.source.splitlines() if line.strip()), "")
        what = (f"cell {number} of {len(cells)} (In [{err.exec_count}]): {first_line.strip()}\n"
                f"  {err.ename}: {err.evalue}")
    else:
        what = f"{type(err).__name__}: {err}"
    partial = (f"The partially executed notebook, with the full traceback: {show(stage.partial)}"
               if _keep_valid_partial(stage) else "No partially executed notebook could be written.")
    return (f"Stage {stage.name} failed: {where}, {what}\n{partial}\n"
            f"Earlier stages' results are kept; fix the notebook and re-run (finished stages are skipped).")


def _keep_valid_partial(stage: Stage) -> bool:
    """Whether the partial notebook is there and valid JSON; one cut short (a full disk) is removed."""
    try:
        json.loads(stage.partial.read_text(encoding="utf-8"))
        return True
    except FileNotFoundError:
        return False
    except (ValueError, UnicodeDecodeError):
        stage.partial.unlink(missing_ok=True)
        return False


def _disk_full_message(stage: Stage, err: OSError) -> str:
    kept = ("the partially executed notebook: " + show(stage.partial) if _keep_valid_partial(stage)
            else "no partial notebook is left (it could not be written completely)")
    return (f"Stage {stage.name} stopped: the disk is full ({err}); {kept}. Earlier stages' results and "
            "executed notebooks are kept. Free disk space and run the chain again (finished stages are skipped).")


def as_reference(executed: Path, target: Path) -> None:
    """Copy an executed notebook over its source, without papermill's run metadata (paths,
    timings) so the committed reference only changes when its content does."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    nb.get("metadata", {}).pop("papermill", None)
    for cell in nb.get("cells", []):
        for key in ("papermill", "execution"):
            cell.get("metadata", {}).pop(key, None)
    atomic_write_bytes(target, (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def run_chain(profile: str = "default", *, notebooks_dir=None, runs_root=None, figures_dir=None,
              run_dir=None, overrides=None, force=False, only=None, start=None, update_references=False,
              package_dir=PACKAGE_DIR, kernel_name=KERNEL_NAME, progress_bar=True, log=say) -> list:
    """Run the chain for `profile`; returns [(stage name, "ran" | "skipped" | "not selected", seconds)].

    Folders default to the repository's notebooks/, runs/ and figures/. The run folder is
    runs/<run_folder_name(profile, overrides)> unless `run_dir` is given. Only a plain profile's
    run (not ci, no overrides, no run_dir) copies its figures to figures/, and only a full one removes the
    stale ones there (see the module's "Figures").
    Everything that can be wrong with the request (profile, settings, stage names) fails before any work.
    Raises ChainError with a message for the terminal when a notebook fails.
    """
    figures_dir = Path(figures_dir or REPO_DIR / "figures").resolve()
    plan = _plan(profile, notebooks_dir, runs_root, run_dir, overrides)
    notebooks_dir, run_root, parameters, stages = plan.notebooks_dir, plan.run_root, plan.parameters, plan.stages
    overrides = plan.overrides
    if update_references and (overrides or plan.own_folder or profile not in REFERENCE_PROFILES):
        why = (f"profile {profile!r}" if profile not in REFERENCE_PROFILES
               else "--set overrides" if overrides else f"a run folder elsewhere ({run_root})")
        raise ChainError(
            f"--update-references is only for a plain run of {' or '.join(map(repr, REFERENCE_PROFILES))} "
            f"(each updates its own notebooks), not for {why}. The committed notebooks are what a reader sees "
            "when they open notebooks/, so they must come from the profile that notebook is committed from.")
    if not stages:
        raise ChainError(f"No notebooks named NN_*.ipynb in {notebooks_dir}.")
    selected = {s.name for s in select_stages(stages, only, start)}

    warning = kernel_warning(kernel_name)
    if warning:
        log(f"Warning: {warning}")
    fingerprint = package_fingerprint(package_dir)
    state = load_state(run_root)
    state["profile"], state["parameters"] = profile, parameters
    statuses = {s.name: status for s, _, status in stage_statuses(stages, state, parameters, fingerprint)}
    width = max(len(s.name) for s in stages)
    log(f"Chain '{profile}': {len(stages)} notebooks → {show(run_root)}"
        + (f" (overrides {overrides})" if overrides else ""))

    results, previous = [], None
    for i, stage in enumerate(stages, 1):
        label = f"[{i}/{len(stages)}] {stage.name:<{width}}"
        key = stage_key(stage, parameters[stage.name], previous, fingerprint)
        record = state["stages"].get(stage.name, {})
        if stage.name not in selected:
            if statuses[stage.name] != "up to date" and any(
                    s.name in selected for s in stages[i:]):
                log(f"{label}  not selected; warning: {statuses[stage.name]}, so the stages after it "
                    "may read stale or missing results")
            results.append((stage.name, "not selected", 0.0))
        elif not force and record.get("key") == key and stage.executed.exists():
            log(f"{label}  skipped (unchanged; --force reruns)")
            results.append((stage.name, "skipped", 0.0))
        else:
            log(f"{label}  running …")
            started = time.perf_counter()
            try:
                # Its old results are about to be overwritten: forget them first, so an
                # interrupted or failed run is never mistaken for a finished one.
                state["stages"].pop(stage.name, None)
                save_state(run_root, state)
                # Its recorded results too: a result the notebook no longer records must not linger.
                (results_dir(run_root) / f"{stage.number}.json").unlink(missing_ok=True)
                stage.executed.parent.mkdir(parents=True, exist_ok=True)
                figures_before = figure_files(run_root / "figures")
                try:
                    papermill.execute_notebook(
                        str(stage.source), str(stage.partial), parameters=parameters[stage.name] or None,
                        cwd=str(notebooks_dir), kernel_name=kernel_name, progress_bar=progress_bar)
                except OSError:
                    raise
                except Exception as err:
                    raise ChainError(_failure_message(stage, err)) from err
                os.replace(stage.partial, stage.executed)
                seconds = time.perf_counter() - started
                state["stages"][stage.name] = {"key": key, "seconds": round(seconds, 1),
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               "figures": written_since(figures_before, run_root / "figures")}
                save_state(run_root, state)
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise ChainError(_disk_full_message(stage, err)) from err
                raise ChainError(_failure_message(stage, err)) from err
            log(f"{label}  ran in {seconds:.1f} s")
            results.append((stage.name, "ran", seconds))
        previous = state["stages"].get(stage.name, {}).get("key")

    if profile != "ci" and not plan.own_folder and not overrides:   # figures/ shows the plain profiles' runs
        publish_figures(stages, selected, state, run_root / "figures", figures_dir, log)
    if update_references:
        rows = stage_statuses(stages, state, parameters, fingerprint)
        for stage, _, status in rows:
            if status == "up to date":
                as_reference(stage.executed, stage.source)
                log(f"Updated reference {show(stage.source)}")
            else:
                log(f"Not updated {show(stage.source)}: {status}")
    return results


def list_stages(profile: str = "default", *, notebooks_dir=None, runs_root=None, run_dir=None, overrides=None,
                package_dir=PACKAGE_DIR, log=say) -> list:
    """Print every stage with its status (what a run would do) and last run time."""
    plan = _plan(profile, notebooks_dir, runs_root, run_dir, overrides)
    state = load_state(plan.run_root)
    rows = stage_statuses(plan.stages, state, plan.parameters, package_fingerprint(package_dir))
    log(f"Chain '{profile}' ({show(plan.run_root)}):" if rows else f"No notebooks in {plan.notebooks_dir}.")
    width = max((len(s.name) for s in plan.stages), default=0)
    for stage, _, status in rows:
        seconds = state["stages"].get(stage.name, {}).get("seconds")
        last = f"  (last run {seconds:.1f} s)" if seconds is not None else ""
        log(f"  {stage.name:<{width}}  {status}{last}")
    return [(stage.name, status) for stage, _, status in rows]


@dataclass
class Plan:
    """What a chain request resolves to, before any work."""
    notebooks_dir: Path
    run_root: Path
    own_folder: bool     # an explicit run_dir: its figures stay there
    overrides: dict
    parameters: dict     # stage name -> what that notebook is given
    stages: list


def _plan(profile: str, notebooks_dir, runs_root, run_dir, overrides) -> Plan:
    """Check the request (profile and settings fail here, before any work) and resolve its folders: the run
    folder is `run_dir`, else <runs_root>/<run_folder_name>, the folder the notebooks find by themselves."""
    notebooks_dir = Path(notebooks_dir or REPO_DIR / "notebooks").resolve()
    runs_root = Path(runs_root or REPO_DIR / "runs").resolve()
    overrides = dict(overrides or {})
    try:
        folder = run_folder_name(profile, overrides)
    except ValueError as err:
        raise ChainError(str(err)) from None
    own_folder = run_dir is not None
    run_root = Path(run_dir).resolve() if own_folder else runs_root / folder
    # The notebooks find their run folder as ../runs/<folder> from notebooks/; say so only when it is elsewhere.
    injected = None if run_root == (notebooks_dir.parent / "runs" / folder).resolve() else run_root
    wanted = get_profile(profile, **overrides).stages     # the profile's notebooks (config.Profile.stages)
    stages = [s for s in find_stages(notebooks_dir, run_root) if not wanted or s.number in wanted]
    parameters = {s.name: notebook_parameters(profile, overrides, injected, notebook_profile(s.source)) for s in stages}
    return Plan(notebooks_dir, run_root, own_folder, overrides, parameters, stages)


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
    except KeyboardInterrupt:
        print("\nChain interrupted; finished stages are kept and will be skipped next time.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
