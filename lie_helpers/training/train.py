"""Train MXResNet on CelebA-style attributes, with checkpoints that a killed run resumes from exactly.

Each checkpoint is its weights (model state_dict), its Adam state (m, v and the step count, at
every checkpoint: Adam's bracket and the real order effects start from it; float32, 2 × the
parameters × 4 B: 21 × 5.7 MB ≈ 0.12 GB for the default profile, 51 × 90 MB ≈ 4.6 GB for the
full one) and its metadata, then an entry in the run
folder's manifest that marks it complete (layout and manifest: lie_helpers.run_folder);
metrics.json is rebuilt from the complete checkpoints. Training holds the folder's lock.
Before it trains, `train` checks every checkpoint against the manifest and resumes from the
last good one that has its Adam state, saying so when a later one is bad (missing,
truncated, altered); with no such state left it trains again from step 0, which gives the
same checkpoints. Step 0 holds the initial weights. Every write is atomic (lie_helpers.data.storage), and nothing
a run does depends on random state that is not rebuilt from the profile: the model is
initialised from `profile.seed` and each epoch's batch order from `(profile.seed, epoch)`.
So a run killed at any moment, restarted with the same call, continues from its last
complete checkpoint and ends, on the CPU, with weights bit-identical to an uninterrupted run
(same torch version and thread count: torch.set_num_threads changes the rounding of
convolutions). There is no augmentation, so the data is the only other input.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import storage
from ..data.progress import note as note_progress, report as report_progress
from . import run_folder
from ..data.attributes import ATTRIBUTES
from .config import PROFILES, Profile
from .losses import get_loss
from .mxresnet import mxresnet
from .run_folder import RunPaths
from ..data.storage import show

# Images are scaled to [0, 1], then normalised per channel with ImageNet's statistics
# (fastai's `imagenet_stats`). Fixed constants, so every notebook and script feeds the
# network alike: use `prepare_inputs` wherever images go into a trained model.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_BATCH = 256  # validation batch size; affects speed only
# Training stops at the first batch loss this many times the initial validation loss (or non-finite): a healthy run
# never comes near it, a too-large learning rate jumps past it within a few steps.
DIVERGENCE_FACTOR = 100.0


class TrainingDiverged(ValueError):
    """Training met a non-finite loss or weight, or a loss far above where it started: nothing after it is kept."""


def prepare_inputs(images: torch.Tensor, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 images [N, 3, S, S] -> normalised float inputs on `device`."""
    x = images.to(device=device).to(dtype) / 255
    mean = torch.tensor(MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def build_model(profile: Profile) -> torch.nn.Module:
    """The profile's MXResNet, initialised from `profile.seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(profile.seed)
        return mxresnet(profile.depth, get_loss(profile.loss).n_outputs, profile.width)


def make_optimizer(model: torch.nn.Module, profile: Profile) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=profile.lr, betas=tuple(profile.betas))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training images in `epoch`: a function of (seed, epoch) only."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))


def train_step(model, optimizer, loss_fn, inputs, targets) -> float:
    """One Adam step on one batch; returns the batch loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate(model, loss_fn, data, n_images: int) -> dict:
    """Loss and per-attribute accuracy on the first `n_images` of `data`, BatchNorm in eval mode."""
    images, targets = data[0][:n_images], data[1][:n_images]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, torch.zeros(len(ATTRIBUTES), dtype=torch.int64)
    for i in range(0, len(images), EVAL_BATCH):
        y = targets[i:i + EVAL_BATCH].to(param.device)
        logits = model(prepare_inputs(images[i:i + EVAL_BATCH], param.device, param.dtype))
        loss_sum += loss_fn(logits, y).item() * len(y)
        correct += (loss_fn.predict(logits) == y.to(torch.int64)).sum(dim=0).cpu()
    model.train(was_training)
    accuracy = (correct.double() / len(images)).tolist()
    return {"valid_loss": loss_sum / len(images),
            "valid_mean_accuracy": sum(accuracy) / len(accuracy),
            "valid_accuracy": dict(zip(ATTRIBUTES, accuracy))}


def tensor_fingerprint(train_data, valid_data) -> str:
    """Short SHA-256 of the data tensors' shapes and bytes: a run folder belongs to one data set."""
    h = hashlib.sha256()
    for t in (*train_data, *valid_data):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()[:12]


def train(profile: Profile, run_dir, train_data, valid_data, *, fingerprint: str | None = None,
          device=None, progress: bool = True) -> dict:
    """Train (or resume, or just return) the run of `profile` in `run_dir`; returns the final checkpoint's metadata.

    train_data, valid_data: (uint8 images [N, 3, S, S], {0, 1} attributes [N, 40]).
    fingerprint: names the data (e.g. lie_helpers.celeba's data_fingerprint); by default a hash of the tensors.
    device: where to train, by default CUDA when available; runs are bit-reproducible on the CPU.
    """
    _check_data(profile, train_data, "train_data")
    _check_data(profile, valid_data, "valid_data")
    fingerprint = fingerprint or tensor_fingerprint(train_data, valid_data)
    device = torch.device(device) if device is not None else default_device()
    if len(train_data[0]) < profile.batch_size:
        raise ValueError(f"train_data has {len(train_data[0])} images, fewer than one batch ({profile.batch_size}).")

    with run_folder.lock(run_dir):
        return _train_locked(profile, run_dir, train_data, valid_data, fingerprint, device, progress)


def _train_locked(profile, run_dir, train_data, valid_data, fingerprint, device, progress) -> dict:
    loss_fn = get_loss(profile.loss)
    images, targets = train_data
    batches_per_epoch = len(images) // profile.batch_size
    step = _resume_point(profile, run_dir, fingerprint)
    if step == profile.steps:
        return checkpoint_info(run_dir, step)

    model = build_model(profile).to(device)
    optimizer = make_optimizer(model, profile)
    task = f"training {Path(run_dir).name}"
    if step is not None:
        note_progress(f"{task}: resuming from the checkpoint at step {step} of {profile.steps}")
        model.load_state_dict(_load(RunPaths(Path(run_dir)).weights(step), run_dir, step))
        _load_optimizer(model, optimizer, _load(RunPaths(Path(run_dir)).optimizer(step), run_dir, step))
    else:
        step = 0
        meta = {"train_loss": None, **evaluate(model, loss_fn, valid_data, profile.eval_images)}
        _save_checkpoint(run_dir, 0, model, optimizer, profile, fingerprint, meta)

    model.train()
    order_epoch, order, losses = None, None, []
    interval_start = time.perf_counter()
    initial_loss = checkpoint_info(run_dir, 0)["valid_loss"]
    with tqdm(total=profile.steps, initial=step, desc=f"training {profile.name}", disable=not progress) as bar:
        while step < profile.steps:
            epoch, position = divmod(step, batches_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(len(images), profile.seed, epoch)
            idx = order[position * profile.batch_size:(position + 1) * profile.batch_size]
            losses.append(train_step(model, optimizer, loss_fn,
                                     prepare_inputs(images[idx], device), targets[idx].to(device)))
            step += 1
            _check_finite(profile, run_dir, step, losses[-1], initial_loss, model)
            report_progress(task, step, profile.steps, f"loss {losses[-1]:.4f}", "steps")
            # refresh=False: the bar redraws at most every mininterval, not every step (a
            # redraw per step floods a notebook's output channel; a notebook runner can then lose messages).
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update(1)
            if step % profile.checkpoint_every == 0 or step == profile.steps:
                meta = {"train_loss": sum(losses) / len(losses),
                        "train_seconds": time.perf_counter() - interval_start,  # this interval's steps
                        **evaluate(model, loss_fn, valid_data, profile.eval_images)}
                _save_checkpoint(run_dir, step, model, optimizer, profile, fingerprint, meta)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", valid_loss=f"{meta['valid_loss']:.4f}")
                losses, interval_start = [], time.perf_counter()
    return checkpoint_info(run_dir, profile.steps)


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """The names of the model's parameters and floating-point buffers that hold NaN or inf."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _check_finite(profile: Profile, run_dir, step: int, loss: float, initial_loss, model) -> None:
    """Stop training (TrainingDiverged) at a non-finite loss or weight, or a loss DIVERGENCE_FACTOR times the initial
    validation loss, naming the step and the usual cause, the learning rate."""
    bad = non_finite_tensors(model) if math.isfinite(loss) else []
    if not math.isfinite(loss):
        what = f"non-finite loss ({loss}) at step {step}"
    elif bad:
        what = f"non-finite weight ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}) at step {step}"
    elif initial_loss is not None and loss > DIVERGENCE_FACTOR * initial_loss:
        what = (f"the loss diverged at step {step} (batch loss {loss:.3g}, over {DIVERGENCE_FACTOR:g} times the "
                f"initial validation loss {initial_loss:.3g})")
    else:
        return
    done = run_folder.complete_checkpoints(run_dir)
    usual = PROFILES[profile.name].lr if profile.name in PROFILES else None
    raise TrainingDiverged(
        f"Training stopped: {what} of {profile.steps}. Checkpoints up to step {done[-1] if done else 0} are kept, "
        f"nothing after them. Hint: lr = {profile.lr:g} is probably too large a learning rate"
        + (f" (profile {profile.name!r} uses {usual:g})" if usual is not None and usual != profile.lr else "")
        + f"; try a smaller one, e.g. --set lr={profile.lr / 10:g} in the chain (a run with other settings trains in "
          "its own folder).")


def _check_data(profile: Profile, data, name: str) -> None:
    images, targets = data
    size = profile.image_size
    if len(images) == 0:
        raise ValueError(f"{name} holds no images.")
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise ValueError(f"{name} images must be uint8 [N, 3, {size}, {size}] (profile image_size {size}); "
                         f"got {images.dtype} {list(images.shape)}.")
    if tuple(targets.shape) != (len(images), len(ATTRIBUTES)):
        raise ValueError(f"{name} attributes must have shape [{len(images)}, {len(ATTRIBUTES)}]; "
                         f"got {list(targets.shape)}.")


def _run_key(profile: Profile, fingerprint: str) -> dict:
    """What a checkpoint is made under: the profile's training settings and the data."""
    return {"profile_hash": profile.hash(), "data_fingerprint": fingerprint}


def _resume_point(profile: Profile, run_dir, fingerprint: str) -> int | None:
    """The step to resume from (None: from scratch), after checking every checkpoint; bad ones are reported
    and their entries dropped, so training rewrites them."""
    paths = RunPaths(Path(run_dir))
    done = run_folder.complete_checkpoints(paths)
    _check_same_run(paths, profile, fingerprint)
    if not done:
        return None
    problems = {s: run_folder.checkpoint_problem(paths, s) for s in done}
    good = done[:next((i for i, s in enumerate(done) if problems[s]), len(done))]
    if len(good) == len(done) and done[-1] == profile.steps:
        _write_metrics(run_dir)  # a run killed just after its last checkpoint may lack its record
        return profile.steps
    start = next((s for s in reversed(good) if not run_folder.checkpoint_problem(paths, s, ("optimizer",))), None)
    if len(good) < len(done) or start != good[-1]:
        bad = done[len(good)] if len(good) < len(done) else good[-1]
        why = problems[bad] or run_folder.checkpoint_problem(paths, bad, ("optimizer",))
        print(f"Checkpoint {bad} of {show(paths.root)} cannot be used: {why}. "
              + (f"Resuming from step {start}, the last checkpoint with its optimizer state; "
                 if start is not None else "No earlier checkpoint keeps its optimizer state: training again from "
                                           "step 0 (deterministic, so the same checkpoints); ")
              + "the checkpoints after it are written again.")
    run_folder.forget_checkpoints_after(paths, -1 if start is None else start)
    _write_metrics(run_dir)
    return start


def _check_same_run(paths: RunPaths, profile: Profile, fingerprint: str) -> None:
    """Refuse to train in a run folder made with other settings or other data (the keys in its manifest,
    and the metadata of checkpoints that are in no manifest, e.g. from before manifests)."""
    key = _run_key(profile, fingerprint)
    for path in sorted(paths.checkpoints.glob("step_[0-9][0-9][0-9][0-9][0-9][0-9].json")):
        try:
            info = storage.read_json(path)
            theirs = {k: info[k] for k in key}
        except (ValueError, KeyError, TypeError):
            continue   # unreadable: no checkpoint of anything; training rewrites it
        if theirs != key:
            break
    else:
        info = None
        theirs = next((e["key"] for e in run_folder.read_manifest(paths)["checkpoints"].values()
                       if e["key"] != key), None)
        if theirs is None:
            return
    ours = json.loads(json.dumps(profile.to_dict()))
    changed = [f"{k}: {info['profile'].get(k)!r} there, {v!r} now" for k, v in ours.items()
               if info and k != "name" and info["profile"].get(k) != v]
    if theirs["data_fingerprint"] != fingerprint:
        changed.append(f"data fingerprint: {theirs['data_fingerprint']} there, {fingerprint} now")
    raise ValueError(
        f"{show(paths.root)} holds checkpoints of a different run (profile hash {theirs['profile_hash']}, "
        f"this one {profile.hash()}). Differences: {'; '.join(changed) or 'none listed'}. "
        f"Its checkpoints are left untouched: pass another run_dir (the chain: --run-dir DIR), or delete "
        f"{show(paths.checkpoints)} alone to train anew there.")


def _save_checkpoint(run_dir, step, model, optimizer, profile, fingerprint, meta) -> None:
    """Weights, optimizer state, metadata, then the manifest entry that marks the checkpoint complete; then tidy up."""
    paths = RunPaths(Path(run_dir))
    meta = {"step": step, "steps": profile.steps, **meta, "eval_images": profile.eval_images,
            "profile": profile.to_dict(), "profile_hash": profile.hash(), "data_fingerprint": fingerprint,
            "lie_helpers_version": __version__, "torch_version": torch.__version__}
    names = {id(p): name for name, p in model.named_parameters()}
    adam = {f"{names[id(p)]}/{key}": value for p, state in optimizer.state.items()
            for key, value in state.items()}
    try:
        storage.atomic_save_tensors(paths.weights(step), model.state_dict(),
                                    {"step": step, "profile_hash": profile.hash()})
        storage.atomic_save_tensors(paths.optimizer(step), adam, {"step": step})
        storage.atomic_write_json(paths.info(step), meta)
        run_folder.add_checkpoint(paths, step, _run_key(profile, fingerprint))
        _write_metrics(run_dir)
    except OSError as err:
        done = run_folder.complete_checkpoints(paths)
        kept = f"checkpoints up to step {done[-1]} are complete and intact" if done else "no checkpoint is complete yet"
        raise OSError(err.errno, f"Could not write the step-{step} checkpoint in {show(paths.checkpoints)} ({err}); "
                                 f"{kept}. Free disk space (or use a run_dir on another disk) and call train again "
                                 f"to resume.") from err


def _load_optimizer(model, optimizer, tensors: dict) -> None:
    """Put saved Adam state (keys 'param_name/state_key') back into `optimizer`."""
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    state = {}
    for key, value in tensors.items():
        name, field = key.rsplit("/", 1)
        state.setdefault(index[name], {})[field] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _write_metrics(run_dir) -> None:
    """Rebuild metrics.json from the complete checkpoints where it differs, so it always agrees with them."""
    keys = ["step", "train_loss", "valid_loss", "valid_mean_accuracy", "valid_accuracy"]
    records = [{k: checkpoint_info(run_dir, s)[k] for k in keys} for s in list_checkpoints(run_dir)]
    path = RunPaths(Path(run_dir)).metrics
    try:
        current = storage.read_json(path)
    except (FileNotFoundError, ValueError):
        current = None
    if current != records:
        storage.atomic_write_json(path, records)


def _load(path: Path, run_dir, step: int) -> dict:
    try:
        return storage.load_tensors(path)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"Checkpoint {step} of {show(run_dir)} cannot be loaded: {show(path)} is missing or "
                         "corrupt. Call train again with the run's profile (notebook 01): it checks every "
                         "checkpoint and writes the bad ones again.") from err


def _verified(run_dir, step: int, part: str) -> Path:
    """The path of checkpoint `step`'s `part`, after checking it against the manifest."""
    problem = run_folder.checkpoint_problem(run_dir, step, (part,))
    if problem:
        raise ValueError(f"Checkpoint {step} of {show(run_dir)} cannot be used: {problem}. Call train again "
                         "with the run's profile (notebook 01): it checks every checkpoint and writes the bad "
                         "ones again.")
    return getattr(RunPaths(Path(run_dir)), part)(step)


# Reading a run back ----------------------------------------------------------------------------

def list_checkpoints(run_dir) -> list[int]:
    """Steps of the complete checkpoints in `run_dir`, ascending (run_folder.complete_checkpoints)."""
    return run_folder.complete_checkpoints(run_dir)


def checkpoint_info(run_dir, step: int) -> dict:
    """The metadata of checkpoint `step`: losses, per-attribute accuracy, profile, data fingerprint."""
    return storage.read_json(_verified(run_dir, step, "info"))


def load_checkpoint(run_dir, step: int, profile: Profile, *, dtype=torch.float32, device="cpu") -> torch.nn.Module:
    """The model at checkpoint `step`, in eval mode, as `dtype` on `device`; its files checked against the manifest."""
    key = run_folder.checkpoint_entry(run_dir, step)["key"]
    if key["profile_hash"] != profile.hash():
        info = checkpoint_info(run_dir, step)
        raise ValueError(f"Checkpoint {step} of {show(run_dir)} was trained with profile hash {key['profile_hash']} "
                         f"({info['profile']['name']!r}), not {profile.hash()} ({profile.name!r}): "
                         f"pass the profile it was trained with.")
    model = build_model(profile)
    path = _verified(run_dir, step, "weights")
    model.load_state_dict(_load(path, run_dir, step))
    bad = non_finite_tensors(model)
    if bad:
        raise ValueError(f"Checkpoint {step} of {show(run_dir)}: {show(path)} holds non-finite weights (NaN or inf in "
                         f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}); nothing is computed from it. Train the "
                         "run again with a smaller learning rate (training stops at the first non-finite weight, so "
                         "this checkpoint did not come from it).")
    return model.to(device=device, dtype=dtype).eval()


