"""What the benchmarks and the GPU check share: honest timing, a model to time, examples to feed it.

- `timed`: wall times after warm-up, with the device synchronised around each call (CUDA
  runs asynchronously: without it one would time the launch, not the work);
- `benchmark_model`: a profile's MXResNet with BatchNorm running statistics from one
  train-mode batch (not the trivial initial ones), in eval mode, the fields' mode;
- `random_examples`: seeded inputs and {0, 1} targets shaped like the profile's data;
- `time_bracket_methods`: `bracket_matrix` against the naive way, one `lie_bracket` per pair.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..data.attributes import ATTRIBUTES
from ..engine.brackets import BracketMatrix, bracket_matrix, gradient, hvp, lie_bracket, relative_error
from ..training.config import Profile
from ..training.train import build_model


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device, repeats: int = 3, *, warmup: int = 1, budget_s: float | None = None) -> list[float]:
    """Seconds of each of `repeats` calls of fn(), after `warmup` untimed calls.

    With `budget_s`, stops repeating once that many seconds have gone by (at least one timed
    call always runs), so a slow configuration cannot take over a time-boxed check.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats and (not times or budget_s is None or time.perf_counter() - started < budget_s):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def benchmark_model(profile: Profile, device="cpu", dtype=torch.float32) -> torch.nn.Module:
    """The profile's model on `device` as `dtype`, BatchNorm statistics from one random batch, in eval mode."""
    model = build_model(profile).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(profile.seed + 1)
    warm = torch.randn(profile.batch_size, 3, profile.image_size, profile.image_size, generator=g, dtype=dtype)
    with torch.no_grad():
        model.train()(warm.to(device))
    return model.eval()


def random_examples(profile: Profile, n: int, device="cpu", dtype=torch.float32, seed: int = 0):
    """(inputs [n, 3, S, S], attributes [n, 40] in {0, 1}) shaped like `profile`'s data, drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, profile.image_size, profile.image_size, generator=g, dtype=dtype)
    targets = (torch.rand(n, len(ATTRIBUTES), generator=g) > 0.5).to(dtype)
    return inputs.to(device), targets.to(device)


def peak_memory(fn: Callable, device) -> tuple[object, int | None]:
    """(fn(), the peak CUDA memory the call allocated beyond what was allocated before, in bytes).

    None for the peak on the CPU: torch's CPU allocations are invisible to tracemalloc, and the
    process's peak resident size (resource.getrusage) only ever grows, so it needs a fresh process
    per measurement (benchmarks/bench_many_examples.py does that).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return fn(), None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    synchronize(device)
    return out, torch.cuda.max_memory_allocated(device) - before


def floor_work(model, loss_fn, inputs, targets, pairs) -> list:
    """The least any bracket method must compute, done directly: one gradient per example, then one
    Hessian-vector product per ordered pair (H_j g_i and H_i g_j), with no batching and nothing reduced."""
    gradients = [gradient(model, loss_fn, (inputs[i:i + 1], targets[i:i + 1])) for i in range(inputs.shape[0])]
    return [hvp(model, loss_fn, (inputs[b:b + 1], targets[b:b + 1]), gradients[a])
            for i, j in pairs for a, b in ((i, j), (j, i))]


def time_bracket_methods(model, loss_fn, inputs, targets, *, methods=("vmap", "rows"), repeats: int = 3,
                         budget_s: float | None = None) -> dict:
    """`bracket_matrix` (each method) against the naive way, one `lie_bracket` per pair: times and agreement.

    Returns seconds as medians, each method's ratio to the naive time, its largest relative
    error against the naive brackets (checked before timing), and on CUDA the peak memory.
    `budget_s` is shared among the timings.
    """
    device = inputs.device
    pairs = BracketMatrix(inputs.shape[0]).pairs
    share = None if budget_s is None else budget_s / (2 + len(methods))

    def naive():
        return [lie_bracket(model, loss_fn, (inputs[i:i + 1], targets[i:i + 1]), (inputs[j:j + 1], targets[j:j + 1]))
                for i, j in pairs]

    reference, naive_peak = peak_memory(naive, device)
    result = {
        "pairs": len(pairs),
        "parameters": sum(p.numel() for p in model.parameters()),
        "gradient_s": median(timed(lambda: gradient(model, loss_fn, (inputs[:1], targets[:1])), device,
                                   3 * repeats, budget_s=share)),
        "naive_s": median(timed(naive, device, repeats, warmup=0, budget_s=share)),  # warmed above
        "floor_s": median(timed(lambda: floor_work(model, loss_fn, inputs, targets, pairs), device, repeats,
                                budget_s=share)),
    }
    if naive_peak is not None:
        result["naive_peak_memory_bytes"] = naive_peak
    for method in methods:
        def run():
            return bracket_matrix(model, loss_fn, inputs, targets, method=method)
        matrix, peak = peak_memory(run, device)
        seconds = median(timed(run, device, repeats, warmup=0, budget_s=share))  # warmed just now
        result[method] = {"seconds": seconds, "ratio_to_naive": seconds / result["naive_s"],
                          "max_rel_err_to_naive": max(relative_error(matrix.brackets[p], ref)
                                                      for p, ref in zip(pairs, reference))}
        if peak is not None:
            result[method]["peak_memory_bytes"] = peak
    return result
