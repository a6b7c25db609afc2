"""The study's records: each run's bracket pushforwards and J·g at its last checkpoint (the old readout, reported
only), its source record (the primary readout, lie_helpers.study.source_records), and for the control run the
known-answer controls (lie_helpers.study.known_answers); made once and checked.

A record's key names what it depends on (the run, the checkpoint's weights, the example sets). Each record
is listed in its run folder's manifest (`files`, lie_helpers.training.run_folder) with that key and its
sha256, written under the run folder's lock: a record that is missing, made under another key or altered
since (even with its size kept) is recomputed by the study, saying so, and refused by `read_record`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm.auto import tqdm

from . import known_answers, source_records
from .design import arm_profile, arm_run_dir, control_run, record_steps, study_runs, study_sets
from .runs import SideRun, train_runs
from ..analysis.first_order import gradient_pushforward
from ..analysis.records import analyse_checkpoint, fixed_inputs
from ..data import storage
from ..data.storage import json_digest
from ..training import run_folder
from ..training.config import Profile
from ..training.losses import get_loss
from ..training.train import load_checkpoint

STUDY_VERSION = 1


def record_path(run_dir, step: int) -> Path:
    return Path(run_dir) / "study_records" / f"{run_folder.step_name(step)}.safetensors"


def record_key(profile: Profile, run_dir, step: int, sets) -> str:
    """What a study record depends on: the run, the checkpoint's weights and the example sets."""
    weights = run_folder.checkpoint_entry(run_dir, step)["sha256"]["weights"]
    return json_digest({"run": profile.hash(), "weights": weights, "version": STUDY_VERSION,
                        "sets": [(s.number, {k: v.tolist() for k, v in s.bracket.items()}, s.pushforward.tolist())
                                 for s in sets]}, 16)


def first_order_path(run_dir, step: int) -> Path:
    return Path(run_dir) / "study_records" / f"{run_folder.step_name(step)}.first_order.safetensors"


def _relative(run_dir, path: Path) -> str:
    return path.relative_to(Path(run_dir)).as_posix()


def read_record(run_dir, path: Path, key: str) -> dict:
    """The tensors of the study record at `path`, after checking it against the run folder's manifest and `key`;
    refuses (ValueError naming the file and the fix) a record that is missing, foreign or altered."""
    problem = run_folder.listed_file_problem(run_dir, _relative(run_dir, path), key)
    if problem is None and storage.read_metadata(path).get("key") != key:
        problem = f"{storage.show(path)} was made for other examples or weights"
    if problem:
        raise ValueError(f"{problem}: run the study again (`make study`, python -m lie_helpers.study, or notebook 04), "
                         "which recomputes it.")
    return storage.load_tensors(path)


def analyse_study_run(profile: Profile, run_dir, sets, test) -> None:
    """Store, at the last checkpoint (design.record_steps), every set's and stratum's bracket pushforwards and,
    beside them, what one gradient step predicts for the same examples and batch (J·g, any loss), unless records
    made under the same key (run, checkpoint, examples) that verify against the manifest exist. Holds the run
    folder's lock."""
    with run_folder.lock(run_dir):
        for step in record_steps(profile):
            _analyse_step(profile, run_dir, step, sets, test)


def _analyse_step(profile: Profile, run_dir, step: int, sets, test) -> None:
    loss_fn = get_loss(profile.loss)
    key = record_key(profile, run_dir, step, sets)
    paths = {"brackets": record_path(run_dir, step), "first_order": first_order_path(run_dir, step)}
    problems = {k: run_folder.listed_file_problem(run_dir, _relative(run_dir, path), key) for k, path in paths.items()}
    todo = [k for k, problem in problems.items() if problem]
    redo = [problems[k] for k in todo if paths[k].exists()]
    if redo:
        print(f"Recomputing study record(s) that do not verify: {'; '.join(redo)}", flush=True)
    if not todo:
        return
    model = load_checkpoint(run_dir, step, profile)
    tensors = {"brackets": {}, "first_order": {}}
    for s in sets:
        for stratum, examples in s.bracket.items():
            inputs = fixed_inputs(dataclasses.replace(profile, bracket_examples=len(examples),
                                                      pushforward_batch=len(s.pushforward)),
                                  (test.images, test.attributes), example_indices=examples,
                                  batch_indices=s.pushforward)
            name = f"{s.number}|{stratum}"       # strata names hold "/"
            if "brackets" in todo:               # brackets only: no per-attribute baselines
                record = analyse_checkpoint(model, loss_fn, *inputs)
                tensors["brackets"][f"{name}|logit_perturbation"] = record["logit_perturbation"]
                tensors["brackets"][f"{s.number}|batch_logits"] = record["batch_logits"]
            if "first_order" in todo:
                tensors["first_order"][f"{name}|gradient_pushforward"] = \
                    gradient_pushforward(model, loss_fn, *inputs).per_example
    for part in todo:
        storage.atomic_save_tensors(paths[part], tensors[part], metadata={"key": key, "step": str(step)})
        run_folder.add_file(run_dir, _relative(run_dir, paths[part]), key)


def train_study_runs(profile: Profile, run_dir, *, shard=(0, 1), progress: bool = True) -> dict:
    """Train (or resume, or skip) and analyse every run of the study in `run_dir`/study, or the runs k::n of
    shard (k, n) (two processes on two cores: `python -m lie_helpers.study --shard 0/2` and `1/2`).
    Returns seconds per (arm, seed)."""
    sets, test = study_sets(profile)
    runs = [SideRun(arm.name, seed, arm_profile(profile, arm, seed), arm_run_dir(run_dir, arm, seed))
            for arm, seed in study_runs(profile, shard)]

    def same_test_images(run: SideRun, splits: dict) -> None:
        if splits["test"].filenames != test.filenames:
            raise ValueError(f"Arm {run.name!r}: its test split has other images than the banded split; the study "
                             "compares arms on the same images.")

    def analyse(run: SideRun, splits: dict, progress: bool) -> None:
        analyse_study_run(run.profile, run.run_dir, sets[run.seed], splits["test"])
        source_records.analyse_sources(run.profile, run.run_dir, sets[run.seed], splits["test"])
        source_records.analyse_sources(run.profile, run.run_dir, sets[run.seed], splits["test"], kind="adam")
        if (run.name, run.seed) == control_run(profile):
            known_answers.control_record(profile, run_dir, sets[run.seed], splits["test"])

    return train_runs(tqdm(runs, desc="study runs", disable=not progress), analyse, check=same_test_images,
                      progress=False, label="study runs")
