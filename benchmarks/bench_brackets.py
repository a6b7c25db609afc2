"""Benchmark: all 15 brackets among 6 examples, `bracket_matrix` (both methods) against the naive way.

The naive way is 15 independent double-backward brackets (`lie_bracket`, one pair at a
time); the floor is what any method must compute, done directly in the same run (6 gradients and
30 Hessian-vector products, unbatched). Costs are also given in units of one per-example gradient.
Run on demand (it is no test):

    python benchmarks/bench_brackets.py                      # CPU, default profile's model
    python benchmarks/bench_brackets.py --width 1 --size 128 --device cuda
"""
from __future__ import annotations

import argparse

import torch

import lie_helpers as lh
from lie_helpers.engine.brackets import ROWS_ABOVE_PARAMETERS_ON_CPU
from lie_helpers.pipeline.bench import benchmark_model, random_examples, time_bracket_methods
from lie_helpers.training.losses import get_loss


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=32, help="input resolution")
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    profile = lh.get_profile("default", depth=args.depth, width=args.width, image_size=args.size)
    model = benchmark_model(profile, device, dtype)
    inputs, targets = random_examples(profile, args.examples, device, dtype)
    loss_fn = get_loss(profile.loss)
    r = time_bracket_methods(model, loss_fn, inputs, targets, repeats=args.repeats)
    auto = "rows" if (device.type == "cpu" and r["parameters"] > ROWS_ABOVE_PARAMETERS_ON_CPU) else "vmap"
    err = max(r[m]["max_rel_err_to_naive"] for m in ("vmap", "rows"))
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads)")
    print(f"{device_name} · mxresnet{args.depth} width {args.width}, {args.size}px, "
          f"{r['parameters']:,} parameters, {args.dtype}")
    print(f"{r['pairs']} brackets among {args.examples} examples (max relative difference {err:.1e})")
    print("| method | time (s) | in per-example gradients | ratio to naive |")
    print("|---|---|---|---|")
    print(f"| one per-example gradient | {r['gradient_s']:.4f} | 1 | |")
    print(f"| naive: {r['pairs']} × double backward | {r['naive_s']:.3f} | {r['naive_s'] / r['gradient_s']:.0f} | 1 |")
    print(f"| floor: {args.examples} gradients + {2 * r['pairs']} Hessian-vector products, unbatched | "
          f"{r['floor_s']:.3f} | {r['floor_s'] / r['gradient_s']:.0f} | {r['floor_s'] / r['naive_s']:.2f} |")
    for name in ("vmap", "rows"):
        chosen = " (auto's choice here)" if name == auto else ""
        t = r[name]["seconds"]
        print(f"| bracket_matrix, method={name}{chosen} | {t:.3f} | {t / r['gradient_s']:.0f} | "
              f"{r[name]['ratio_to_naive']:.2f} ({t / r['floor_s']:.2f}× the floor) |")
    return {"device": device_name, "auto": auto, **r}


if __name__ == "__main__":
    main()
