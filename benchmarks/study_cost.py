"""What one run of the study costs (notebook 04, `make study`): training, the old readout's records, the source record
(lie_helpers.study.sources) and the known-answer controls, on the study profile's model with random weights and
images (the cost does not depend on training), one CPU thread, process CPU time.

    python benchmarks/study_cost.py                 # width 0.25 (38 of the 40 runs)
    python benchmarks/study_cost.py --widths 0.25,0.5,1.0 --controls

Measured on the shared 2-core machine (one process; two processes sharing it run each about 1.2-2x slower):
  width   train 2000 steps   plain record (6 ex., batch 32)   J·g     source record, one stratum   per run
  0.25    62 s               0.86 s                           0.10 s  10.2 s (11.9x plain)          ~90 s
  0.5     139 s              2.4 s                                    46.8 s                        ~250 s
  1.0     470 s              5.7 s                                    218 s                         ~950 s
  controls (once, width 0.25): loss-weight dose on one source over 2 strata and 4 weights 79 s (two sources: 158 s),
  curvature control in float64 35 s.
A run at width 0.25: training + old records at the last checkpoint only (2 sets x 4 strata: 8 s) + source record
(2 strata: 20 s). The first version read the old records at three checkpoints (23 s a run) and had no source record.
Projection: 4,800 s of CPU in all, balanced over two processes (design.run_cost): about 2,400 s each before the
slow-down of sharing the machine; the first version's 45 min becomes about 50.
"""
from __future__ import annotations

import argparse
import time

import torch

import lie_helpers as lh
from lie_helpers.analysis.first_order import gradient_pushforward
from lie_helpers.analysis.records import analyse_checkpoint
from lie_helpers.pipeline.bench import benchmark_model, random_examples
from lie_helpers.study import known_answers, sources
from lie_helpers.training.losses import get_loss
from lie_helpers.training.train import build_model, make_optimizer, train_step


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="0.25")
    parser.add_argument("--controls", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loss = get_loss("independent")
    for width in (float(w) for w in args.widths.split(",")):
        profile = lh.get_profile("study", width=width)
        model = benchmark_model(profile)
        x, y = random_examples(profile, profile.study_examples)
        batch, _ = random_examples(profile, profile.study_batch, seed=1)
        plain = cpu_seconds(lambda: analyse_checkpoint(model, loss, x, y, batch))
        first = cpu_seconds(lambda: gradient_pushforward(model, loss, x, y, batch))
        source = cpu_seconds(lambda: sources.source_record(model, loss, x, y, batch))
        trained = build_model(profile)
        optimizer = make_optimizer(trained, profile)
        trained.train()
        xb, yb = random_examples(profile, profile.batch_size, seed=3)
        step = cpu_seconds(lambda: [train_step(trained, optimizer, loss, xb, yb) for _ in range(10)]) / 10
        print(f"width {width}: train {profile.steps} steps {step * profile.steps:.0f} s; plain record {plain:.2f} s, "
              f"J·g {first:.2f} s, source record {source:.1f} s ({source / plain:.1f}x plain) per stratum")
    if args.controls:
        profile = lh.get_profile("study")
        model = benchmark_model(profile)
        strata = {k: random_examples(profile, profile.study_examples, seed=5 + k) for k in range(2)}
        batch, _ = random_examples(profile, profile.study_batch, seed=1)
        dose = cpu_seconds(lambda: known_answers.dose_control(model, loss, strata, batch, sources.HAIR))
        model64 = benchmark_model(profile, dtype=torch.float64)
        x, y = strata[0]
        curvature = cpu_seconds(lambda: known_answers.curvature_check(model64, loss, x.double(), y.double(),
                                                                      batch.double()))
        print(f"controls: dose on one source {dose:.0f} s (x{len(known_answers.DOSE_SOURCES)} sources), "
              f"curvature {curvature:.0f} s")


if __name__ == "__main__":
    main()
