"""The chain's stages: the notebooks, their parameters, and what a stage that fails says.

Each `notebooks/NN_*.ipynb` is a stage (`find_stages`); `select_stages` picks some by number or name;
`notebook_parameters` is what a notebook is given (only what differs from its own defaults). The
messages of a failed stage name the notebook, the cell, the exception and the partial notebook.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from papermill.exceptions import PapermillExecutionError

from .. import REPO_DIR
from ..data.storage import atomic_write_bytes, show
from ..training.config import get_profile, run_folder_name
from .preflight import ChainError

NOTEBOOK_NAME = re.compile(r"^(\d\d)_.+\.ipynb$")
KERNEL_NAME = "python3"   # ipykernel's own spec: the interpreter running the chain


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


def notebook_cells(path) -> list:
    """Type and source of every cell. Markdown counts too: a skipped stage keeps its old
    executed copy, and --update-references must never copy stale text over an edit."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [[c.get("cell_type"), "".join(c.get("source", ""))] for c in nb.get("cells", [])]




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


def failure_message(stage: Stage, err) -> str:
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
               if keep_valid_partial(stage) else "No partially executed notebook could be written.")
    return (f"Stage {stage.name} failed: {where}, {what}\n{partial}\n"
            "Earlier stages' results are kept. Fix what the error names (the notebook, a setting or the data) and "
            "run the chain again (finished stages are skipped).")


def keep_valid_partial(stage: Stage) -> bool:
    """Whether the partial notebook is there and valid JSON; one cut short (a full disk) is removed."""
    try:
        json.loads(stage.partial.read_text(encoding="utf-8"))
        return True
    except FileNotFoundError:
        return False
    except (ValueError, UnicodeDecodeError):
        stage.partial.unlink(missing_ok=True)
        return False


def disk_full_message(stage: Stage, err: OSError) -> str:
    kept = ("the partially executed notebook: " + show(stage.partial) if keep_valid_partial(stage)
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
