"""The primary readout's records: each run's source magnitudes at its last checkpoint (lie_helpers.study.sources);
beside them, the secondary Adam readout's (`step_NNNNNN.adam_sources.safetensors`, sources.adam_source_record, from the
checkpoint's own Adam state; its key adds the optimizer state file's sha256).

One file a run, `<run>/study_records/step_NNNNNN.sources.safetensors`, holding for each pre-registered stratum of
the example set sources.SOURCE_SET the per-pair (per-example) magnitudes of every source's self part, source part
and J·g, and the whole bracket's, on both scales (sources.record_from). Its key names what it depends on (the
run, the checkpoint's weights, the examples, the sources' definition); a record whose key differs is recomputed,
never read.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from . import sources
from .design import record_steps
from ..analysis.adam_records import load_adam_state
from ..analysis.records import fixed_inputs
from ..data import storage
from ..data.storage import json_digest
from ..training import run_folder
from ..training.config import Profile
from ..training.losses import get_loss
from ..training.train import load_checkpoint

SOURCE_VERSION = 1
ADAM_VERSION = 1


def source_step(profile: Profile) -> int:
    """The checkpoint the primary readout reads: the run's last."""
    return record_steps(profile)[-1]


def source_record_path(run_dir, step: int) -> Path:
    return Path(run_dir) / "study_records" / f"{run_folder.step_name(step)}.sources.safetensors"


def source_set(sets):
    """The example set the primary readout uses (sources.SOURCE_SET) among a seed's sets."""
    return next(s for s in sets if s.number == sources.SOURCE_SET)


def source_key(profile: Profile, run_dir, step: int, sets) -> str:
    """What a source record depends on: the run, the checkpoint's weights, the examples and the sources."""
    s = source_set(sets)
    weights = run_folder.checkpoint_entry(run_dir, step)["sha256"]["weights"]
    return json_digest({"run": profile.hash(), "weights": weights, "version": SOURCE_VERSION,
                        "groups": {k: list(v) for k, v in sources.SOURCE_GROUPS.items()},
                        "reference": list(sources.REFERENCE), "scales": list(sources.SCALES),
                        "examples": {k: s.bracket[k].tolist() for k in sources.SOURCE_STRATA},
                        "batch": s.pushforward.tolist()}, 16)


def stratum_inputs(profile: Profile, test, example_set, stratum: str, dtype=torch.float32):
    """(examples, targets, batch) of one stratum of an example set, as lie_helpers.analysis.fixed_inputs."""
    examples = example_set.bracket[stratum]
    return fixed_inputs(dataclasses.replace(profile, bracket_examples=len(examples),
                                            pushforward_batch=len(example_set.pushforward)),
                        (test.images, test.attributes), dtype=dtype, example_indices=examples,
                        batch_indices=example_set.pushforward)


def adam_record_path(run_dir, step: int) -> Path:
    return Path(run_dir) / "study_records" / f"{run_folder.step_name(step)}.adam_sources.safetensors"


def adam_key(profile: Profile, run_dir, step: int, sets) -> str:
    """What an Adam source record depends on: the source record's key and the checkpoint's Adam state file."""
    optimizer = run_folder.checkpoint_entry(run_dir, step)["sha256"]["optimizer"]
    return json_digest({"sources": source_key(profile, run_dir, step, sets), "optimizer": optimizer,
                        "version": ADAM_VERSION, "parts": list(sources.ADAM_PARTS)}, 16)


KINDS = {"sources": (source_record_path, source_key, "a source record"),
         "adam": (adam_record_path, adam_key, "an Adam source record")}


def analyse_sources(profile: Profile, run_dir, sets, test, kind: str = "sources") -> None:
    """Store the run's source record (kind "sources", sources.source_record; "adam": sources.adam_source_record with
    the checkpoint's own Adam state) at its last checkpoint, listed in the run folder's manifest (sha256 and key),
    unless one made under the same key verifies there; one that does not is recomputed, saying so."""
    where, key_of, what = KINDS[kind]
    step = source_step(profile)
    path, key = where(run_dir, step), key_of(profile, run_dir, step, sets)
    with run_folder.lock(run_dir):
        problem = run_folder.listed_file_problem(run_dir, _relative(run_dir, path), key)
        if problem is None:
            return
        if path.exists():
            print(f"Recomputing {what} that does not verify: {problem}", flush=True)
        model = load_checkpoint(run_dir, step, profile)
        state = (load_adam_state(run_dir, step, profile),) if kind == "adam" else ()
        make = sources.adam_source_record if kind == "adam" else sources.source_record
        loss_fn = get_loss(profile.loss)
        tensors = {}
        for stratum in sources.SOURCE_STRATA:
            record = make(model, loss_fn, *stratum_inputs(profile, test, source_set(sets), stratum), *state)
            tensors.update({f"{stratum}|{name}": torch.as_tensor(np.asarray(value)) for name, value in record.items()})
        storage.atomic_save_tensors(path, tensors, metadata={"key": key, "step": str(step),
                                                             "sources": ",".join(sources.SOURCES)})
        run_folder.add_file(run_dir, _relative(run_dir, path), key)


def _relative(run_dir, path: Path) -> str:
    return path.relative_to(Path(run_dir)).as_posix()


def load_source_record(profile: Profile, run_dir, sets, kind: str = "sources") -> dict:
    """stratum -> {name: array} of a run's source record (kind as analyse_sources), verified against its key (raises
    when it is missing, altered, or was made for other examples, weights, Adam state or sources)."""
    where, key_of, _ = KINDS[kind]
    step = source_step(profile)
    path = where(run_dir, step)
    problem = run_folder.listed_file_problem(run_dir, _relative(run_dir, path), key_of(profile, run_dir, step, sets))
    if problem:
        raise ValueError(f"{problem}: run the study again (`make study`, or records.train_study_runs), which "
                         "recomputes it.")
    out = {}
    for name, value in storage.load_tensors(path).items():
        stratum, rest = name.split("|", 1)
        out.setdefault(stratum, {})[rest] = value.numpy()
    return out
