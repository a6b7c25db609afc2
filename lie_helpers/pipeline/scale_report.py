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
    ("03.rms_r", "RMS law across tensors: r", "range"),
    ("03.rms_rma_slope", "RMS law across tensors: slope (reduced major axis)", "range"),
    ("03.rms_null_rma_slope", "its null, a third example's gradient: slope (reduced major axis)", "range"),
    ("03.rms_null_r", "its null: r", "range"),
    ("03.rms_within_r", "RMS law within tensors: r with the pair's gradients", "range"),
    ("03.hair_median_rank", "hair colours' median rank among the outputs, by bracket (Black, Brown)", "each"),
    ("03.hair_median_ratio", "hair colours' magnitude / the median output's (Black, Brown)", "each"),
    ("03.hair_residual_rank_median", "hair colours' rank by the residual over J·g (Black, Brown)", "each"),
    ("03.rho_jg_mean", "ρ(bracket, J·g), mean over pairs (median over checkpoints)", None),
    ("03.rho_jg_without", "… without the dominant example", None),
    ("03.rho_jg_median", "… the median over pairs", None),
    ("03.rho_jg_random", "… a random direction of the bracket's size (null)", None),
    ("03.dominant_share", "the dominant example's share of the summed bracket magnitude (median)", None),
    ("03.adam_rho_jg", "ρ(Adam's bracket, J·g)", None),
    ("02.swap_bracket_ratio", "real swap of two Adam steps: lr²·SGD bracket / real (median)", None),
    ("02.swap_bracket_cosine", "real swap: cosine with lr²·SGD bracket", None),
    ("02.swap_adam_aware_cosine", "real swap: cosine with the Adam-aware prediction", None),
    ("02.swap_left_after_adam_aware", "real swap: share left after the Adam-aware prediction", None),
    ("02.swap_sgd_control_cosine", "control, a swap of two SGD steps: cosine with lr²·bracket", None),
    ("02.swap_sgd_control_ratio", "control: its size / lr²·bracket", None),
    ("02.swap_lr_order", "real swap: order in lr (fitted)", None),
    ("02.swaps", "real swaps measured", None),
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


def residual_place(ranks: np.ndarray) -> str:
    """Where both hair colours rank by the residual over J·g (1 = most above what J·g predicts, of 40)."""
    return "top ten" if (ranks <= 10).all() else "bottom half" if (ranks > 20).all() else "middle"


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
        place = [residual_place(np.asarray(r, float)) for r in res]
        found = [name for name, where in zip(("small", "large"), place) if where == "top ten"]
        out.append(f"Beyond J·g the hair colours rank in the {place[0]} at the small scale and in the {place[1]} at the "
                   f"large (residual ranks small {', '.join(f'{v:g}' for v in res[0])}, large "
                   f"{', '.join(f'{v:g}' for v in res[1])}): "
                   + ("neither scale shows a bracket finding on hair beyond what one gradient step predicts"
                      if not found else f"a bracket finding at the {' and '.join(found)} scale")
                   + " (rule: a bracket finding needs residual rank ≤ 10 of 40 for both colours; > 20 is the bottom half).")
    rho = [(r.get("03.rho_jg_mean"), r.get("03.rho_jg_random")) for r in (small, large)]
    if all(v is not None for pair in rho for v in pair):
        gaps = [a - b for a, b in rho]
        out.append("ρ(bracket, J·g) exceeds its random-direction null by " + ", ".join(f"{g:+.2f}" for g in gaps)
                   + " (small, large): " + ("at both scales most of the agreement is what any direction of the "
                                            "bracket's size gets" if max(gaps) < 0.1 else "the agreement is more than "
                                            "the null's at " + ("both scales" if min(gaps) >= 0.1 else "one scale"))
                   + " (rule: a gap of the medians under 0.1 is small against the null).")
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
    slopes = [(r.get("03.rms_rma_slope"), r.get("03.rms_null_rma_slope")) for r in (small, large)]
    if all(v is not None for pair in slopes for v in pair):
        gaps = [abs(float(np.median(b)) - float(np.median(n))) for b, n in slopes]
        out.append("Across tensors, the bracket's RMS line (reduced major axis slope, median "
                   + ", ".join(f"{float(np.median(b)):.2f}" for b, _ in slopes) + ") against its null, a third "
                   "example's gradient (" + ", ".join(f"{float(np.median(n)):.2f}" for _, n in slopes) + "; small, large)"
                   + (": at both scales the null matches it, so the line is mostly the per-tensor scale that every backpropagated quantity shares"
                      if max(gaps) < 0.1 else ": not at both scales") + " (rule: medians within 0.1).")
    swap = [(r.get("02.swap_bracket_ratio"), r.get("02.swap_bracket_cosine"), r.get("02.swaps")) for r in (small, large)]
    if all(v is not None for triple in swap for v in triple[:2]):
        counts = " and ".join(f"{n if n is not None else '?'}" for *_, n in swap)
        out.append("In a real swap of two Adam steps, lr²·(SGD bracket) is " + " and ".join(f"{ratio:.2g}" for ratio, *_ in swap)
                   + f" of the real effect (small, large; medians of {counts} swaps) at cosine "
                   + " and ".join(f"{c:+.2f}" for _, c, _ in swap)
                   + (": the bracket is a small part of a real order effect at both scales" if max(t[0] for t in swap) < 0.01
                      else ": not a small part at both scales") + " (rule: under 0.01 is small).")
    aware = [(r.get("02.swap_adam_aware_cosine"), r.get("02.swap_sgd_control_cosine"), r.get("02.swap_sgd_control_ratio"))
             for r in (small, large)]
    if all(v is not None for triple in aware for v in triple):
        direction = min(c for _, c, _ in aware) >= 0.9
        sized = [name for name, (*_, q) in zip(("small", "large"), aware) if 0.8 <= q <= 1.25]
        size = ("and size at both scales" if len(sized) == 2 else
                f"at both scales, its size at the {sized[0]} scale only" if sized else "at both scales, its size at neither")
        verdict = (f"the control recovers the bracket's direction {size}" if direction else
                   "the measurement does not pass its control at both scales")
        out.append("The Adam-aware prediction (the bracket plus Adam's curvature term) has cosine "
                   + " and ".join(f"{a:.2f}" for a, *_ in aware) + " with the real swap. The control, a swap of two SGD "
                   "steps against lr²·bracket, has cosine " + " and ".join(f"{c:.2f}" for _, c, _ in aware)
                   + " and size ratio " + " and ".join(f"{q:.2f}" for *_, q in aware) + f" (small, large): {verdict} "
                   "(rule: cosine ≥ 0.9; size ratio within 0.8–1.25).")
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
