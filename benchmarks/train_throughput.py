"""Benchmark: training throughput (images/s) of a profile, by how the batches are fed.

  (a) cached   the training loop of lie_helpers.training.train: uint8 tensors in memory (the data
               module's decoded cache), indexed per batch, normalised, moved to the device;
  (b) jpeg     the same steps fed by a torch DataLoader over torchvision's CelebA dataset
               (lie_helpers.data.celeba.CelebAFolder), decoding and resizing JPEGs every batch;
  (c) tensor   the same steps on one float batch already on the device: the compute alone.

All three run `train_step` (forward, backward, Adam) on the profile's model and batch size.
Speeds come from the median step, with the feeds interleaved in rounds: on a shared
machine, other processes cause bursts of slow steps that would otherwise decide the result.
(b) needs a data folder: give --data-root (generated data is drawn there if missing).
Without it, (a) uses random uint8 tensors of the profile's shape and (b) is skipped.
Run on demand (it is no test), from the repository root:

    python benchmarks/train_throughput.py --profile ci --steps 20
    python benchmarks/train_throughput.py --profile default --steps 20 --data-root data --workers 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision import transforms

from lie_helpers.data.celeba import CelebAFolder
from lie_helpers.training.config import get_profile
from lie_helpers.training.datasets import load_profile_split, prepare_data, profile_verify_checksums
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import build_model, epoch_order, make_optimizer, prepare_inputs, train_step

WARMUP = 3  # untimed steps first for each feed: allocator, kernel selection, DataLoader start


def step_times(batches, profile, device):
    """Seconds of each training step fed by `batches` (an iterator of uint8 or float images, targets), forever."""
    model = build_model(profile).to(device).train()
    optimizer, loss_fn = make_optimizer(model, profile), get_loss(profile.loss)
    while True:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        images, targets = next(batches)
        inputs = prepare_inputs(images, device) if images.dtype == torch.uint8 else images
        train_step(model, optimizer, loss_fn, inputs, targets.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        yield time.perf_counter() - start


def cached_batches(images, targets, profile):
    """The batches of lie_helpers.training.train: per-epoch order from (seed, epoch), drop the last partial batch."""
    per_epoch, step = len(images) // profile.batch_size, 0
    while True:
        epoch, position = divmod(step, per_epoch)
        if position == 0:
            order = epoch_order(len(images), profile.seed, epoch)
        idx = order[position * profile.batch_size:(position + 1) * profile.batch_size]
        yield images[idx], targets[idx]
        step += 1


def jpeg_batches(root, profile, workers: int):
    """Batches decoded from the JPEG files by a DataLoader (center crop 178, antialiased resize)."""
    transform = transforms.Compose([transforms.CenterCrop(178),
                                    transforms.Resize((profile.image_size, profile.image_size), antialias=True),
                                    transforms.PILToTensor()])
    dataset = CelebAFolder(root, split="train", transform=transform,
                           verify_checksums=profile_verify_checksums(profile))
    loader = torch.utils.data.DataLoader(dataset, batch_size=profile.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, generator=torch.Generator().manual_seed(0))
    while True:
        yield from loader


def fixed_batch(images, targets, profile, device):
    """One normalised float batch on the device, forever."""
    inputs = prepare_inputs(images[:profile.batch_size], device)
    batch = (inputs, targets[:profile.batch_size].to(device))
    while True:
        yield batch


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per way of feeding")
    parser.add_argument("--rounds", type=int, default=3, help="the timed steps are split into interleaved rounds")
    parser.add_argument("--data-root", help="folder for the profile's data (enables (a) on real files and (b))")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for (b)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = {"data_root": args.data_root} if args.data_root else {}
    profile = get_profile(args.profile, **overrides)
    if args.data_root:
        root = prepare_data(profile)
        split = load_profile_split(profile, "train")
        images, targets = split.images, split.attributes
        source = f"{root} ({len(images)} training images)"
    else:
        root, g = None, torch.Generator().manual_seed(0)
        n = max(profile.batch_size, profile.generated_images * 8 // 10)
        images = torch.randint(0, 256, (n, 3, profile.image_size, profile.image_size), dtype=torch.uint8, generator=g)
        targets = torch.randint(0, 2, (n, 40), generator=g)
        source = f"random uint8 tensors ({n} images); no --data-root, so no JPEG path"

    print(f"profile {profile.name!r}: MXResNet{profile.depth} width {profile.width}, {profile.image_size}px, "
          f"batch {profile.batch_size}, {profile.steps} steps; data: {source}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); median step of {args.steps} "
          f"timed steps per feed, in {args.rounds} interleaved rounds after {WARMUP} warm-up steps")
    rows = []
    for device in map(torch.device, args.devices.split(",")):
        feeds = {"(a) cached uint8": cached_batches(images, targets, profile),
                 "(c) float on device": fixed_batch(images, targets, profile, device)}
        if root is not None:
            feeds["(b) JPEG DataLoader"] = jpeg_batches(root, profile, args.workers)
        steppers = {name: step_times(batches, profile, device) for name, batches in sorted(feeds.items())}
        for stepper in steppers.values():
            for _ in range(WARMUP):
                next(stepper)
        times = {name: [] for name in steppers}
        for _ in range(args.rounds):  # interleaved, so that changing load on the machine hits every feed
            for name, stepper in steppers.items():
                times[name] += [next(stepper) for _ in range(args.steps // args.rounds)]
        for name, seconds in times.items():
            median = statistics.median(seconds)
            rows.append({"device": device.type, "feed": name, "steps_per_s": 1 / median,
                         "images_per_s": profile.batch_size / median})

    print(f"\n{'device':<7}{'feed':<22}{'steps/s':>9}{'images/s':>10}{'vs (c)':>8}")
    for row in rows:
        compute = next(r for r in rows if r["device"] == row["device"] and r["feed"].startswith("(c)"))
        print(f"{row['device']:<7}{row['feed']:<22}{row['steps_per_s']:>9.2f}{row['images_per_s']:>10.0f}"
              f"{row['images_per_s'] / compute['images_per_s']:>8.2f}")
    steps_per_s = next(r["steps_per_s"] for r in rows if r["feed"].startswith("(a)"))
    print(f"\nAt (a)'s speed on {rows[0]['device']}, the profile's {profile.steps} steps take "
          f"{profile.steps / steps_per_s / 60:.1f} min (plus validation at each checkpoint).")
    return rows


if __name__ == "__main__":
    main()
