"""The bracket analysis of a run (notebook 02's analyse_run) across processes, launched by torchrun.

    torchrun --nproc_per_node=2 -m lie_helpers.distributed --profile default [--run-dir DIR] [--set KEY=VALUE]

Every process joins torch.distributed (NCCL on GPUs, one GPU per process; gloo on CPUs).
Rank 0 holds the run folder's lock and decides which checkpoints need a record (missing or
not verifying, as analyse_run does). The ranks then share the work in one of two ways:

- checkpoints (few pairs): the ranks take the checkpoints round-robin, rank r the r-th,
  (r + world)-th, … of the sorted list, and compute each with the single-process code
  (analysis.store_record: the same inputs, the same function, the record written atomically);
  after each round a barrier, then rank 0 enters that round's records in the manifest.
- pairs (many examples): when one record has at least as many chunks of pairs as there are
  ranks (chunks of --pairs-per-call consecutive pairs, default brackets.PAIRS_PER_CALL = 32:
  N = 64 examples are 2,016 pairs in 63 chunks), all ranks work on one checkpoint at a time,
  rank r taking chunks r, r + world, …; each reduces its brackets on the fly, as one process
  does (analysis.reduced_brackets), the reductions (a few kB per pair) are gathered to rank 0
  (dist.gather_object), and rank 0 completes the record (gradients, logits, baselines:
  analysis.checkpoint_record), writes it atomically and enters it in the manifest. Not with
  save_full_brackets (the full brackets would travel between processes): those runs share
  checkpoints.

Either way the manifest is written by rank 0 alone and an interrupted analysis resumes per
checkpoint. On the CPU the records are bit for bit those of one process at the same number
of threads per process (torchrun sets OMP_NUM_THREADS=1 unless it is set) and the same
--pairs-per-call: a rank's chunks are the very vmapped calls one process makes.

The test split is the profile's (datasets.load_profile_split, as in notebook 02; rank 0 loads
and caches it first), or --test-tensors FILE: a safetensors file with `images` (uint8
[N, 3, S, S]) and `attributes` ([N, 40]) and the data fingerprint in its metadata, the form
of lie_helpers.data.celeba's split cache files.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..analysis import adam_records
from ..analysis import records as analysis
from ..data import storage
from ..training import datasets, run_folder
from ..engine.brackets import PAIRS_PER_CALL, BracketMatrix, pair_chunks
from .. import REPO_DIR
from .chain import ChainError, parse_overrides
from ..training.config import PROFILES, Profile, get_profile, run_paths
from ..data.storage import show
from ..training.train import load_checkpoint


def analyse_run_distributed(profile: Profile, test_data, *, run_dir, fingerprint: str, device, progress: bool = True,
                pairs_per_call: int | None = None) -> list[int]:
    """analysis.analyse_run with the checkpoints, or the pairs of each, shared among the ranks of the
    initialised process group (see the module docstring for which).

    Returns the steps whose record was computed (by all ranks together); every rank raises the
    errors analyse_run would.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    paths = run_paths(profile, run_dir)
    with run_folder.lock(paths) if rank == 0 else contextlib.nullcontext():
        plan = [None]
        if rank == 0:
            try:
                plan = [analysis.records_to_compute(paths, profile, fingerprint)]
            except (ValueError, FileNotFoundError) as err:
                plan = [err]
        dist.broadcast_object_list(plan, src=0)
        if isinstance(plan[0], Exception):
            raise plan[0]
        key, _, todo = plan[0]
        inputs = analysis.record_inputs(profile, test_data, device, pairs_per_call)
        if shares_pairs(profile, inputs.pairs_per_call, world):
            for step in tqdm(todo, desc=f"brackets ({world} processes, pairs shared)",
                             disable=not progress or rank != 0):
                store_shared_record(paths, profile, step, key, inputs)
                if rank == 0:
                    run_folder.add_record(paths, step, key)
            return todo
        mine = share(todo, rank, world)
        for turn in tqdm(range(-(-len(todo) // world)), desc=f"brackets ({world} processes)",
                         disable=not progress or rank != 0):
            if turn < len(mine):
                analysis.store_record(paths, profile, mine[turn], key, inputs)
            dist.barrier()
            if rank == 0:   # this turn's records, one from each rank
                for step in todo[turn * world:(turn + 1) * world]:
                    run_folder.add_record(paths, step, key)
    return todo


def shares_pairs(profile: Profile, pairs_per_call: int, world: int) -> bool:
    """Whether the ranks share the pairs of each checkpoint: at least one chunk of pairs per rank, no full brackets."""
    n = profile.bracket_examples
    chunks = len(pair_chunks(BracketMatrix(n).pairs, pairs_per_call))
    return world > 1 and chunks >= world and not profile.save_full_brackets


def store_shared_record(paths, profile: Profile, step: int, key: str, inputs: analysis.RecordInputs) -> None:
    """Checkpoint `step`'s record from all ranks: each reduces its chunks of pairs, rank 0 gathers and writes."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model = load_checkpoint(paths.root, step, profile, device=inputs.device)
    state = adam_records.load_adam_state(paths.root, step, profile, inputs.device) if inputs.adam else None
    start = time.perf_counter()
    chunks = pair_chunks(BracketMatrix(profile.bracket_examples).pairs, inputs.pairs_per_call)
    mine = [pair for chunk in share(chunks, rank, world) for pair in chunk]
    matrices = [analysis.reduced_brackets(model, inputs.loss_fn, inputs.examples, inputs.targets, inputs.batch,
                                          pairs_per_call=inputs.pairs_per_call, pairs=mine)]
    if state is not None:
        matrices.append(adam_records.reduced_adam_brackets(model, inputs.loss_fn, inputs.examples, inputs.targets,
                                                           inputs.batch, state, pairs_per_call=inputs.pairs_per_call,
                                                           pairs=mine))
    gathered = [None] * world if rank == 0 else None
    dist.gather_object([m.brackets if m is not None else None for m in matrices], gathered, dst=0)
    if rank == 0:
        for brackets in gathered:
            for matrix, part in zip(matrices, brackets):
                if matrix is not None:
                    matrix.brackets.update(part)
        record = analysis.checkpoint_record(model, inputs.loss_fn, inputs.examples, inputs.targets, inputs.batch,
                                            matrices[0], batch_targets=inputs.batch_targets)
        if state is not None:
            record.update(adam_records.adam_record(matrices[1], state, record))
        analysis.write_record(paths, step, key, model, record, time.perf_counter() - start)


def share(items: list, rank: int, world: int) -> list:
    """The items (steps, chunks of pairs) rank `rank` of `world` computes: round-robin over the list."""
    return items[rank::world]


def load_test_split(profile: Profile, test_tensors=None) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """((images, attributes), data fingerprint) of the test split: from `test_tensors`, else the profile's data."""
    if test_tensors is None:
        split = datasets.load_profile_split(profile, "test", progress=False)
        return (split.images, split.attributes), split.fingerprint
    tensors, metadata = storage.load_tensors(test_tensors), storage.read_metadata(test_tensors)
    missing = [k for k in ("images", "attributes") if k not in tensors] + (
        ["metadata 'fingerprint'"] if "fingerprint" not in metadata else [])
    if missing:
        raise ValueError(f"{show(test_tensors)} lacks {', '.join(missing)}: --test-tensors takes a safetensors file "
                         "with images, attributes and the data fingerprint in its metadata (a lie_helpers.data.celeba "
                         "split cache file).")
    return (tensors["images"], tensors["attributes"].to(torch.int64)), metadata["fingerprint"]


def _profile_test_split(profile: Profile):
    """load_test_split(profile) in every rank: rank 0 first (it prepares and caches the data), then the others."""
    if dist.get_rank() == 0:
        loaded = load_test_split(profile)
    dist.barrier()
    if dist.get_rank() != 0:
        loaded = load_test_split(profile)
    return loaded


def _device() -> torch.device:
    """This process's GPU (LOCAL_RANK) when CUDA is present, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"Process {local_rank} on this node has no GPU of its own ({torch.cuda.device_count()} "
                           "visible): start at most one process per GPU (torchrun --nproc_per_node=NGPU).")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _positive_integer(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, got {text!r}")
    return int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m lie_helpers.distributed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES)} (default: default)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a profile setting, as in lie_helpers.chain (repeatable)")
    parser.add_argument("--run-dir", type=Path, metavar="DIR",
                        help="run folder (default: runs/<run folder name>, as the chain and the notebooks find it)")
    parser.add_argument("--test-tensors", type=Path, metavar="FILE",
                        help="test split as a safetensors file (default: the profile's data)")
    parser.add_argument("--pairs-per-call", type=_positive_integer, metavar="C",
                        help="pairs per vmapped call, the unit of a rank's share of pairs (default: "
                             "brackets.PAIRS_PER_CALL); the records equal one process's at the same C")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        parser.error("launch with torchrun, e.g. torchrun --nproc_per_node=2 -m lie_helpers.distributed "
                     "(one process: analysis.analyse_run, notebook 02).")
    try:
        profile = get_profile(args.profile, **parse_overrides(args.overrides))
        run_dir = args.run_dir or run_paths(profile, runs_root=REPO_DIR / "runs").root
        # A relative data_root means notebooks/, where the notebooks run (it is in no hash or folder name used below).
        profile = dataclasses.replace(profile, data_root=str(REPO_DIR / "notebooks" / profile.data_root))
        device = _device()
        if args.test_tensors is not None:   # read-only: every rank at once, before it joins the others
            test_data, fingerprint = load_test_split(profile, args.test_tensors)
    except (ValueError, FileNotFoundError, RuntimeError, ChainError) as err:
        print(err, file=sys.stderr)
        return 2
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if args.test_tensors is None:
            test_data, fingerprint = _profile_test_split(profile)
        computed = analyse_run_distributed(profile, test_data, run_dir=run_dir, fingerprint=fingerprint, device=device,
                               progress=not args.no_progress_bar, pairs_per_call=args.pairs_per_call)
        if shares_pairs(profile, args.pairs_per_call or PAIRS_PER_CALL, world):
            print(f"rank {rank} of {world} computed its share of the pairs of steps {computed}", flush=True)
        else:
            print(f"rank {rank} of {world} computed steps {share(computed, rank, world)}", flush=True)
        dist.barrier()
        if rank == 0:
            manifest = run_paths(profile, run_dir).manifest
            print(f"{len(computed)} bracket record(s) computed by {world} process(es) on {device.type}, "
                  f"{len(run_folder.read_manifest(run_dir)['records'])} in {show(manifest)}.")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"rank {dist.get_rank()}: {err}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
