"""Benchmark: source-attributed brackets against the plain bracket, per checkpoint (issue 19, part 1).

Plain: `bracket_matrix` of N examples with every bracket pushed onto the batch (`pushforward`), as
`analysis.reduced_brackets` does. Source-attributed: `source_brackets.source_brackets`, which also gives
J·g per source. Each configuration is timed `--repeats` times, interleaved with the others (the machine
may be shared), and the median is reported. Target: at most 10× the plain time per checkpoint.

    python benchmarks/bench_source_brackets.py                    # CPU, default profile's model, 6 examples, batch 32
    python benchmarks/bench_source_brackets.py --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import lie_helpers as lh
from lie_helpers.analysis.first_order import gradient_pushforward
from lie_helpers.pipeline.bench import benchmark_model, random_examples, synchronize
from lie_helpers.engine.brackets import bracket_matrix, pushforward
from lie_helpers.training.losses import get_loss
from lie_helpers.data.attributes import ATTRIBUTES
from lie_helpers.analysis.source_brackets import source_brackets
from lie_helpers.analysis.source_projections import source_brackets_on_outputs, sketched_source_magnitudes

SUBSET = ["Black_Hair", "Brown_Hair", "Eyeglasses", "Heavy_Makeup"]   # what the study's readouts need, + rest


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-all", action="store_true", help="skip the 40-source configurations (slow on a CPU)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    profile = lh.get_profile("default", image_size=args.size)
    model = benchmark_model(profile, device)
    loss_fn = get_loss(profile.loss)
    x, y = random_examples(profile, args.examples, device)
    B, _ = random_examples(profile, args.batch, device, seed=1)

    configs = {
        "plain: bracket_matrix + pushforward": lambda: bracket_matrix(
            model, loss_fn, x, y, reduce=lambda b: pushforward(model, B, b)),
        "plain + J·g (gradient_pushforward)": lambda: (
            bracket_matrix(model, loss_fn, x, y, reduce=lambda b: pushforward(model, B, b)),
            gradient_pushforward(model, loss_fn, x, y, B)),
        f"sources: {len(SUBSET)} + rest": lambda: source_brackets(model, loss_fn, x, y, B, sources=SUBSET),
        f"sources: {len(SUBSET)} + rest, with self parts": lambda: source_brackets(
            model, loss_fn, x, y, B, sources=SUBSET, self_part=True),
        "sources: 1 + rest, with self parts (one dose weight)": lambda: source_brackets(
            model, loss_fn, x, y, B, sources=["Eyeglasses"], self_part=True),
    }
    eyeglasses = [ATTRIBUTES.index("Eyeglasses")]
    hair = [ATTRIBUTES.index("Black_Hair"), ATTRIBUTES.index("Brown_Hair")]
    configs.update({
        "all 40 sources on 1 output (adjoint, exact)": lambda: source_brackets_on_outputs(
            model, loss_fn, x, y, B, eyeglasses),
        "all 40 sources on 2 outputs (adjoint, exact)": lambda: source_brackets_on_outputs(model, loss_fn, x, y, B, hair),
        "all 40 sources, magnitude on all outputs (32 sketches)": lambda: sketched_source_magnitudes(
            model, loss_fn, x, y, B, sketches=32),
    })
    if not args.skip_all:
        configs["sources: all 40"] = lambda: source_brackets(model, loss_fn, x, y, B)
        configs["sources: all 40, with self parts"] = lambda: source_brackets(model, loss_fn, x, y, B, self_part=True)

    # agreement first (untimed warm-up of every configuration)
    plain = configs["plain: bracket_matrix + pushforward"]()
    check = source_brackets(model, loss_fn, x, y, B, sources=SUBSET)
    reference = torch.stack([plain.brackets[p] for p in plain.pairs])
    err = float((check.bracket_pushforward - reference).norm() / reference.norm())
    for name, fn in configs.items():
        if name != "plain: bracket_matrix + pushforward":
            fn()
    times = {name: [] for name in configs}
    cpu_times = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, fn in configs.items():
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    cpu_seconds = {name: statistics.median(t) for name, t in cpu_times.items()}
    base = seconds["plain: bracket_matrix + pushforward"]
    cpu_base = cpu_seconds["plain: bracket_matrix + pushforward"]
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads)")
    print(f"{device_name} · default profile's model ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{args.size}px, {args.examples} examples ({len(plain.pairs)} pairs), batch {args.batch}, float32")
    print(f"sum of source parts vs plain pushforward: relative difference {err:.1e}")
    # On a shared CPU the wall time of one call depends on the other processes; the process's CPU time
    # (one thread) does much less, so its ratio is the one to quote there.
    print(f"| configuration | wall (s), median of {args.repeats} | ratio | process CPU (s) | ratio |")
    print("|---|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.2f} | {s / base:.1f} | {cpu_seconds[name]:.2f} | {cpu_seconds[name] / cpu_base:.1f} |")
    return {"device": device_name, "seconds": seconds, "ratios": {n: s / base for n, s in seconds.items()},
            "cpu_seconds": cpu_seconds, "cpu_ratios": {n: s / cpu_base for n, s in cpu_seconds.items()},
            "relative_difference": err}


if __name__ == "__main__":
    main()
