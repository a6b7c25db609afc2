"""The GPU check: is this machine ready for the write-up's full configuration? One command, one report.

    python -m lie_helpers.gpu_check [--tiny] [--out DIR]        # make gpu-check: --out runs/gpu-check

On a CUDA machine it takes under 8 minutes on one H100/H200-class GPU. With --tiny, or when
CUDA is absent, the same code runs on the CPU with tiny models (width 0.125, 16 px, a few
steps) in seconds; comparisons that need CUDA are then skipped and say so, never faked.
It writes DIR/gpu_check.json and DIR/gpu_check.md and prints the total time.

Sections (each time-boxed; one that fails records its error and the others still run):

    environment          torch, CUDA and CPU as seen by this process
    cpu_vs_cuda_float64  (a) the same float64 model's brackets (bracket_matrix, 6 examples) on
                         the CPU and on CUDA: relative error, per pair and of the gradients
    float32_vs_float64   (b) float32 with TF32 off (the engine's bracket_mode) against float64
                         on the check's device, and, on CUDA, with TF32 switched on outside
                         bracket_mode on purpose: what TF32 would do to brackets and logits
    bracket_speed        (c) bracket_matrix (methods vmap and rows) against the naive way (one
                         double-backward lie_bracket per pair) at default width (0.25, 32 px)
                         and full width (1.0, 64 px): median times, ratios (target <= 0.2)
    training             (d) the full profile's training steps (batch 32, 64 px), evaluation,
                         one checkpoint write, and the bracket analysis of one checkpoint
                         (analysis.analyse_checkpoint: 6 examples, pushforward batch 32), with
                         Adam's bracket beside it (analysis.adam_records)
    swaps                (e) notebook 02 §5's measurements of one real swap at full size, float64:
                         the swap and its predictions, its residual orders across lr (one stem),
                         and what persists of it over the later steps
    projection           (f) the whole `full` chain's wall time: data cache (drawing and decoding
                         the generated images, from a sample), 5000 training steps, and at each
                         of the 51 checkpoints (every 100 steps and step 0) evaluation,
                         checkpoint write and both brackets' analysis; notebook 02's swaps,
                         notebook 05's side run; and the disk it takes (every Adam state kept)

gpu_check.json:

    {"format": "lie_helpers.gpu_check/1", "mode": "gpu" | "tiny", "device": "cuda" | "cpu",
     "units": {suffix: meaning}, "total_s": ..., "sections": {name: {"status": ..., "seconds": ..., ...}}}

`status` is "ok", "skipped" (with `reason`), "error" or "timeout" (with `error`; what was
measured before the failure stays). A measurement that cannot be made on this machine is
{"skipped": reason} in place of its numbers. A number's key names its unit: ending in _s
seconds (also the key "seconds"), _per_s per second, _bytes bytes; with rel_err in it a
relative error ‖a − b‖/‖b‖ over all parameter tensors (or all logits) against the more exact
result, with ratio in it a ratio of two times; counts (pairs, parameters, steps, images) have
none. gpu_check.md renders the same numbers, one table per section, long times also in
minutes or hours and sizes in MiB or GiB.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..analysis.records import analyse_checkpoint, fixed_inputs
from ..data.attributes import ATTRIBUTES
from .gpu_report import write_report
from .bench import benchmark_model, median, peak_memory, random_examples, synchronize, time_bracket_methods, timed
from ..engine.brackets import (PAIRS_PER_CALL, BracketMatrix, bracket_matrix, brackets_vmapped, example_loss, parameters_of,
                       relative_error)
from ..data.celeba import load_split
from ..training.config import Profile, get_profile, swap_steps
from ..data.generated_celeba import generate_celeba
from ..training.losses import get_loss
from ..analysis.adam_records import reduced_adam_brackets
from ..analysis.order_effects import measure_swap
from ..analysis.persistence import LATER_KS, ZERO_KS, measure_persistence
from ..analysis.swap_orders import LR_FACTORS, measure_swap_orders
from ..engine.adam import AdamState
from ..engine.numerics import tf32
from ..study.runs import side_run_profile
from ..training.train import _save_checkpoint, build_model, evaluate, make_optimizer, prepare_inputs, train_step

FORMAT = "lie_helpers.gpu_check/1"
UNITS = {"…_s": "seconds", "…_per_s": "per second", "…_bytes": "bytes",
         "…rel_err…": "relative error ||a - b|| / ||b||", "…ratio…": "ratio of two times"}
TARGET_RATIO = 0.2  # bracket_matrix's time over the naive time the GPU should reach


@dataclass(frozen=True)
class CheckSize:
    """How big the check's models and loops are, and each section's time box."""
    name: str
    default_model: tuple       # (width, image_size) of the "default" configuration
    full_model: tuple          # (width, image_size) of the "full" configuration
    examples: int              # bracket examples in (a)-(c): examples·(examples−1)/2 pairs
    repeats: int               # timed calls per measurement (the median is reported)
    train_steps: int           # timed training steps
    warmup_steps: int
    eval_images: int           # images in the timed evaluation
    cache_images: int          # images drawn and decoded to estimate the data cache
    budgets_s: dict            # section -> time box in seconds


SIZES = {
    "gpu": CheckSize("gpu", default_model=(0.25, 32), full_model=(1.0, 64), examples=6, repeats=3,
                     train_steps=40, warmup_steps=5, eval_images=1024, cache_images=96,
                     budgets_s={"environment": 30, "cpu_vs_cuda_float64": 90, "float32_vs_float64": 45,
                                "bracket_speed": 150, "training": 120, "swaps": 240, "projection": 45}),
    "tiny": CheckSize("tiny", default_model=(0.125, 16), full_model=(0.125, 16), examples=4, repeats=1,
                      train_steps=3, warmup_steps=1, eval_images=64, cache_images=4,
                      budgets_s={"environment": 10, "cpu_vs_cuda_float64": 20, "float32_vs_float64": 20,
                                 "bracket_speed": 30, "training": 30, "swaps": 60, "projection": 20}),
}


class Skip(Exception):
    """This section cannot run on this machine; the message says why."""


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise SectionTimeout in the main thread once `seconds` have passed (between Python operations)."""
    def expire(signum, frame):
        raise SectionTimeout(f"stopped after its time box of {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Context:
    size: CheckSize
    device: torch.device
    results: dict              # the sections done so far (projection reads training's numbers)

    def profile(self, which: str) -> Profile:
        """The "default" or "full" profile at this check's model size."""
        width, image_size = self.size.default_model if which == "default" else self.size.full_model
        return get_profile(which, width=width, image_size=image_size)


def describe_model(profile: Profile) -> str:
    return f"MXResNet{profile.depth} width {profile.width}, {profile.image_size} px"


# ----------------------------------------------------------------------------- sections


def environment(ctx: Context, out: dict) -> None:
    out.update(torch=torch.__version__, lie_helpers=__version__, python=platform.python_version(),
               cpu_threads=torch.get_num_threads(), cuda_available=torch.cuda.is_available())
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        out.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda,
                   compute_capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())


