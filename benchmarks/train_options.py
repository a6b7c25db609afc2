"""Benchmark: one training step of a profile under the options PyTorch offers on a CPU, side by side.

Each option trains its own copy of the profile's model on the same random batch, the options
interleaved round by round (a shared machine's bursts then hit every option alike); the median step
is reported with its ratio to plain eager. Each option is also run twice from the same seed: "exact to
its rerun" says whether the two runs' weights agree bit for bit after the timed steps, the property
training's resume relies on. Run on demand (it is no test):

    python benchmarks/train_options.py --profile full --rounds 8
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lie_helpers.training.config import get_profile
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import build_model, make_optimizer, train_step

OPTIONS = ("eager", "channels_last", "compile")


def trainer(profile, option: str):
    """A function taking one step of `option` on a fixed batch; the model it trains."""
    model, loss_fn = build_model(profile).train(), get_loss(profile.loss)
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(profile.batch_size, 3, profile.image_size, profile.image_size, generator=g)
    targets = (torch.rand(profile.batch_size, loss_fn.n_outputs, generator=g) < 0.3).float()
    if option == "channels_last":
        model, inputs = model.to(memory_format=torch.channels_last), inputs.contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, profile)
    run = torch.compile(model) if option == "compile" else model
    return (lambda: train_step(run, optimizer, loss_fn, inputs, targets)), model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    rows = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        pairs = {o: (trainer(profile, o), trainer(profile, o)) for o in OPTIONS}
        for (step, _), (again, _) in pairs.values():          # warm-up (compilation, allocator)
            step(), step(), again(), again()
        times = {o: [] for o in OPTIONS}
        for _ in range(args.rounds):
            for o, ((step, _), (again, _)) in pairs.items():
                start = time.perf_counter()
                step()
                times[o].append(time.perf_counter() - start)
                again()
        for o, ((_, a), (_, b)) in pairs.items():
            exact = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
            rows[(threads, o)] = {"median_s": statistics.median(times[o]), "exact_to_rerun": exact}
    print(f"profile {profile.name!r}: MXResNet{profile.depth} width {profile.width}, {profile.image_size} px, "
          f"batch {profile.batch_size}; {args.rounds} rounds")
    print("| threads | option | median step (s) | ratio to eager | exact to its rerun |")
    print("|---|---|---|---|---|")
    for (threads, o), r in rows.items():
        base = rows[(threads, "eager")]["median_s"]
        print(f"| {threads} | {o} | {r['median_s']:.3f} | {r['median_s'] / base:.2f} | {r['exact_to_rerun']} |")
    return rows


if __name__ == "__main__":
    main()
