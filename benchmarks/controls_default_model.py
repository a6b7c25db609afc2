"""The known-answer controls (lie_helpers.controls) on the default profile's model, untrained or briefly trained.

A measurement on demand, not a test: the loss-weight dose on a few attributes (source readouts against the
study's old relative share) and the curvature manipulation at fixed residuals.

    python benchmarks/controls_default_model.py                               # random images, untrained
    python benchmarks/controls_default_model.py --cache DIR --steps 200       # generated faces' 32 px cache, 200 Adam steps

DIR holds celeba-{train,test}-32px-*.safetensors (lie_helpers.celeba's cache of a generated data folder).
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch

import lie_helpers as lh
from lie_helpers import controls as C
from lie_helpers import storage
from lie_helpers.bench import benchmark_model, random_examples
from lie_helpers.losses import get_loss
from lie_helpers.train import make_optimizer, prepare_inputs, train_step


def load_split(cache: str, split: str):
    (path,) = glob.glob(os.path.join(cache, f"celeba-{split}-32px-*.safetensors"))
    t = storage.load_tensors(path)
    return t["images"], t["attributes"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--attributes", default="Eyeglasses,Black_Hair,Smiling")
    parser.add_argument("--curvature", default="Eyeglasses")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    profile = lh.get_profile("default")
    loss_fn = get_loss(profile.loss)
    if args.cache:
        train_images, train_attributes = load_split(args.cache, "train")
        test_images, test_attributes = load_split(args.cache, "test")
        model = lh.train.build_model(profile)
        optimizer = make_optimizer(model, profile)
        model.train()
        g = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, len(train_images), (profile.batch_size,), generator=g)
            train_step(model, optimizer, loss_fn, prepare_inputs(train_images[idx]), train_attributes[idx].float())
        if args.steps == 0:                                  # running statistics from one batch, not the initial ones
            with torch.no_grad():
                model(prepare_inputs(train_images[:profile.batch_size]))
        print(f"trained {args.steps} Adam steps in {time.perf_counter() - start:.0f} s")
        model = model.eval().to(getattr(torch, args.dtype))
        x = prepare_inputs(test_images[:6], dtype=getattr(torch, args.dtype))
        y = test_attributes[:6].to(getattr(torch, args.dtype))
        batch = prepare_inputs(test_images[6:38], dtype=getattr(torch, args.dtype))
        data = f"generated faces ({args.cache}), test images 0-5 and batch 6-37"
    else:
        model = benchmark_model(profile, dtype=getattr(torch, args.dtype))
        x, y = random_examples(profile, 6, dtype=getattr(torch, args.dtype))
        batch, _ = random_examples(profile, 32, dtype=getattr(torch, args.dtype), seed=1)
        data = "random normal images, random labels, untrained"
    print(f"default profile's model, {args.dtype}, steps {args.steps}; {data}")
    out = {"dose": {}, "curvature": None}
    for attribute in args.attributes.split(","):
        start = time.perf_counter()
        result = C.loss_weight_dose(model, loss_fn, x, y, batch, attribute)
        out["dose"][attribute] = result
        print(f"\nloss-weight dose on {attribute}, w = {result.weights} ({time.perf_counter() - start:.0f} s)")
        print("| readout | expected slope | measured slope | passes |")
        print("|---|---|---|---|")
        for row in result.table():
            extra = f" (curve error {row['curve error']:.1e})" if row["curve error"] is not None else ""
            expected = "—" if row["expected slope"] is None else f"{row['expected slope']:.3f} ± {row['tolerance']:g}"
            print(f"| {row['readout']} | {expected} | {row['slope']:+.3f}{extra} | {row['passed']} |")
    if args.curvature:
        start = time.perf_counter()
        c = C.curvature_control(model, loss_fn, x, y, batch, args.curvature)
        out["curvature"] = c
        print(f"\ncurvature at fixed residuals on {args.curvature}, τ = {c.taus} ({time.perf_counter() - start:.0f} s)")
        print(f"max |Δ residual| per τ: {['%.1e' % v for v in c.residual_change]}; bracket change vs closed form "
              f"(relative error): {['%.1e' % v for v in c.prediction_error]}")
        print("curvature factor λ'/λ over the 6 examples (median [min, max]): " + "; ".join(
            f"τ={t}: {np.median(f):.2f} [{f.min():.2f}, {f.max():.2f}]" for t, f in zip(c.taus, c.curvature_factor)))
        print("| readout | " + " | ".join(f"log10 ratio τ={t}" for t in c.taus) + " |")
        print("|---|" + "---|" * len(c.taus))
        for key, values in c.log10_ratio.items():
            print(f"| {key} | " + " | ".join(f"{v:+.3f}" for v in values) + " |")
    return out


if __name__ == "__main__":
    main()
