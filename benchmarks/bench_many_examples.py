"""Benchmark: `bracket_matrix` with many examples (N = 6, 16, 32, 64): time per pair and peak memory.

The default profile's model (MXResNet18 width 0.25, 32 px, float32, eval-mode BatchNorm).
Each bracket is reduced on the fly to its per-tensor RMS, as the analysis does, so what
bracket_matrix itself holds is what the memory column shows; one configuration keeps every
full bracket (no reduce) for comparison. Every configuration runs in a fresh process, so
its peak resident memory (resource.getrusage, which only grows) is its own: the column is the
growth of the peak during the timed call, after a warm-up call on 2 examples. On CUDA it
is the peak allocated memory instead. Run on demand (it is no test), from the repository root:

    OMP_NUM_THREADS=2 python benchmarks/bench_many_examples.py
    python benchmarks/bench_many_examples.py --examples 16 64 --device cuda
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from lie_helpers import bracket_matrix, rms_per_tensor
from lie_helpers.bench import benchmark_model, peak_memory, random_examples, synchronize
from lie_helpers.config import get_profile
from lie_helpers.losses import get_loss


def rms_vector(field):
    return torch.tensor(list(rms_per_tensor(field).values()))


def measure(n: int, method: str, pairs_per_call: int | None, keep_full: bool, device: str, threads: int) -> dict:
    """One configuration, in its own process: seconds and peak memory of bracket_matrix on n examples."""
    torch.set_num_threads(threads)
    profile = get_profile("default")
    model = benchmark_model(profile, device)
    inputs, targets = random_examples(profile, n, device)
    loss_fn = get_loss(profile.loss)

    def run(k):
        return bracket_matrix(model, loss_fn, inputs[:k], targets[:k], method=method, pairs_per_call=pairs_per_call,
                              reduce=None if keep_full else rms_vector)
    run(2)  # warm-up: first-call set-up of forward-mode AD and the allocator
    synchronize(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    start = time.perf_counter()
    matrix, cuda_peak = peak_memory(lambda: run(n), device)
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    rms = None if keep_full else torch.stack([matrix.brackets[p] for p in matrix.pairs])
    return {"n": n, "pairs": len(matrix.pairs), "seconds": seconds, "per_pair_s": seconds / len(matrix.pairs),
            "peak_bytes": cuda_peak if cuda_peak is not None else grown, "rms": rms,
            "parameters": sum(p.numel() for p in model.parameters())}


def configurations(examples, chunk: int, max_unchunked_pairs: int):
    """(n, method, pairs_per_call, keep_full) to run, and (n, name, reason) for those left out."""
    runs, left_out = [], []
    for n in examples:
        pairs = n * (n - 1) // 2
        if pairs <= max_unchunked_pairs:
            runs.append((n, "vmap", None, False))
        else:
            left_out.append((n, "vmap, all pairs in one call",
                             f"{pairs} pairs > --max-unchunked-pairs {max_unchunked_pairs}: one call would hold "
                             f"{2 * pairs} parameter-sized products and their vmapped activations at once"))
        runs += [(n, "vmap", chunk, False), (n, "rows", None, False)]
        if n <= 16:
            runs.append((n, "vmap", chunk, True))
    return runs, left_out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, nargs="+", default=[6, 16, 32, 64])
    parser.add_argument("--pairs-per-call", type=int, default=15, help="the chunk of the chunked vmap runs")
    parser.add_argument("--max-unchunked-pairs", type=int, default=120)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    runs, left_out = configurations(args.examples, args.pairs_per_call, args.max_unchunked_pairs)
    rows = []
    print(f"bracket_matrix on the default profile's model, {args.device}, {args.threads} thread(s); "
          f"each bracket reduced to its per-tensor RMS unless 'full brackets kept'")
    print("| N | pairs | method | pairs_per_call | brackets | time (s) | per pair (ms) | peak memory growth (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for n, method, chunk, keep in runs:
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            try:
                r = pool.submit(measure, n, method, chunk, keep, args.device, args.threads).result()
            except Exception as err:  # noqa: BLE001 - a configuration that breaks is a result too
                print(f"| {n} | | {method} | {chunk or 'all'} | | failed: {type(err).__name__}: {err} | | |")
                continue
        r.update(method=method, pairs_per_call=chunk, keep_full=keep)
        rows.append(r)
        print(f"| {n} | {r['pairs']} | {method} | {chunk or 'all'} | {'full brackets kept' if keep else 'RMS'} | "
              f"{r['seconds']:.2f} | {1000 * r['per_pair_s']:.1f} | {r['peak_bytes'] / 2**20:.0f} |", flush=True)
    for n, name, reason in left_out:
        print(f"N = {n}, {name}: not run ({reason})")
    for n in args.examples:  # every way gives the same reduced brackets
        same_n = [r for r in rows if r["n"] == n and r["rms"] is not None]
        if len(same_n) > 1:
            diff = max(float(((r["rms"] - same_n[0]["rms"]).abs() / same_n[0]["rms"].abs().clamp_min(1e-30)).max())
                       for r in same_n[1:])
            print(f"N = {n}: largest relative difference of the RMS between methods {diff:.1e}")
    return rows


if __name__ == "__main__":
    main()
