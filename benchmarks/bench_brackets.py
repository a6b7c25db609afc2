"""Benchmark: all 15 brackets among 6 examples, `bracket_matrix` (both methods) against the naive way.

The naive way is 15 independent double-backward brackets (`lie_bracket`, one pair at a
time). Costs are also given in units of one per-example gradient, measured in the same run.
Run on demand (it is no test):

    python benchmarks/bench_brackets.py                      # CPU, default profile's model
    python benchmarks/bench_brackets.py --width 1 --size 128 --device cuda
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

import lie_helpers as lh
from lie_helpers.mxresnet import mxresnet


def timed(fn, device, repeats: int) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    torch.manual_seed(0)
    model = mxresnet(args.depth, n_outputs=40, width=args.width).to(device, dtype)
    with torch.no_grad():  # give BatchNorm running statistics, then freeze them (eval mode)
        model.train()(torch.randn(32, 3, args.size, args.size, device=device, dtype=dtype))
    model.eval()
    inputs = torch.randn(args.examples, 3, args.size, args.size, device=device, dtype=dtype)
    targets = (torch.rand(args.examples, 40, device=device) > 0.5).to(dtype)
    loss_fn = F.binary_cross_entropy_with_logits
    pairs = list(itertools.combinations(range(args.examples), 2))

    def naive():
        return [lh.lie_bracket(model, loss_fn, (inputs[i:i + 1], targets[i:i + 1]),
                               (inputs[j:j + 1], targets[j:j + 1])) for i, j in pairs]

    def vmapped():
        return lh.bracket_matrix(model, loss_fn, inputs, targets, method="vmap")

    def rows():
        return lh.bracket_matrix(model, loss_fn, inputs, targets, method="rows")

    def one_gradient():
        return lh.gradient(model, loss_fn, (inputs[:1], targets[:1]))

    # Same answer first, then time.
    reference = naive()
    err = max(lh.relative_error(matrix.brackets[p], ref)
              for matrix in (vmapped(), rows()) for p, ref in zip(pairs, reference))

    t_grad = timed(one_gradient, device, args.repeats * 3)
    t_naive = timed(naive, device, args.repeats)
    t_vmap = timed(vmapped, device, args.repeats)
    t_rows = timed(rows, device, args.repeats)
    auto = "rows" if (device.type == "cpu" and sum(p.numel() for p in model.parameters())
                      > lh.brackets.ROWS_ABOVE_PARAMETERS_ON_CPU) else "vmap"
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "model": f"mxresnet{args.depth} width {args.width}, {args.size}px, "
                 f"{sum(p.numel() for p in model.parameters()):,} parameters, {args.dtype}",
        "pairs": len(pairs), "max_rel_diff": err,
        "gradient_s": t_grad, "naive_s": t_naive, "vmap_s": t_vmap, "rows_s": t_rows, "auto": auto,
    }
    print(f"{result['device']} · {result['model']}")
    print(f"{len(pairs)} brackets among {args.examples} examples (max relative difference {err:.1e})")
    print("| method | time (s) | in per-example gradients | ratio to naive |")
    print("|---|---|---|---|")
    print(f"| one per-example gradient | {t_grad:.4f} | 1 | |")
    print(f"| naive: {len(pairs)} × double backward | {t_naive:.3f} | {t_naive / t_grad:.0f} | 1 |")
    for name, t in (("vmap", t_vmap), ("rows", t_rows)):
        chosen = " (auto's choice here)" if name == auto else ""
        print(f"| bracket_matrix, method={name}{chosen} | {t:.3f} | {t / t_grad:.0f} | {t / t_naive:.2f} |")
    return result


if __name__ == "__main__":
    main()