def bracket_errors(approx, exact) -> dict:
    """Relative errors of one bracket_matrix result against another (moved to the CPU, in float64)."""
    def on_cpu(field_):
        return {k: t.detach().to("cpu", torch.float64) for k, t in field_.items()}
    pairs = [relative_error(on_cpu(approx.brackets[p]), on_cpu(exact.brackets[p])) for p in exact.pairs]
    grads = [relative_error(on_cpu(a), on_cpu(b)) for a, b in zip(approx.gradients, exact.gradients)]
    return {"pairs": len(pairs), "max_bracket_rel_err": max(pairs), "median_bracket_rel_err": statistics.median(pairs),
            "max_gradient_rel_err": max(grads)}


def cpu_vs_cuda_float64(ctx: Context, out: dict) -> None:
    if ctx.device.type != "cuda":
        raise Skip("CUDA is not available: there is no CUDA result to compare with the CPU's")
    loss_fn = get_loss("independent")
    for which in ("default", "full"):
        profile = ctx.profile(which)
        cpu_model = benchmark_model(profile, "cpu", torch.float64)
        cuda_model = copy.deepcopy(cpu_model).to(ctx.device)
        inputs, targets = random_examples(profile, ctx.size.examples, dtype=torch.float64)
        on_cpu = bracket_matrix(cpu_model, loss_fn, inputs, targets)
        on_cuda = bracket_matrix(cuda_model, loss_fn, inputs.to(ctx.device), targets.to(ctx.device))
        out[which] = {"model": describe_model(profile), **bracket_errors(on_cuda, on_cpu)}


