"""What changes with scale: the key results of two runs of the chain side by side, in a table and in words.

    python -m lie_helpers.pipeline.scale_report runs/default runs/full --out figures/full/scale.md

Both runs' results come from their notebooks (training.results); each row of the table is one quantity
at both scales, and each sentence below it is generated from the two numbers with the rule it states,
so the page says what this pair of runs shows, whichever runs they are.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..data.storage import atomic_write_bytes
from ..training.results import load

HAIR = ("Black_Hair", "Brown_Hair")

# (key, what it is, how to summarise a list over checkpoints)
ROWS = (
    ("01.valid_mean_accuracy", "validation accuracy, mean over the 40 attributes", None),
    ("03.rms_slopes", "RMS law across tensors: slope (least squares)", "range"),
    ("03.rms_within_r", "RMS law within tensors: r with the pair's gradients", "range"),
    ("03.rms_null_rma_slope", "its null, a third example's gradient: slope", "range"),
    ("03.hair_median_rank", "hair colours' median rank among the outputs, by bracket (Black, Brown)", "each"),
    ("03.hair_median_ratio", "hair colours' magnitude / the median output's (Black, Brown)", "each"),
    ("03.hair_residual_rank_median", "hair colours' rank by the residual over J·g (Black, Brown)", "each"),
    ("03.rho_jg_mean", "ρ(bracket, J·g), mean over pairs (median over checkpoints)", None),
    ("03.rho_jg_without", "… without the dominant example", None),
    ("03.rho_jg_random", "… a random direction of the bracket's size (null)", None),
    ("03.adam_rho_jg", "ρ(Adam's bracket, J·g)", None),
    ("02.swap_bracket_ratio", "real swap of two Adam steps: lr²·SGD bracket / real (median)", None),
    ("02.swap_adam_aware_cosine", "real swap: cosine with the Adam-aware prediction", None),
    ("02.persist_adam_cosine", "what persists of a swap: cosine with Adam's bracket", None),
    ("02.persist_adam_ratio", "… its size / lr²·γc₁·𝔅", None),
    ("02.seconds_per_checkpoint", "bracket analysis, seconds a checkpoint (both brackets)", None),
)


def summarise(value, how) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        values = np.asarray(value, dtype=float)
        if how == "each":
            return ", ".join(f"{v:.3g}" for v in values)
        return f"{values.min():.3g} to {values.max():.3g}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def sentences(small: dict, large: dict) -> list[str]:
    """The comparison in words, each with the rule that decides it."""
    out = []
    ranks = [(small.get("03.hair_median_rank"), large.get("03.hair_median_rank"))]
    if all(r is not None for r in ranks[0]):
        s, l = (np.asarray(r, float) for r in ranks[0])
        status = ("among the top ten outputs at both scales" if (s <= 10).all() and (l <= 10).all() else
                  "among the top ten at the small scale only" if (s <= 10).all() else
                  "among the top ten at the large scale only" if (l <= 10).all() else "not among the top ten at either scale")
        out.append(f"The hair colours are {status} by median rank (small {', '.join(f'{v:g}' for v in s)}; "
                   f"large {', '.join(f'{v:g}' for v in l)}; rule: rank ≤ 10 of 40).")
    res = (small.get("03.hair_residual_rank_median"), large.get("03.hair_residual_rank_median"))
    if all(r is not None for r in res):
        s, l = (np.asarray(r, float) for r in res)
        below = lambda x: (x > 20).all()   # noqa: E731
        detail = (f"residual ranks small {', '.join(f'{v:g}' for v in s)}, large {', '.join(f'{v:g}' for v in l)}; "
                  "rule: > 20 of 40 is the bottom half")
        below = lambda x: bool((x > 20).all())   # noqa: E731
        if below(s) and below(l):
            out.append(f"Beyond J·g the hair colours rank in the bottom half at both scales ({detail}): the hair "
                       "signal is a first-order one at both.")
        elif below(s) or below(l):
            out.append(f"Beyond J·g the hair colours rank in the bottom half at one scale only ({detail}): the "
                       "first-order reading changes with scale.")
        else:
            out.append(f"Beyond J·g the hair colours are in the bottom half at neither scale ({detail}).")
    rho = [(r.get("03.rho_jg_mean"), r.get("03.rho_jg_random")) for r in (small, large)]
    if all(v is not None for pair in rho for v in pair):
        gaps = [a - b for a, b in rho]
        out.append("ρ(bracket, J·g) exceeds its random-direction null by " + ", ".join(f"{g:+.2f}" for g in gaps)
                   + " (small, large): " + ("at both scales the agreement is mostly what any direction gets."
                                            if max(gaps) < 0.1 else "the agreement is more than the null's at "
                                            + ("both scales." if min(gaps) >= 0.1 else "one scale."))
                   + " (rule: a gap under 0.1 is no more than the null)")
    within = (small.get("03.rms_within_r"), large.get("03.rms_within_r"))
    if all(w is not None for w in within):
        m = [float(np.median(w)) for w in within]
        out.append(f"Within tensors, a bracket follows its own pair's gradients with median r {m[0]:.2f} (small) and "
                   f"{m[1]:.2f} (large).")
    persist = [(r.get("02.persist_adam_cosine")) for r in (small, large)]
    if all(p is not None for p in persist):
        out.append("What persists of a swap of two Adam steps matches Adam's bracket with cosine "
                   f"{persist[0]:.2f} (small) and {persist[1]:.2f} (large)"
                   + (": Adam's bracket predicts it at both scales (rule: ≥ 0.9)." if min(persist) >= 0.9 else
                      ": not at both scales (rule: ≥ 0.9)."))
    return out


def report(small_dir, large_dir, names=("default", "full")) -> str:
    small, large = load(small_dir), load(large_dir)
    lines = [f"| quantity | {names[0]} | {names[1]} |", "|---|---|---|"]
    lines += [f"| {what} | {summarise(small.get(key), how)} | {summarise(large.get(key), how)} |" for key, what, how in ROWS]
    return "\n".join(lines) + "\n\n" + "\n".join(f"* {s}" for s in sentences(small, large)) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lie_helpers.pipeline.scale_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("small", type=Path)
    parser.add_argument("large", type=Path)
    parser.add_argument("--names", nargs=2, default=("default", "full"))
    parser.add_argument("--out", type=Path, help="write the markdown here (default: print it)")
    args = parser.parse_args(argv)
    text = report(args.small, args.large, args.names)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
