"""`python -m lie_helpers.study`: train and analyse the study's runs (`make study`; notebook 04 reads them)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import REPO_DIR
from ..training.config import get_profile, run_paths
from .records import train_study_runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lie_helpers.study",
                                     description="Train and analyse the study's runs (notebook 04 reads them).")
    parser.add_argument("--profile", default="study")
    parser.add_argument("--shard", default="0/1", metavar="K/N", help="run the runs K, K+N, … (one process a core)")
    parser.add_argument("--run-dir", metavar="DIR", help="the study's run folder (default: runs/<profile>), as the "
                        "chain's --run-dir for notebook 04")
    args = parser.parse_args(argv)
    try:
        k, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        k = n = 0
    if not 0 <= k < n:      # checked before any data is drawn or read
        raise SystemExit(f"--shard must be K/N with 0 <= K < N (run K of N processes), e.g. 0/2 and 1/2; "
                         f"got {args.shard!r}.")
    run_dir = None if args.run_dir is None else Path(args.run_dir).resolve()      # relative to where it was called
    os.chdir(REPO_DIR / "notebooks")      # where notebook 04 runs: the profile's paths (../data, ../runs) agree
    profile = get_profile(args.profile)
    seconds = train_study_runs(profile, run_paths(profile, run_dir).root, shard=(k, n))
    for (arm, seed), t in seconds.items():
        print(f"{arm:<28} seed {seed}: {t:6.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
