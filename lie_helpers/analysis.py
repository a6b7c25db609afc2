"""Brackets at every checkpoint of a training run, stored compactly (notebook 02).

For each checkpoint: the brackets among the first N test examples (N(N−1)/2 pairs), with
BatchNorm in eval mode, through `bracket_matrix`, reduced on the fly to

    bracket_rms         [pairs, tensors]        RMS of each parameter tensor of each bracket
    gradient_rms        [N, tensors]            RMS of each parameter tensor of each gradient
    logit_perturbation  [pairs, batch, outputs] the bracket pushed onto the outputs of a fixed
                                                batch (the first `pushforward_batch` test images)
    batch_logits        [batch, outputs]        the outputs themselves (for probabilities)

one safetensors file per checkpoint in <run>/brackets/. A file whose recorded key matches
the current configuration is skipped, so an interrupted analysis resumes; a changed
configuration recomputes. Full bracket tensors are optional (float16, <run>/brackets/full/).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import storage
from .brackets import bracket_matrix, bracket_mode, pushforward, rms_per_tensor
from .config import Profile, run_paths
from .losses import get_loss
from .train import checkpoint_info, list_checkpoints, load_checkpoint, prepare_inputs

ANALYSIS_VERSION = 1  # bump when what is stored changes


def analysis_key(profile: Profile, fingerprint: str) -> str:
    """What a stored result depends on: the run (profile hash, data) and the analysis settings."""
    return json.dumps({"run": profile.hash(), "data": fingerprint, "examples": profile.bracket_examples,
                       "batch": profile.pushforward_batch, "version": ANALYSIS_VERSION}, sort_keys=True)


def fixed_inputs(profile: Profile, test_data, device="cpu", dtype=torch.float32):
    """(example inputs, example targets, pushforward batch): the first test images, the same at every checkpoint."""
    images, attributes = test_data
    needed = max(profile.bracket_examples, profile.pushforward_batch)
    if len(images) < needed:
        raise ValueError(f"The test split has {len(images)} images; the analysis needs {needed} "
                         f"(bracket_examples={profile.bracket_examples}, pushforward_batch={profile.pushforward_batch}).")
    n = profile.bracket_examples
    examples = prepare_inputs(images[:n], device, dtype)
    targets = attributes[:n].to(device=device, dtype=dtype)
    batch = prepare_inputs(images[:profile.pushforward_batch], device, dtype)
    return examples, targets, batch


def analyse_checkpoint(model, loss_fn, examples, targets, batch, *, keep_full: bool = False) -> dict:
    """The compact record of one checkpoint (see the module docstring); with keep_full, also every bracket."""
    full = {}

    def rms_vector(field):
        return torch.tensor(list(rms_per_tensor(field).values()))

    def reduce(bracket):
        return rms_vector(bracket), pushforward(model, batch, bracket).detach().cpu()

    def reduce_and_keep(bracket):
        full[len(full)] = {k: t.detach().to("cpu", torch.float16) for k, t in bracket.items()}
        return reduce(bracket)

    matrix = bracket_matrix(model, loss_fn, examples, targets, reduce=reduce_and_keep if keep_full else reduce,
                            reduce_gradient=rms_vector)
    with bracket_mode(model), torch.no_grad():   # the same mode as the fields, TF32 off on a GPU
        batch_logits = model(batch).cpu()
    record = {
        "pairs": torch.tensor(matrix.pairs),
        "bracket_rms": torch.stack([matrix.brackets[p][0] for p in matrix.pairs]),
        "gradient_rms": torch.stack(matrix.gradients),
        "logit_perturbation": torch.stack([matrix.brackets[p][1] for p in matrix.pairs]),
        "batch_logits": batch_logits,
    }
    if keep_full:
        record["full"] = {f"{i}-{j}/{k}": t for (i, j), b in zip(matrix.pairs, full.values()) for k, t in b.items()}
    return record


def full_brackets_bytes(profile: Profile, n_parameters: int, n_checkpoints: int) -> int:
    """Disk taken by every full bracket in float16: 2 bytes × parameters × pairs × checkpoints."""
    pairs = profile.bracket_examples * (profile.bracket_examples - 1) // 2
    return 2 * n_parameters * pairs * n_checkpoints


def analyse_run(profile: Profile, test_data, *, run_dir=None, fingerprint: str, device=None,
                progress: bool = True) -> list[int]:
    """Compute and store the record of every checkpoint of the run that is not stored yet; returns the steps.

    device: where to compute, by default CUDA when available (TF32 stays off there).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = run_paths(profile, run_dir)
    steps = list_checkpoints(paths.root)
    if not steps:
        raise FileNotFoundError(f"No checkpoints in {paths.checkpoints}: train first (notebook 01).")
    trained_on = checkpoint_info(paths.root, steps[-1])["data_fingerprint"]
    if trained_on != fingerprint:
        raise ValueError(f"The run in {paths.root} was trained on data {trained_on}, not on {fingerprint}: "
                         "analyse it with the data it was trained on, or train again.")
    key = analysis_key(profile, fingerprint)
    loss_fn = get_loss(profile.loss)
    examples, targets, batch = fixed_inputs(profile, test_data, device)
    todo = [s for s in steps if stored_key(paths.brackets / f"step_{s:06d}.safetensors") != key]
    if profile.save_full_brackets and todo:
        n_params = sum(p.numel() for p in load_checkpoint(paths.root, todo[0], profile).parameters())
        print(f"save_full_brackets: writing {full_brackets_bytes(profile, n_params, len(todo)) / 2**20:.1f} MiB "
              f"of float16 brackets to {paths.brackets / 'full'}")
    for step in tqdm(todo, desc="brackets", disable=not progress):
        model = load_checkpoint(paths.root, step, profile, device=device)
        start = time.perf_counter()
        record = analyse_checkpoint(model, loss_fn, examples, targets, batch, keep_full=profile.save_full_brackets)
        seconds = time.perf_counter() - start
        if "full" in record:
            storage.atomic_save_tensors(paths.brackets / "full" / f"step_{step:06d}.safetensors", record.pop("full"))
        names = [n for n, _ in model.named_parameters()]
        storage.atomic_save_tensors(paths.brackets / f"step_{step:06d}.safetensors", record, metadata={
            "key": key, "step": step, "tensor_names": json.dumps(names), "seconds": f"{seconds:.3f}"})
    return steps


