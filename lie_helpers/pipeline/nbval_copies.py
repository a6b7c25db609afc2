"""The notebooks as nbval runs them: each stage's notebook with the chain's parameters, unexecuted.

`make test` runs `pytest --nbval-lax` over these copies of the ci profile's notebooks: every cell top to
bottom in a fresh kernel, against the run folder the chain has just filled (nbval starts its kernel in the
notebook's folder, so the run folder and the data are given as absolute paths).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from papermill.parameterize import parameterize_notebook

from ..data.storage import atomic_write_bytes
from ..training.config import get_profile
from .stages import _plan, notebook_parameters, notebook_profile


def parameterised_copies(profile: str, dest, *, notebooks_dir=None, runs_root=None, run_dir=None,
                         overrides=None) -> list[Path]:
    """Each stage's notebook, unexecuted, with the chain's parameters injected and its folders made absolute (the
    run folder, the data), written to `dest`: what `pytest --nbval-lax DEST` runs top to bottom in a fresh kernel,
    from any directory, against the same run folder as the chain (whose finished work it reuses)."""
    plan = _plan(profile, notebooks_dir, runs_root, run_dir, overrides)
    data_root = (plan.notebooks_dir / get_profile(profile, **plan.overrides).data_root).resolve()
    given = {**plan.overrides, "data_root": str(data_root)}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in plan.stages:
        parameters = notebook_parameters(profile, given, plan.run_root, notebook_profile(stage.source))
        notebook = nbformat.read(stage.source, as_version=4)
        notebook.metadata.setdefault("papermill", {})
        notebook = parameterize_notebook(notebook, parameters)
        atomic_write_bytes(dest / stage.source.name, nbformat.writes(notebook).encode())
        written.append(dest / stage.source.name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lie_helpers.pipeline.nbval_copies",
                                     description="Write a profile's notebooks, parameterised, for nbval.")
    parser.add_argument("dest", type=Path, help="folder for the copies")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--run-dir", type=Path, help="the run folder (default: the profile's, as the chain's)")
    args = parser.parse_args(argv)
    for path in parameterised_copies(args.profile, args.dest, run_dir=args.run_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
