"""The known-answer controls (lie_helpers.controls) on the default profile's model, untrained or briefly trained.

A measurement on demand, not a test: the loss-weight dose on a few attributes (source readouts against the
study's old relative share) and the curvature manipulation at fixed residuals.

    python benchmarks/controls_default_model.py                               # random images, untrained
    python benchmarks/controls_default_model.py --cache DIR --steps 200       # generated faces' 32 px cache, 200 Adam steps

DIR holds celeba-{train,test}-32px-*.safetensors (lie_helpers.celeba's cache of a generated data folder).

Measured (float64, 6 test examples, batch of the next 32; slopes of log10 magnitude on log10 w, w = 1, 2, 4, 8):
                                     trained 300 steps, generated faces,       untrained, random images
                                     bands 0.3 (n = 600 cache)
                                     Eyeglasses  Black_Hair  Smiling           Eyeglasses  Black_Hair  Smiling
  self part D_k (expected 2)         2.000       2.000       2.000             2.000       2.000       2.000
  J·g source k (expected 1)          1.000       1.000       1.000             1.000       1.000       1.000
  source part S_k (its exact curve)  1.125       1.004       1.098             1.134       1.435       1.637
  old relative share, bracket (2)    −0.023      +0.208      −0.004            +0.349      +1.298      +1.165
  old relative share, J·g (1)        −0.108      +0.079      −0.064            +0.389      +0.959      +1.332
Curvature at fixed residuals (trained, Eyeglasses, τ = 0.5, 2, 4): residuals moved ≤ 3.5e-18, J·g 0.000,
bracket change = closed form to 1.7e-14; log10 change of D_k −0.55, +0.55, +0.35; of S_k +0.007, +0.018,
+0.013; of the whole bracket −0.000, −0.003, −0.006.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch

import lie_helpers as lh
from lie_helpers.analysis import controls as C
from lie_helpers.data import storage
from lie_helpers.pipeline.bench import benchmark_model, random_examples
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import make_optimizer, prepare_inputs, train_step


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
