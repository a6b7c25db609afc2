"""Benchmark: Adam's bracket for all pairs (`adam_bracket_matrix`) against the SGD bracket (`bracket_matrix`).

Same model, examples, method and chunking; the target is at most 1.5× the SGD bracket's time (the
work is the same N gradients and N(N−1) Hessian-vector products, with tangents P·((1−β1)g + β1·m₀)
instead of g, plus elementwise products). The two are timed alternately, so load on a shared machine
hits both alike; medians are reported. Run on demand (it is no test):

    python benchmarks/bench_adam_bracket.py                   # CPU, default profile's model, 6 examples
    python benchmarks/bench_adam_bracket.py --device cuda --repeats 10
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import lie_helpers as lh
from lie_helpers.engine.adam import AdamState, adam_bracket_matrix
from lie_helpers.pipeline.bench import benchmark_model, random_examples, synchronize
from lie_helpers.engine.brackets import bracket_mode, relative_error
from lie_helpers.training.losses import get_loss


def warm_state(model, loss_fn, inputs, targets, profile, steps: int = 3) -> AdamState:
    """An Adam state with non-zero moments: `steps` real Adam steps on the examples, on a copy of the model."""
    net = copy.deepcopy(model)
    adam = torch.optim.Adam(net.parameters(), lr=profile.lr, betas=tuple(profile.betas))
    with bracket_mode(net, "eval"):
        for _ in range(steps):
            adam.zero_grad()
            loss_fn(net(inputs), targets).backward()
            adam.step()
    return AdamState.from_optimizer(net, adam)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", choices=["auto", "vmap", "rows"], default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    profile = lh.get_profile("default")
    model = benchmark_model(profile, device, dtype)          # lie_helpers.training.train.build_model(profile), BN warmed
    inputs, targets = random_examples(profile, args.examples, device, dtype)
    loss_fn = get_loss(profile.loss)
    state = warm_state(model, loss_fn, inputs, targets, profile)

    runs = {"sgd": lambda: lh.bracket_matrix(model, loss_fn, inputs, targets, method=args.method),
            "adam": lambda: adam_bracket_matrix(model, loss_fn, inputs, targets, state, method=args.method)}
    results = {name: run() for name, run in runs.items()}    # warm-up, and a sanity check below
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["adam"] / med["sgd"]
    ratios = sorted(a / s for a, s in zip(times["adam"], times["sgd"]))

    # The momentum-free, P = 1 limit of Adam's bracket is the SGD bracket: a check that the timed code is right.
    plain = AdamState(state.m, {n: (1 - state.eps) ** 2 * (1 - state.betas[1] ** state.step) * torch.ones_like(v)
                                for n, v in state.v.items()}, state.step, (0.0, state.betas[1]), state.eps, state.lr)
    limit = adam_bracket_matrix(model, loss_fn, inputs, targets, plain, method=args.method)
    err = max(relative_error(limit.brackets[p], results["sgd"].brackets[p]) for p in limit.pairs)

    parameters = sum(p.numel() for p in model.parameters())
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads)")
    print(f"{device_name} · default profile's model (mxresnet{profile.depth} width {profile.width}), "
          f"{profile.image_size}px, {parameters:,} parameters, {args.dtype}, method {args.method}")
    print(f"{len(limit.pairs)} pairs among {args.examples} random examples, Adam state at t = {state.step}; "
          f"P = 1, β1 = 0 limit against bracket_matrix: max relative difference {err:.1e}")
    print("| | median time (s) | all times (s) |")
    print("|---|---|---|")
    for name, label in (("sgd", "bracket_matrix (SGD bracket)"), ("adam", "adam_bracket_matrix (Adam's bracket)")):
        print(f"| {label} | {med[name]:.3f} | {', '.join(f'{t:.3f}' for t in times[name])} |")
    print(f"ratio of medians {ratio:.2f} (per repeat {ratios[0]:.2f}-{ratios[-1]:.2f}); target ≤ 1.5")
    return {"device": device_name, "seconds": med, "times": times, "ratio": ratio, "limit_error": err}


if __name__ == "__main__":
    main()