def brackets_with_tf32(model, loss_fn, inputs, targets) -> BracketMatrix:
    """bracket_matrix's vmapped engine with TF32 on: run outside bracket_mode on purpose, to see its cost."""
    with tf32(True):
        matrix = BracketMatrix(inputs.shape[0])
        stream = brackets_vmapped(example_loss(model.eval(), loss_fn), parameters_of(model), inputs, targets,
                                  "eval", matrix.pairs, PAIRS_PER_CALL)
        matrix.gradients = next(stream)
        matrix.brackets = dict(stream)
        return matrix


def float32_vs_float64(ctx: Context, out: dict) -> None:
    profile = ctx.profile("full")
    loss_fn = get_loss(profile.loss)
    model64 = benchmark_model(profile, ctx.device, torch.float64)
    model32 = copy.deepcopy(model64).to(torch.float32)
    inputs, targets = random_examples(profile, ctx.size.examples, ctx.device, torch.float64)
    inputs32, targets32 = inputs.float(), targets.float()
    exact = bracket_matrix(model64, loss_fn, inputs, targets)
    with torch.no_grad():
        exact_logits = model64(inputs)
    out["model"] = describe_model(profile)
    out["device"] = ctx.device.type
    with torch.no_grad(), tf32(False):
        logits = model32(inputs32)
    out["float32_tf32_off"] = {**bracket_errors(bracket_matrix(model32, loss_fn, inputs32, targets32), exact),
                               "logits_rel_err": logit_error(logits, exact_logits)}
    if ctx.device.type != "cuda":
        out["float32_tf32_on"] = {"skipped": "TF32 exists only on CUDA (Ampere and later)"}
        return
    with torch.no_grad(), tf32(True):
        logits = model32(inputs32)
    out["float32_tf32_on"] = {**bracket_errors(brackets_with_tf32(model32, loss_fn, inputs32, targets32), exact),
                              "logits_rel_err": logit_error(logits, exact_logits)}


def logit_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.double() - exact).norm() / exact.norm())


def bracket_speed(ctx: Context, out: dict) -> None:
    loss_fn = get_loss("independent")
    share = ctx.size.budgets_s["bracket_speed"] * 0.8 / 2
    for which in ("default", "full"):
        profile = ctx.profile(which)
        model = benchmark_model(profile, ctx.device)
        inputs, targets = random_examples(profile, ctx.size.examples, ctx.device)
        timing = time_bracket_methods(model, loss_fn, inputs, targets, repeats=ctx.size.repeats, budget_s=share)
        best = min(timing[m]["ratio_to_naive"] for m in ("vmap", "rows"))
        out[which] = {"model": describe_model(profile), **timing, "best_ratio_to_naive": best,
                      "target_ratio_to_naive": TARGET_RATIO, "meets_target": best <= TARGET_RATIO}


