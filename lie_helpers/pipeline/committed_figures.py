"""The committed figures/: what the chain copies there from a run folder, and the stale files it removes.

The chain records, per stage, the files the stage wrote into <run folder>/figures/ (new or changed while it
ran: `written_since` a `figure_files` snapshot). `publish_figures` copies those into figures/ and, after a
full run of the profile, removes the files of figures/ named NN_… for one of its stages NN that no stage
wrote: a figure a notebook no longer makes, or has renamed. It keeps other profiles' figures (notebook 04's on
a default run), files named after no stage, and MADE_BY_HAND.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..data.storage import show

STAGE_FIGURE = re.compile(r"^\d\d_")   # a figure of stage NN is named NN_…
# Files of figures/ that no stage writes and a full run keeps: the heatmap page's screenshot, taken with
# headless Chromium by lie_helpers.figures.page.screenshot_page (the README shows it; the chain needs no browser).
MADE_BY_HAND = frozenset({"03_logit_heatmaps_page.png"})


def figure_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (path relative to it) with its modification time (ns) and size."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def written_since(before: dict, folder: Path) -> list[str]:
    """The files of `folder` that are new or changed since `before` (a `figure_files` snapshot)."""
    return [name for name, stamp in figure_files(folder).items() if before.get(name) != stamp]


def stale_figures(figures_dir: Path, written, stages, keep=MADE_BY_HAND) -> list[str]:
    """Files of `figures_dir` named NN_… for a stage number NN of `stages` that are not in `written` nor `keep`."""
    if not Path(figures_dir).is_dir():
        return []
    written, stages = set(written), set(stages)
    return [p.name for p in sorted(Path(figures_dir).iterdir())
            if p.is_file() and STAGE_FIGURE.match(p.name) and p.name[:2] in stages
            and p.name not in written and p.name not in keep]


def copy_figures(source_dir: Path, figures_dir: Path, written, *, stale_stages=(), keep=MADE_BY_HAND) -> tuple[list, list]:
    """Copy the figures the stages wrote (`written`: paths relative to `source_dir`) into `figures_dir`, then remove
    the stale ones of `stale_stages` (`stale_figures`; none when empty, as after a partial run).

    Returns (copied, removed), paths relative to the folders. A written file that is gone from `source_dir` is
    not copied (and not removed from `figures_dir`).
    """
    source_dir, figures_dir = Path(source_dir), Path(figures_dir)
    copied = [name for name in sorted(set(written)) if (source_dir / name).is_file()]
    for name in copied:
        (figures_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_dir / name, figures_dir / name)
    removed = stale_figures(figures_dir, written, stale_stages, keep) if stale_stages else []
    for name in removed:
        (figures_dir / name).unlink()
    return copied, removed


def publish_figures(stages, selected, state, source_dir: Path, figures_dir: Path, log=print) -> None:
    """Copy what the stages wrote into figures/ and, after a full run, remove the stale figures there."""
    records = [state["stages"].get(s.name) for s in stages]   # None: the stage never ran in this run folder
    unrecorded = [s.name for s, record in zip(stages, records) if record is not None and "figures" not in record]
    if unrecorded:   # a stage last run by a chain that did not record its figures: copy all, remove nothing
        copied, _ = copy_figures(source_dir, figures_dir, figure_files(source_dir))
        log(f"Not checked for stale figures: {', '.join(unrecorded)} last ran before the chain recorded the "
            "figures each stage writes (--force reruns them).")
    else:
        written = sorted({name for record in records if record is not None for name in record["figures"]})
        full = all(s.name in selected for s in stages)
        numbers = [s.number for s in stages]
        copied, removed = copy_figures(source_dir, figures_dir, written, stale_stages=numbers if full else (),
                                       keep=MADE_BY_HAND)
        if removed:
            log(f"Removed {len(removed)} stale figure(s) from {show(figures_dir)} (no stage writes them): "
                + ", ".join(removed))
        elif not full and (stale := stale_figures(figures_dir, written, numbers, MADE_BY_HAND)):
            log(f"{len(stale)} figure(s) in {show(figures_dir)} no stage wrote ({', '.join(stale)}); "
                "a full run of the profile removes them.")
    if copied:
        log(f"Copied {len(copied)} figure(s) from {show(source_dir)} to {show(figures_dir)}.")
