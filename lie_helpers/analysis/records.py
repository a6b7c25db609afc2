"""Brackets at every checkpoint of a training run, stored compactly (notebook 02).

For each checkpoint: the brackets among the first N test examples (N(N−1)/2 pairs), with
BatchNorm in eval mode, through `bracket_matrix`, reduced on the fly to

    bracket_rms         [pairs, tensors]        RMS of each parameter tensor of each bracket
    gradient_rms        [N, tensors]            RMS of each parameter tensor of each gradient
    logit_perturbation  [pairs, batch, outputs] the bracket pushed onto the outputs of a fixed
                                                batch (the first `pushforward_batch` test images)
    batch_logits        [batch, outputs]        the outputs themselves (for probabilities)

and, for the independent loss, what one gradient step already predicts for the same examples
and batch (lie_helpers.analysis.first_order; the nulls a bracket finding is measured against):

    gradient_pushforward  [N, batch, outputs]     J·v_i: each example's SGD field pushed onto the batch
    attribute_loss        [outputs]               each attribute's loss on the batch
    attribute_gradient_gram [outputs, outputs]    ⟨∇L_k, ∇L_l⟩ of the attributes' batch losses (norms, conflict)
    ggn_trace             [outputs]               each output's GGN (= Fisher) trace over the batch (Hutchinson)
    batch_targets         [batch, outputs]        the batch's labels (calibration)

and, with `adam` (the default), Adam's bracket beside the SGD one, from each checkpoint's own Adam state
and reduced the same way (lie_helpers.analysis.adam_records: adam_bracket_rms, adam_tangent_rms,
adam_logit_perturbation, adam_scales, adam_step; NaN at step 0, where Adam has no state yet).

one safetensors file per checkpoint in <run>/brackets/, listed in the run folder's manifest
with its sha256, its analysis key and the checkpoint it summarises (lie_helpers.run_folder).
A record that verifies under the current key is skipped, so an interrupted analysis resumes;
a missing, foreign (other key, other checkpoint) or altered record is recomputed, and
`load_run_brackets` refuses to read one. Full bracket tensors are optional (float16,
<run>/brackets/full/).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import adam_records, first_order
from ..data import storage
from ..data.progress import report as report_progress
from ..training import run_folder
from ..engine.brackets import (PAIRS_PER_CALL, BracketMatrix, bracket_matrix, bracket_mode, checked_pairs_per_call,
                       parameters_of, pushforward, rms_per_tensor)
from ..training.config import Profile, run_paths
from ..training.losses import IndependentBCE, get_loss
from ..data.storage import show
from ..training.train import default_device, load_checkpoint, prepare_inputs

ANALYSIS_VERSION = 4  # bump when what is stored changes (4: Adam's bracket)
BASELINES = ("gradient_pushforward", "attribute_loss", "attribute_gradient_gram", "ggn_trace", "batch_targets")
GGN_SAMPLES = 32      # Hutchinson samples of the GGN trace: ~0.35 s a checkpoint, median standard error 13%


def analysis_key(profile: Profile, fingerprint: str, adam: bool = True) -> str:
    """What a stored result depends on: the run (profile hash, data) and the analysis settings."""
    return json.dumps({"run": profile.hash(), "data": fingerprint, "examples": profile.bracket_examples,
                       "batch": profile.pushforward_batch, "version": ANALYSIS_VERSION, "adam": adam}, sort_keys=True)


def fixed_inputs(profile: Profile, test_data, device="cpu", dtype=torch.float32, *, example_indices=None,
                 batch_indices=None):
    """(example inputs, example targets, pushforward batch), the same at every checkpoint: the first test
    images, or those at `example_indices` / `batch_indices` (e.g. a stratified lie_helpers.example_sets.ExampleSet)."""
    images, attributes = test_data
    example_at, batch_at = _positions(profile, len(images), example_indices, batch_indices)
    examples = prepare_inputs(images[example_at], device, dtype)
    targets = attributes[example_at].to(device=device, dtype=dtype)
    batch = prepare_inputs(images[batch_at], device, dtype)
    return examples, targets, batch


def _positions(profile: Profile, n_images: int, example_indices, batch_indices):
    """Where the examples and the batch are in the test split: the first ones, or the explicit indices
    (as many as the profile's bracket_examples / pushforward_batch, distinct, inside the split)."""
    if example_indices is None and batch_indices is None:
        needed = max(profile.bracket_examples, profile.pushforward_batch)
        if n_images < needed:
            raise ValueError(f"The test split has {n_images} images; the analysis needs {needed} "
                             f"(bracket_examples={profile.bracket_examples}, pushforward_batch={profile.pushforward_batch}).")
    positions = []
    for name, setting, given in (("example_indices", "bracket_examples", example_indices),
                                 ("batch_indices", "pushforward_batch", batch_indices)):
        count = getattr(profile, setting)
        if given is None:
            positions.append(slice(0, count))
            continue
        at = torch.as_tensor(list(given), dtype=torch.int64)
        if len(at) != count:
            raise ValueError(f"{name} has {len(at)} entries but the profile's {setting} is {count}: "
                             f"set {setting}={len(at)}.")
        if len(set(at.tolist())) != len(at) or (len(at) and not 0 <= int(at.min()) <= int(at.max()) < n_images):
            raise ValueError(f"{name} must be distinct indices into the test split's {n_images} images; got {at.tolist()}.")
        positions.append(at)
    return tuple(positions)


def analyse_checkpoint(model, loss_fn, examples, targets, batch, *, batch_targets=None,
                       keep_full: bool = False, pairs_per_call: int | None = None, adam_state=None) -> dict:
    """The compact record of one checkpoint (see the module docstring); with keep_full, also every bracket.

    With `batch_targets` and the independent loss, the first-order baselines are stored too; with
    `adam_state` (the checkpoint's engine.adam.AdamState), Adam's bracket (analysis.adam_records).
    pairs_per_call: bracket_matrix's memory bound (default brackets.PAIRS_PER_CALL).
    """
    matrix = reduced_brackets(model, loss_fn, examples, targets, batch, keep_full=keep_full,
                              pairs_per_call=pairs_per_call)
    record = checkpoint_record(model, loss_fn, examples, targets, batch, matrix, batch_targets=batch_targets)
    if adam_state is not None:
        adam = adam_records.reduced_adam_brackets(model, loss_fn, examples, targets, batch, adam_state,
                                                  pairs_per_call=pairs_per_call)
        record.update(adam_records.adam_record(adam, adam_state, record))
    return record


def reduced_brackets(model, loss_fn, examples, targets, batch, *, keep_full: bool = False,
                     pairs_per_call: int | None = None, pairs=None) -> BracketMatrix:
    """bracket_matrix of the examples with each bracket reduced on the fly to (RMS per tensor [tensors],
    pushforward onto `batch` [batch, outputs], the bracket in float16 with keep_full else None) and each
    gradient to its RMS per tensor; only `pairs` (default all: see bracket_matrix)."""
    def rms_vector(field):
        return torch.tensor(list(rms_per_tensor(field).values()))

    def reduce(bracket):
        full = {k: t.detach().to("cpu", torch.float16) for k, t in bracket.items()} if keep_full else None
        return rms_vector(bracket), pushforward(model, batch, bracket).detach().cpu(), full

    return bracket_matrix(model, loss_fn, examples, targets, reduce=reduce, reduce_gradient=rms_vector,
                          pairs_per_call=pairs_per_call, pairs=pairs)


def checkpoint_record(model, loss_fn, examples, targets, batch, matrix: BracketMatrix, *,
                      batch_targets=None) -> dict:
    """The record of one checkpoint from its reduced brackets (reduced_brackets, every pair; they may
    come from several processes), the batch's logits and, with `batch_targets`, the baselines."""
    missing = [p for p in matrix.pairs if p not in matrix.brackets]
    if missing:
        raise ValueError(f"The reduced brackets lack {len(missing)} of {len(matrix.pairs)} pairs "
                         f"(first {missing[0]}): a record needs every pair.")
    with bracket_mode(model), torch.no_grad():   # the same mode as the fields, TF32 off on a GPU
        batch_logits = model(batch).cpu()
    record = {
        "pairs": torch.tensor(matrix.pairs),
        "bracket_rms": torch.stack([matrix.brackets[p][0] for p in matrix.pairs]),
        "gradient_rms": torch.stack(matrix.gradients),
        "logit_perturbation": torch.stack([matrix.brackets[p][1] for p in matrix.pairs]),
        "batch_logits": batch_logits,
    }
    if batch_targets is not None and isinstance(loss_fn, IndependentBCE):
        record.update({
            "gradient_pushforward": first_order.gradient_pushforward(model, loss_fn, examples, targets,
                                                                   batch).per_example.cpu(),
            "attribute_loss": first_order.per_attribute_loss(model, loss_fn, batch, batch_targets).cpu(),
            "attribute_gradient_gram": first_order.attribute_gradient_gram(model, loss_fn, batch, batch_targets).cpu(),
            "ggn_trace": first_order.ggn_trace_per_output(model, loss_fn, batch, samples=GGN_SAMPLES).value.float().cpu(),
            "batch_targets": batch_targets.cpu(),
        })
    if matrix.brackets[matrix.pairs[0]][2] is not None:
        record["full"] = {f"{i}-{j}/{k}": t for (i, j) in matrix.pairs for k, t in matrix.brackets[(i, j)][2].items()}
    return record


def full_brackets_bytes(profile: Profile, n_parameters: int, n_checkpoints: int) -> int:
    """Disk taken by every full bracket in float16: 2 bytes × parameters × pairs × checkpoints."""
    pairs = profile.bracket_examples * (profile.bracket_examples - 1) // 2
    return 2 * n_parameters * pairs * n_checkpoints


def analyse_run(profile: Profile, test_data, *, run_dir=None, fingerprint: str, device=None,
                progress: bool = True, pairs_per_call: int | None = None, adam: bool = True) -> list[int]:
    """Compute and store the record of every checkpoint of the run that has no good record yet; returns the steps.

    A record that is missing, made under another key or from another checkpoint, or altered
    since it was written is recomputed (and said so). Holds the run folder's lock.
    device: where to compute, by default CUDA when available (TF32 stays off there).
    pairs_per_call: bracket_matrix's memory bound (default brackets.PAIRS_PER_CALL; lower it for a
    large model on a small GPU).
    adam: also Adam's bracket from each checkpoint's Adam state (refused, naming the fix, for a run trained
    before training kept every state).
    Across processes: lie_helpers.distributed, with the same per-checkpoint code.
    """
    device = torch.device(device) if device is not None else default_device()
    paths = run_paths(profile, run_dir)
    with run_folder.lock(paths):
        key, steps, todo = records_to_compute(paths, profile, fingerprint, adam)
        inputs = record_inputs(profile, test_data, device, pairs_per_call, adam=adam)
        task = f"bracket records of {paths.root.name}"
        report_progress(task, 0, len(todo), unit="checkpoints")
        for done, step in enumerate(tqdm(todo, desc="brackets", disable=not progress), 1):
            store_record(paths, profile, step, key, inputs)
            run_folder.add_record(paths, step, key)
            report_progress(task, done, len(todo), f"step {step}", "checkpoints")
    return steps


@dataclass
class RecordInputs:
    """What every checkpoint's record is computed from: the same at every checkpoint and in every process."""
    loss_fn: torch.nn.Module
    examples: torch.Tensor
    targets: torch.Tensor
    batch: torch.Tensor
    batch_targets: torch.Tensor
    device: torch.device
    pairs_per_call: int = PAIRS_PER_CALL
    adam: bool = True       # Adam's bracket too


def record_inputs(profile: Profile, test_data, device, pairs_per_call: int | None = None, *,
                  example_indices=None, batch_indices=None, adam: bool = True) -> RecordInputs:
    """The loss, the bracket examples and their targets, the pushforward batch and its targets, on `device`
    (the first test images, or those at the indices: see fixed_inputs), and the pairs per vmapped call
    (default brackets.PAIRS_PER_CALL)."""
    examples, targets, batch = fixed_inputs(profile, test_data, device, example_indices=example_indices,
                                            batch_indices=batch_indices)
    _, batch_at = _positions(profile, len(test_data[0]), example_indices, batch_indices)
    batch_targets = test_data[1][batch_at].to(device=device, dtype=targets.dtype)
    return RecordInputs(get_loss(profile.loss), examples, targets, batch, batch_targets, torch.device(device),
                        checked_pairs_per_call(pairs_per_call), adam)


def records_to_compute(paths, profile: Profile, fingerprint: str, adam: bool = True) -> tuple[str, list[int], list[int]]:
    """(analysis key, the run's complete checkpoints, those whose record is missing or does not verify).

    Says which existing records are recomputed and why, and what optional full brackets will take; with
    `adam`, refuses (naming the fix) when one of those checkpoints keeps no Adam state. Hold the run folder's lock.
    """
    steps = _checked_steps(paths, fingerprint)
    key = analysis_key(profile, fingerprint, adam)
    problems = {s: run_folder.record_problem(paths, s, key) for s in steps}
    todo = [s for s in steps if problems[s]]
    if adam:
        adam_records.missing_adam_states(paths.root, todo)
    bad = [problems[s] for s in todo if paths.record(s).exists()]
    if bad:
        print(f"Recomputing {len(bad)} bracket record(s) that do not verify: " + "; ".join(bad))
    if profile.save_full_brackets and todo:
        n_params = sum(p.numel() for p in load_checkpoint(paths.root, todo[0], profile).parameters())
        print(f"save_full_brackets: writing {full_brackets_bytes(profile, n_params, len(todo)) / 2**20:.1f} MiB "
              f"of float16 brackets to {show(paths.brackets / 'full')}")
    return key, steps, todo


def store_record(paths, profile: Profile, step: int, key: str, inputs: RecordInputs) -> None:
    """Compute the record of checkpoint `step` and write it (and its full brackets) atomically.

    Its manifest entry is the caller's (run_folder.add_record, under the lock), so that processes
    computing records side by side never write the manifest at once.
    """
    model = load_checkpoint(paths.root, step, profile, device=inputs.device)
    state = adam_records.load_adam_state(paths.root, step, profile, inputs.device) if inputs.adam else None
    start = time.perf_counter()
    record = analyse_checkpoint(model, inputs.loss_fn, inputs.examples, inputs.targets, inputs.batch,
                                batch_targets=inputs.batch_targets, keep_full=profile.save_full_brackets,
                                pairs_per_call=inputs.pairs_per_call, adam_state=state)
    write_record(paths, step, key, model, record, time.perf_counter() - start)


def write_record(paths, step: int, key: str, model, record: dict, seconds: float) -> None:
    """Write a checkpoint's record (and its full brackets) atomically, with its key, step, tensor names and time."""
    if "full" in record:
        storage.atomic_save_tensors(paths.full_record(step), record.pop("full"))
    storage.atomic_save_tensors(paths.record(step), record, metadata={
        "key": key, "step": step, "tensor_names": json.dumps(list(parameters_of(model))),
        "seconds": f"{seconds:.3f}"})


def _checked_steps(paths, fingerprint: str | None) -> list[int]:
    """The run's complete checkpoints, after checking its data (`fingerprint`; None: the run's own) and that
    no bracket record lies about its step (a record of a step that is no checkpoint)."""
    steps = run_folder.complete_checkpoints(paths)
    if not steps:
        raise FileNotFoundError(f"No checkpoints in {show(paths.checkpoints)}: train first (notebook 01).")
    trained_on = run_folder.checkpoint_entry(paths, steps[-1])["key"]["data_fingerprint"]
    if fingerprint is not None and trained_on != fingerprint:
        raise ValueError(f"The run in {show(paths.root)} was trained on data {trained_on}, not on {fingerprint}: "
                         "analyse it with the data it was trained on, or train again.")
    stray = [p for p in run_folder.stray_files(paths) if p.parent == paths.brackets]
    if stray:
        raise ValueError(f"{', '.join(map(show, stray))}: bracket record(s) of steps that are no checkpoint of "
                         f"this run (complete: {steps}). They cannot be recomputed or trusted: move them out of "
                         f"{show(paths.brackets)}.")
    return steps


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
    # first-order baselines (independent loss only; None otherwise), stacked like the above
    gradient_pushforward: torch.Tensor | None = None     # [checkpoints, examples, batch, outputs]
    attribute_loss: torch.Tensor | None = None           # [checkpoints, outputs]
    attribute_gradient_gram: torch.Tensor | None = None  # [checkpoints, outputs, outputs]
    ggn_trace: torch.Tensor | None = None                # [checkpoints, outputs]
    batch_targets: torch.Tensor | None = None            # [checkpoints, batch, outputs]
    # Adam's bracket (analysis.adam_records; None when analysed without it), stacked like the above; NaN at step 0
    adam_bracket_rms: torch.Tensor | None = None         # [checkpoints, pairs, tensors]
    adam_tangent_rms: torch.Tensor | None = None         # [checkpoints, examples, tensors]
    adam_logit_perturbation: torch.Tensor | None = None  # [checkpoints, pairs, batch, outputs]
    adam_scales: torch.Tensor | None = None              # [checkpoints, 2]: κ (immediate), γc₁ (drained)
    adam_step: torch.Tensor | None = None                # [checkpoints, 1]


def load_run_brackets(profile: Profile, run_dir=None, adam: bool = True) -> RunBrackets:
    """Read back what analyse_run stored, in step order: one verified record per complete checkpoint.

    Refuses, naming the files, when a record is missing, stray, foreign or altered
    (analyse_run recomputes those that can be); adam: the records analysed with (or without) Adam's bracket.
    """
    paths = run_paths(profile, run_dir)
    if not run_folder.complete_checkpoints(paths):
        raise FileNotFoundError(f"No bracket records in {show(paths.brackets)}: compute them first (notebook 02).")
    steps = _checked_steps(paths, None)
    fingerprint = run_folder.checkpoint_entry(paths, steps[-1])["key"]["data_fingerprint"]
    key = analysis_key(profile, fingerprint, adam)
    problems = [p for p in (run_folder.record_problem(paths, s, key) for s in steps) if p]
    if problems:
        raise ValueError(f"The bracket records of {show(paths.root)} do not match its checkpoints: "
                         + "; ".join(problems) + ". Run analysis.analyse_run (notebook 02; in the chain "
                         "--from 02 --force) to recompute them.")
    files = [paths.record(s) for s in steps]
    records = [storage.load_tensors(f) for f in files]
    metadata = [storage.read_metadata(f) for f in files]
    return RunBrackets(
        steps=steps,
        tensor_names=json.loads(metadata[0]["tensor_names"]),
        pairs=[tuple(p) for p in records[0]["pairs"].tolist()],
        bracket_rms=torch.stack([r["bracket_rms"] for r in records]),
        gradient_rms=torch.stack([r["gradient_rms"] for r in records]),
        logit_perturbation=torch.stack([r["logit_perturbation"] for r in records]),
        batch_logits=torch.stack([r["batch_logits"] for r in records]),
        seconds=[float(m["seconds"]) for m in metadata],
        **{name: torch.stack([r[name] for r in records]) for name in BASELINES + adam_records.ADAM_KEYS
           if name in records[0]},
    )