def training(ctx: Context, out: dict) -> None:
    size, device = ctx.size, ctx.device
    profile = ctx.profile("full")
    loss_fn = get_loss(profile.loss)
    g = torch.Generator().manual_seed(0)
    n = max(profile.batch_size * (size.warmup_steps + size.train_steps), size.eval_images, profile.pushforward_batch)
    images = torch.randint(0, 256, (n, 3, profile.image_size, profile.image_size), dtype=torch.uint8, generator=g)
    attributes = torch.randint(0, 2, (n, len(ATTRIBUTES)), generator=g)
    model = build_model(profile).to(device).train()
    optimizer = make_optimizer(model, profile)
    out["model"] = f"{describe_model(profile)}, batch {profile.batch_size}"
    out["parameters"] = sum(p.numel() for p in model.parameters())

    def steps():  # the training loop's work per step: index the uint8 cache, normalise, move, step
        for position in range(n // profile.batch_size):
            idx = slice(position * profile.batch_size, (position + 1) * profile.batch_size)
            yield lambda idx=idx: train_step(model, optimizer, loss_fn, prepare_inputs(images[idx], device),
                                             attributes[idx].to(device))
    feed = steps()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed(lambda: next(feed)(), device, size.train_steps, warmup=size.warmup_steps)
    out["steps_timed"] = len(times)
    out["step_s"] = median(times)
    out["steps_per_s"] = 1 / out["step_s"]
    out["images_per_s"] = profile.batch_size / out["step_s"]
    if device.type == "cuda":
        out["training_peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)

    valid = (images[:size.eval_images], attributes[:size.eval_images])
    metrics = evaluate(model, loss_fn, valid, size.eval_images)
    out["eval_images_per_s"] = size.eval_images / median(
        timed(lambda: evaluate(model, loss_fn, valid, size.eval_images), device, size.repeats))

    with tempfile.TemporaryDirectory() as run_dir:
        def write():
            _save_checkpoint(run_dir, 1, model, optimizer, profile, "gpu-check", {"train_loss": 0.0, **metrics})
        out["checkpoint_write_s"] = median(timed(write, device, size.repeats, warmup=0))
        folder = Path(run_dir) / "checkpoints"
        out["checkpoint_model_bytes"] = (folder / "step_000001.safetensors").stat().st_size
        out["checkpoint_optimizer_bytes"] = (folder / "step_000001.optimizer.safetensors").stat().st_size

    examples, targets, batch = fixed_inputs(profile, (images, attributes), device)
    record, peak = peak_memory(lambda: analyse_checkpoint(model, loss_fn, examples, targets, batch), device)
    out["bracket_examples"] = profile.bracket_examples
    out["pushforward_batch"] = profile.pushforward_batch
    out["brackets_per_checkpoint_s"] = median(
        timed(lambda: analyse_checkpoint(model, loss_fn, examples, targets, batch), device, size.repeats, warmup=0))
    if peak is not None:
        out["brackets_peak_memory_bytes"] = peak
    out["bracket_record_finite"] = all(bool(torch.isfinite(t).all()) for t in record.values())
    state = AdamState.from_optimizer(model, optimizer)
    out["adam_brackets_per_checkpoint_s"] = median(
        timed(lambda: reduced_adam_brackets(model, loss_fn, examples, targets, batch, state), device, size.repeats,
              warmup=1))


def swaps(ctx: Context, out: dict) -> None:
    """One real swap of notebook 02 §5 at full size in float64: measure_swap, its residual orders across the
    learning rates on one stem, and its persistence over the later steps (with fewer of them in tiny mode)."""
    device, profile = ctx.device, ctx.profile("full")
    loss_fn = get_loss(profile.loss)
    g = torch.Generator().manual_seed(1)
    n = profile.batch_size * (3 + max(LATER_KS))
    images = torch.randint(0, 256, (n, 3, profile.image_size, profile.image_size), dtype=torch.uint8, generator=g)
    attributes = torch.randint(0, 2, (n, len(ATTRIBUTES)), generator=g).double()
    model = build_model(profile).to(device=device, dtype=torch.float64).train()
    optimizer = make_optimizer(model, profile)
    minibatches = [(prepare_inputs(images[k * profile.batch_size:(k + 1) * profile.batch_size], device, torch.float64),
                    attributes[k * profile.batch_size:(k + 1) * profile.batch_size].to(device))
                   for k in range(n // profile.batch_size)]
    for batch in minibatches[:2]:      # an Adam state with moments, as at a checkpoint inside the run
        train_step(model, optimizer, loss_fn, *batch)
    a, b, fixed = minibatches[0], minibatches[1], minibatches[2][0]
    out["model"] = f"{describe_model(profile)}, float64, minibatches of {profile.batch_size}"
    out["swap_s"] = median(timed(lambda: measure_swap(model, optimizer, loss_fn, (a, b), fixed, profile.lr), device, 1,
                                 warmup=0))
    state = AdamState.from_optimizer(model, optimizer)
    lrs = [profile.lr * f for f in LR_FACTORS]
    out["orders_one_stem_s"] = median(timed(lambda: measure_swap_orders(model, state, loss_fn, a, b, fixed, lrs),
                                            device, 1, warmup=0))
    later_ks, zero_ks = (LATER_KS, ZERO_KS) if ctx.size.name == "gpu" else (LATER_KS[:3], ZERO_KS[:3])
    out["persistence_later_steps"], out["persistence_zero_steps"] = max(later_ks), max(zero_ks)
    out["persistence_s"] = median(timed(lambda: measure_persistence(
        model, state.with_lr(profile.lr), loss_fn, a, b, minibatches[3:3 + max(later_ks)], later_ks=later_ks,
        zero_ks=zero_ks), device, 1, warmup=0))


def projection(ctx: Context, out: dict) -> None:
    measured = ctx.results.get("training", {})
    needed = ("steps_per_s", "eval_images_per_s", "checkpoint_write_s", "brackets_per_checkpoint_s")
    if any(k not in measured for k in needed):
        raise RuntimeError(f"the training section did not measure {', '.join(k for k in needed if k not in measured)}")
    full = get_profile("full")
    checkpoints = full.steps // full.checkpoint_every + 1          # every checkpoint_every steps, and step 0
    out["profile"] = f"full: {describe_model(full)}, {full.steps} steps, a checkpoint every {full.checkpoint_every}"
    out["measured_on"] = measured["model"]
    out["checkpoints"] = checkpoints
    out.update(data_cache(full, ctx.size.cache_images))
    out["training_s"] = full.steps / measured["steps_per_s"]
    out["evaluation_s"] = checkpoints * full.eval_images / measured["eval_images_per_s"]
    out["checkpoint_writes_s"] = checkpoints * measured["checkpoint_write_s"]
    out["brackets_s"] = checkpoints * (measured["brackets_per_checkpoint_s"]
                                       + measured.get("adam_brackets_per_checkpoint_s", 0.0))
    out["run_s"] = out["training_s"] + out["evaluation_s"] + out["checkpoint_writes_s"] + out["brackets_s"]
    # notebook 05's side run (study.runs.side_run_profile): its training and its thinned checkpoints
    side = side_run_profile(full, "categorical_hair_matched", full.seed)
    side_checkpoints = side.steps // side.checkpoint_every + 1
    out["side_run_s"] = (side.steps / measured["steps_per_s"] + side_checkpoints * (
        full.eval_images / measured["eval_images_per_s"] + measured["checkpoint_write_s"]
        + measured["brackets_per_checkpoint_s"] + measured.get("adam_brackets_per_checkpoint_s", 0.0)))
    # notebook 02 §5: 2 swaps (one pair of each kind) at each swap checkpoint and, where the profile sweeps them
    # (swap_sweeps), one pair's orders on two stems and its persistence (swap_orders.measure_run_orders,
    # persistence.measure_run_persistence with pairs=1)
    timed_swaps = ctx.results.get("swaps", {})
    if all(k in timed_swaps for k in ("swap_s", "orders_one_stem_s", "persistence_s")):
        sweeps = 2 * timed_swaps["orders_one_stem_s"] + timed_swaps["persistence_s"] if full.swap_sweeps else 0.0
        out["real_swaps_s"] = len(swap_steps(full)) * (2 * timed_swaps["swap_s"] + sweeps)
    else:
        out["real_swaps_s"] = {"skipped": "the swaps section measured nothing"}
    extra = out["side_run_s"] + (out["real_swaps_s"] if isinstance(out["real_swaps_s"], float) else 0.0)
    out["total_s"] = out["data_cache_s"] + out["run_s"] + extra
    out["checkpoint_disk_bytes"] = checkpoints * (measured["checkpoint_model_bytes"]
                                                  + measured["checkpoint_optimizer_bytes"])


def data_cache(profile: Profile, sample: int) -> dict:
    """Seconds to draw the profile's generated images (one process, as prepare_data does) and decode them
    at its resolution (one thread: load_split uses up to 8, so this bounds it from above), from a sample."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        generate_celeba(root, sample, profile.data_seed, progress=False)
        drawn = time.perf_counter()
        load_split(root, "all", profile.image_size, verify_checksums=False, progress=False, workers=1)
        decoded = time.perf_counter()
    per_draw, per_decode = (drawn - start) / sample, (decoded - drawn) / sample
    n = profile.generated_images
    return {"data_images": n, "data_sample_images": sample, "draw_per_image_s": per_draw,
            "decode_per_image_s": per_decode, "data_draw_s": n * per_draw, "data_decode_s": n * per_decode,
            "data_cache_s": n * (per_draw + per_decode)}


SECTIONS = {"environment": environment, "cpu_vs_cuda_float64": cpu_vs_cuda_float64,
            "float32_vs_float64": float32_vs_float64, "bracket_speed": bracket_speed,
            "training": training, "swaps": swaps, "projection": projection}


# ----------------------------------------------------------------------------- running and reporting


def run_section(name: str, ctx: Context) -> dict:
    """One section's numbers and status; a failure is recorded, not raised."""
    out, start = {}, time.perf_counter()
    try:
        with time_box(ctx.size.budgets_s[name]):
            SECTIONS[name](ctx, out)
        out["status"] = "ok"
    except Skip as reason:
        out = {"status": "skipped", "reason": str(reason)}
    except SectionTimeout as err:
        out.update(status="timeout", error=str(err))
    except Exception as err:  # noqa: BLE001 - the report records every failure, the other sections still run
        out.update(status="error", error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc(limit=-3))
    out["seconds"] = time.perf_counter() - start
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run_check(tiny: bool = False, device=None) -> dict:
    """Run every section and return the report (see the module docstring for its format)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available: leave device unset or use 'cpu'.")
    size = SIZES["tiny" if tiny or device.type != "cuda" else "gpu"]
    ctx = Context(size, device, results={})
    start = time.perf_counter()
    for name in SECTIONS:
        ctx.results[name] = run_section(name, ctx)
        print(f"  {name}: {ctx.results[name]['status']} ({ctx.results[name]['seconds']:.1f} s)", flush=True)
    synchronize(device)
    return {"format": FORMAT, "mode": size.name, "device": device.type, "units": UNITS,
            "total_s": time.perf_counter() - start, "sections": ctx.results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (what the tests run)")
    parser.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else None
    if not args.tiny and not torch.cuda.is_available():
        print("CUDA is not available: running the tiny check on the CPU (CUDA comparisons are skipped).")
    report = run_check(tiny=args.tiny, device=device)
    json_path, md_path = write_report(report, args.out)
    print(f"GPU check done in {report['total_s']:.1f} s: {json_path}, {md_path}")
    failed = [n for n, s in report["sections"].items() if s["status"] in ("error", "timeout")]
    if failed:
        print(f"Sections that failed: {', '.join(failed)} (see the report)", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