def default_device() -> torch.device:
    """Where training and every analysis compute by default: the GPU when there is one (TF32 stays off in every
    bracket), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_training_state(run_dir, step: int, profile: Profile, *, dtype=torch.float32, device="cpu"):
    """(model in train mode, its Adam optimizer) exactly as training had them after checkpoint `step`, as `dtype`
    on `device` (the Adam state follows its parameters there).

    Needs the checkpoint's Adam state (training keeps every checkpoint's).
    """
    problem = adam_state_problem(run_dir, step)
    if problem:
        raise ValueError(problem)
    model = load_checkpoint(run_dir, step, profile, dtype=dtype, device=device).train()
    optimizer = make_optimizer(model, profile)
    _load_optimizer(model, optimizer, _load(_verified(run_dir, step, "optimizer"), run_dir, step))
    return model, optimizer


def adam_state_problem(run_dir, step: int) -> str | None:
    """Why checkpoint `step` has no usable Adam state, with the fix; None when it has one."""
    problem = run_folder.checkpoint_problem(run_dir, step, ("optimizer",))
    if problem is None:
        return None
    return (f"Checkpoint {step} of {show(run_dir)} has no usable Adam state ({problem}). Training keeps every "
            "checkpoint's Adam state; a run trained before it did (it kept only the last two and the swap steps) "
            f"lacks it: train the run again (delete {show(RunPaths(Path(run_dir)).checkpoints)} and rerun notebook "
            "01, or the chain with --from 01; training is deterministic, so the checkpoints come back the same).")


def load_metrics(run_dir) -> list[dict]:
    """One record per checkpoint: step, train_loss (mean since the previous checkpoint; None at
    step 0), valid_loss, valid_mean_accuracy and valid_accuracy (attribute -> accuracy)."""
    return storage.read_json(RunPaths(Path(run_dir)).metrics)
