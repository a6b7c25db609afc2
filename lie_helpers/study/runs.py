"""Runs beside the main run, made one way: a profile, the folder it trains in, and an analysis.

Notebook 05 trains a run of each loss beside the main run (`loss_runs`); the study of notebook 04
trains one per arm and seed (lie_helpers.study.arms). `train_runs` trains each (or resumes it, or
finds it finished) and hands it to its analysis, so every run beside the main one is made the same way.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..analysis.records import analyse_run
from ..data.progress import report as report_progress
from ..training.datasets import load_profile_split
from ..training.config import Profile
from ..training.train import train

LOSS_NAMES = ("independent", "categorical_hair_matched")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SideRun:
    """One run beside the main run: what it is (a loss or an arm), its seed, its profile and its folder."""
    name: str
    seed: int
    profile: Profile
    run_dir: Path


def side_run_profile(profile: Profile, loss: str, seed: int, checkpoints: int = 5) -> Profile:
    """`profile` with `loss` and `seed`, trained for profile.side_run_steps steps (0: the profile's steps),
    saving about `checkpoints` checkpoints instead of every profile.checkpoint_every steps.

    The cadence is a multiple of the profile's, so every checkpoint also exists in the main run. It
    only thins what is saved (and analysed): checkpoints evaluate in eval mode without
    touching parameters, buffers or random state, so the trajectory is the same.
    """
    steps = profile.side_run_steps or profile.steps
    every = profile.checkpoint_every * max(1, round(steps / checkpoints / profile.checkpoint_every))
    return dataclasses.replace(profile, loss=loss, seed=seed, steps=steps, checkpoint_every=min(every, steps))


def loss_runs(profile: Profile, run_dir, checkpoints: int = 5, seeds=None) -> list[SideRun]:
    """A run of each loss of LOSS_NAMES for each of `seeds` (default profile.seeds), each saving about
    `checkpoints` checkpoints (see side_run_profile). The main run (notebook 01, in `run_dir`) is reused,
    with all its checkpoints, where it has that loss and seed."""
    runs = []
    for loss in LOSS_NAMES:
        for seed in (profile.seeds if seeds is None else seeds):
            if loss == profile.loss and seed == profile.seed:
                runs.append(SideRun(loss, seed, profile, Path(run_dir)))
            else:
                runs.append(SideRun(loss, seed, side_run_profile(profile, loss, seed, checkpoints),
                                    Path(run_dir) / "hypothesis" / f"{loss}-seed{seed}"))
    return runs


def profile_splits(profile: Profile) -> dict:
    """The train, valid and test splits of a profile's data (from the data's tensor cache)."""
    return {split: load_profile_split(profile, split, progress=False) for split in SPLITS}


def bracket_records(run: SideRun, data: dict, progress: bool = True) -> None:
    """The main run's analysis for a side run: its bracket records at every checkpoint (analyse_run)."""
    analyse_run(run.profile, (data["test"].images, data["test"].attributes), run_dir=run.run_dir,
                fingerprint=data["train"].fingerprint, progress=progress)


def train_runs(runs, analyse: Callable = bracket_records, *, data: dict | None = None, check: Callable | None = None,
               progress: bool = True, label: str = "runs beside the main run") -> dict:
    """Train every run (or resume it, or find it finished), then `analyse(run, splits, progress=…)`; returns
    seconds per (name, seed). data: the splits of every run (profile_splits); by default each run's own are
    loaded. check(run, splits): called before training, to refuse a run early. `label` names them on the
    chain's terminal (lie_helpers.data.progress)."""
    seconds = {}
    total = len(runs)
    for done, run in enumerate(runs):
        report_progress(label, done, total, f"next: {run.run_dir.name}", "runs")
        start = time.perf_counter()
        splits = data if data is not None else profile_splits(run.profile)
        if check is not None:
            check(run, splits)
        train(run.profile, run.run_dir, (splits["train"].images, splits["train"].attributes),
              (splits["valid"].images, splits["valid"].attributes), fingerprint=splits["train"].fingerprint,
              progress=progress)
        analyse(run, splits, progress=progress)
        seconds[(run.name, run.seed)] = time.perf_counter() - start
    report_progress(label, total, total, unit="runs")
    return seconds