def stored_key(path: Path) -> str | None:
    """The analysis key recorded in a stored record, or None when it is missing or unreadable."""
    try:
        return storage.read_metadata(path).get("key")
    except (FileNotFoundError, ValueError):
        return None


@dataclass
class RunBrackets:
    """Every checkpoint's record of a run, stacked along a leading checkpoint axis."""
    steps: list
    tensor_names: list
    pairs: list
    bracket_rms: torch.Tensor         # [checkpoints, pairs, tensors]
    gradient_rms: torch.Tensor        # [checkpoints, examples, tensors]
    logit_perturbation: torch.Tensor  # [checkpoints, pairs, batch, outputs]
    batch_logits: torch.Tensor        # [checkpoints, batch, outputs]
    seconds: list                     # compute time of each checkpoint's record


def load_run_brackets(profile: Profile, run_dir=None) -> RunBrackets:
    """Read back what analyse_run stored, in step order."""
    folder = run_paths(profile, run_dir).brackets
    files = sorted(folder.glob("step_[0-9][0-9][0-9][0-9][0-9][0-9].safetensors"))
    if not files:
        raise FileNotFoundError(f"No bracket records in {folder}: compute them first (notebook 02).")
    records = [storage.load_tensors(f) for f in files]
    metadata = [storage.read_metadata(f) for f in files]
    return RunBrackets(
        steps=[int(m["step"]) for m in metadata],
        tensor_names=json.loads(metadata[0]["tensor_names"]),
        pairs=[tuple(p) for p in records[0]["pairs"].tolist()],
        bracket_rms=torch.stack([r["bracket_rms"] for r in records]),
        gradient_rms=torch.stack([r["gradient_rms"] for r in records]),
        logit_perturbation=torch.stack([r["logit_perturbation"] for r in records]),
        batch_logits=torch.stack([r["batch_logits"] for r in records]),
        seconds=[float(m["seconds"]) for m in metadata],
    )
