"""Benchmark: the first-order baselines of one checkpoint (lie_helpers.analysis.first_order) against its bracket analysis.

The budget (issue 10): the baselines cost no more than the bracket analysis itself. Both run on
the default profile's model (random weights, BatchNorm statistics warmed up) with random
inputs of the analysis' size: 6 bracket examples, a 32-image pushforward batch. The bracket
analysis is timed twice: `bracket_matrix` alone, and `analysis.analyse_checkpoint` (brackets
plus their RMS, pushforwards and the batch logits: what a checkpoint costs today).
Run on demand (it is no test):

    python benchmarks/bench_baselines.py                  # CPU, 1 and 2 threads
    python benchmarks/bench_baselines.py --threads 2 --ggn-samples 16
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lie_helpers.analysis import first_order
from lie_helpers.analysis.records import analyse_checkpoint
from lie_helpers.engine.brackets import bracket_matrix
from lie_helpers.training.config import get_profile
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import build_model


def timed(fns: dict, repeats: int) -> dict:
    """Median wall time in seconds of each fn(), after one warm-up call each. The calls are
    interleaved, round after round, so that a change of load on a shared machine hits all alike."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ggn-samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    profile = get_profile(args.profile)
    model = build_model(profile)
    loss_fn = get_loss(profile.loss)
    g = torch.Generator().manual_seed(0)
    size, n_out = profile.image_size, loss_fn.n_outputs
    with torch.no_grad():  # give BatchNorm running statistics (eval mode uses them)
        model.train()(torch.randn(64, 3, size, size, generator=g))
    model.eval()
    examples = torch.randn(profile.bracket_examples, 3, size, size, generator=g)
    targets = (torch.rand(profile.bracket_examples, n_out, generator=g) > 0.5).float()
    batch = torch.randn(profile.pushforward_batch, 3, size, size, generator=g)
    batch_targets = (torch.rand(profile.pushforward_batch, n_out, generator=g) > 0.5).float()

    parts = {
        "gradient_pushforward": lambda: first_order.gradient_pushforward(model, loss_fn, examples, targets, batch),
        "per_attribute_loss": lambda: first_order.per_attribute_loss(model, loss_fn, batch, batch_targets),
        "attribute_gradient_gram": lambda: first_order.attribute_gradient_gram(model, loss_fn, batch, batch_targets),
        f"ggn_trace_per_output ({args.ggn_samples} samples)":
            lambda: first_order.ggn_trace_per_output(model, loss_fn, batch, samples=args.ggn_samples),
    }
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.profile} profile: mxresnet{profile.depth} width {profile.width}, {size}px, {n_params:,} parameters; "
          f"{profile.bracket_examples} examples, batch {profile.pushforward_batch}")
    ggn = first_order.ggn_trace_per_output(model, loss_fn, batch, samples=args.ggn_samples)
    print(f"GGN trace with {args.ggn_samples} samples: relative standard error "
          f"{(ggn.standard_error / ggn.value).median():.3f} (median over outputs), "
          f"{(ggn.standard_error / ggn.value).max():.3f} (largest)")
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        t_parts = timed({"bracket_matrix": lambda: bracket_matrix(model, loss_fn, examples, targets),
                         "analyse_checkpoint": lambda: analyse_checkpoint(model, loss_fn, examples, targets, batch),
                         **parts}, args.repeats)
        t_matrix, t_analysis = t_parts.pop("bracket_matrix"), t_parts.pop("analyse_checkpoint")
        total = sum(t_parts.values())  # calibration_error and the statistics are microseconds on stored arrays
        results[threads] = {"bracket_matrix_s": t_matrix, "analyse_checkpoint_s": t_analysis, **t_parts,
                            "baselines_total_s": total}
        print(f"\nCPU, {threads} thread(s), load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("| computation | time (s) | ratio to analyse_checkpoint |")
        print("|---|---|---|")
        print(f"| bracket_matrix (15 brackets) | {t_matrix:.3f} | {t_matrix / t_analysis:.2f} |")
        print(f"| analyse_checkpoint (today's bracket analysis) | {t_analysis:.3f} | 1 |")
        for name, t in t_parts.items():
            print(f"| {name} | {t:.3f} | {t / t_analysis:.2f} |")
        print(f"| **all baselines** | {total:.3f} | {total / t_analysis:.2f} "
              f"(to bracket_matrix: {total / t_matrix:.2f}) |")
    return results


if __name__ == "__main__":
    main()
