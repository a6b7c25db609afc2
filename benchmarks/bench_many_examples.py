"""Benchmark: `bracket_matrix` with many examples (N = 6, 16, 32, 64): time per pair and peak memory.

The default profile's model (MXResNet18 width 0.25, 32 px, float32, eval-mode BatchNorm).
Each bracket is reduced on the fly to its per-tensor RMS, as the analysis does, so what
bracket_matrix itself holds is what the memory column shows; one configuration keeps every
full bracket (no reduce) for comparison. Every configuration runs in a fresh process, so
its peak resident memory (resource.getrusage, which only grows) is its own: the column is the
growth of the peak during the timed call, after a warm-up call on 2 examples. On CUDA it
is the peak allocated memory instead. The naive way (one `lie_bracket` per pair, on a few
pairs) gives the ratio column. With --max-pairs, a configuration with more pairs computes only
its first whole chunks of pairs (bracket_matrix's pairs=, all N gradients still computed) and
its time per pair stands for all of them (marked "of"). Run on demand (it is no test), from the
repository root:

    OMP_NUM_THREADS=1 python benchmarks/bench_many_examples.py --threads 1
    python benchmarks/bench_many_examples.py --examples 16 64 --device cuda
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from lie_helpers import BracketMatrix, bracket_matrix, lie_bracket, rms_per_tensor
from lie_helpers.pipeline.bench import benchmark_model, peak_memory, random_examples, synchronize
from lie_helpers.engine.brackets import PAIRS_PER_CALL, pair_chunks
from lie_helpers.training.config import get_profile
from lie_helpers.training.losses import get_loss


def rms_vector(field):
    return torch.tensor(list(rms_per_tensor(field).values()))


def measure(n: int, method: str, pairs_per_call: int | None, keep_full: bool, device: str, threads: int,
            max_pairs: int | None = None) -> dict:
    """One configuration, in its own process: seconds and peak memory of bracket_matrix on n examples
    (method "naive": one lie_bracket per pair), on at most the first `max_pairs` pairs, in whole chunks."""
    torch.set_num_threads(threads)
    profile = get_profile("default")
    model = benchmark_model(profile, device)
    inputs, targets = random_examples(profile, n, device)
    loss_fn = get_loss(profile.loss)
    every = BracketMatrix(n).pairs
    chunk = 1 if method == "rows" else pairs_per_call or PAIRS_PER_CALL
    pairs = every if max_pairs is None or len(every) <= max_pairs else \
        sum(pair_chunks(every, chunk)[:max(1, max_pairs // chunk)], [])

    def run(k, some=None):
        if method == "naive":
            return [lie_bracket(model, loss_fn, (inputs[i:i + 1], targets[i:i + 1]),
                                (inputs[j:j + 1], targets[j:j + 1])) for i, j in some or [(0, 1)]]
        return bracket_matrix(model, loss_fn, inputs[:k], targets[:k], method=method, pairs_per_call=pairs_per_call,
                              reduce=None if keep_full else rms_vector, pairs=some)
    run(2)  # warm-up: first-call set-up of forward-mode AD and the allocator
    synchronize(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    start = time.perf_counter()
    matrix, cuda_peak = peak_memory(lambda: run(n, pairs), device)
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    rms = None if keep_full or method == "naive" else torch.stack([matrix.brackets[p] for p in pairs])
    return {"n": n, "pairs": len(every), "measured_pairs": len(pairs), "seconds": seconds,
            "per_pair_s": seconds / len(pairs), "peak_bytes": cuda_peak if cuda_peak is not None else grown,
            "rms": rms, "parameters": sum(p.numel() for p in model.parameters())}


def configurations(examples, chunk: int | None, max_unchunked_pairs: int, naive_pairs: int):
    """(n, method, pairs_per_call, keep_full) to run, and (n, name, reason) for those left out."""
    runs, left_out = [(naive_pairs, "naive", None, False)], []
    for n in examples:
        pairs = n * (n - 1) // 2
        runs += [(n, "vmap", chunk, False), (n, "rows", None, False)]
        if pairs <= max_unchunked_pairs:
            runs.append((n, "vmap", pairs, False))
        else:
            left_out.append((n, "vmap, all pairs in one call",
                             f"{pairs} pairs > --max-unchunked-pairs {max_unchunked_pairs}: one call would hold "
                             f"{2 * pairs} parameter-sized products and their vmapped activations at once"))
        if n <= 16:
            runs.append((n, "vmap", chunk, True))
    return runs, left_out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, nargs="+", default=[6, 16, 32, 64])
    parser.add_argument("--pairs-per-call", type=int, default=None,
                        help=f"the chunk of the chunked vmap runs (default: bracket_matrix's, {PAIRS_PER_CALL})")
    parser.add_argument("--max-unchunked-pairs", type=int, default=120)
    parser.add_argument("--max-pairs", type=int, default=None,
                        help="time at most this many pairs of a configuration (whole chunks) and extrapolate")
    parser.add_argument("--naive-pairs", type=int, default=4, help="examples of the naive timing (their pairs)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    runs, left_out = configurations(args.examples, args.pairs_per_call, args.max_unchunked_pairs, args.naive_pairs)
    rows, naive_per_pair = [], None
    print(f"bracket_matrix on the default profile's model, {args.device}, {args.threads} thread(s); "
          f"each bracket reduced to its per-tensor RMS unless 'full brackets kept'")
    print("| N | pairs | method | pairs per call | brackets | time (s) | per pair (ms) | ratio to naive | "
          "peak memory growth (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for n, method, chunk, keep in runs:
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            try:
                r = pool.submit(measure, n, method, chunk, keep, args.device, args.threads,
                                None if method == "naive" else args.max_pairs).result()
            except Exception as err:  # noqa: BLE001 - a configuration that breaks is a result too
                print(f"| {n} | | {method} | {chunk or 'default'} | | failed: {type(err).__name__}: {err} | | | |")
                continue
        r.update(method=method, pairs_per_call=chunk, keep_full=keep)
        rows.append(r)
        if method == "naive":
            naive_per_pair = r["per_pair_s"]
        per_call = "—" if method in ("naive", "rows") else chunk or f"{PAIRS_PER_CALL} (default)"
        measured = r["pairs"] if r["measured_pairs"] == r["pairs"] else f"{r['measured_pairs']} of {r['pairs']}"
        seconds = f"{r['seconds']:.1f}" if r["measured_pairs"] == r["pairs"] else \
            f"{r['seconds']:.1f} (≈ {r['per_pair_s'] * r['pairs']:.0f} for all)"
        print(f"| {n} | {measured} | {method} | {per_call} | {'full brackets kept' if keep else 'RMS'} | "
              f"{seconds} | {1000 * r['per_pair_s']:.1f} | {r['per_pair_s'] / naive_per_pair:.2f} | "
              f"{r['peak_bytes'] / 2**20:.0f} |", flush=True)
    for n, name, reason in left_out:
        print(f"N = {n}, {name}: not run ({reason})")
    for n in args.examples:  # every way gives the same reduced brackets
        same_n = [r for r in rows if r["n"] == n and r["rms"] is not None]
        common = min(len(r["rms"]) for r in same_n) if same_n else 0
        if len(same_n) > 1:
            diff = max(float(((r["rms"][:common] - same_n[0]["rms"][:common]).abs()
                              / same_n[0]["rms"][:common].abs().clamp_min(1e-30)).max()) for r in same_n[1:])
            print(f"N = {n}: largest relative difference of the RMS between methods {diff:.1e}")
    return rows


if __name__ == "__main__":
    main()
