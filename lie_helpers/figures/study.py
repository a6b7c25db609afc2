"""The study's figures (notebook 04): the known-answer controls, each arm's source shares, the contrasts, the dial."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..analysis.currency import CORRELATED_CONTROLS, HAIR_PAIR
from ..study import design
from ..study.contrasts import CONTRASTS, values
from ..study.known_answers import DOSE_EXPECTED
from ..study.sources import GLASSES, HAIR, MAKEUP
from ..training.config import Profile
from .style import GREY, PALETTE, group_colour

MAIN_ARMS = ("independent", "independent, no bands", "categorical, matched", "exclusive makeup", "categorical x4")
SOURCE_COLOURS = {HAIR: group_colour(HAIR_PAIR), GLASSES: group_colour(("Eyeglasses",)),
                  MAKEUP: group_colour(CORRELATED_CONTROLS)}
READOUT_STYLE = {   # readout -> (colour, marker, line)
    "Q, self-share": (PALETTE[0], "o", "-"), "Q^g, J·g share": (PALETTE[2], "s", "-"),
    "Q − 2·Q^g (C5's statistic)": (PALETTE[4], "D", "-"),
    "old readout, bracket": (PALETTE[3], "v", ":"), "old readout, J·g": (PALETTE[1], "^", ":"),
}


def plot_dose_control(record: dict):
    """The loss-weight dose at the control run: each readout's change from w = 1 against log10 w (markers), and the
    slope it must have (thin dashed lines, from known_answers.DOSE_EXPECTED); one panel per dosed source."""
    doses = record["dose"]
    fig, axes = plt.subplots(1, len(doses), figsize=(5.2 * len(doses), 4.4), sharey=True, squeeze=False)
    for ax, (source, dose) in zip(axes[0], doses.items()):
        x = np.log10(dose["weights"])
        for name, readout in dose["readouts"].items():
            colour, marker, line = READOUT_STYLE[name]
            v = np.asarray(readout["values"]) - readout["values"][0]
            ax.plot(x, readout["expected"] * x, "--", color=colour, lw=0.8, alpha=0.7)
            ax.plot(x, v, marker=marker, ls=line, color=colour,
                    label=f"{name}: slope {readout['slope']:+.2f} (expected {readout['expected']:g})")
        ax.axhline(0, color=GREY, lw=0.6)
        ax.set(xlabel="log10 w (loss weight on the source)", title=f"dose on {source}")
        ax.set_xticks(x, [f"{v:.2f}" for v in x])
        ax.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel("change from w = 1 (log10)")
    fig.tight_layout()
    return fig


def plot_source_shares(shares_by_arm: dict, arms=MAIN_ARMS, sources=(HAIR, GLASSES, MAKEUP)):
    """Each arm's self-share Q (left) and J·g share Q^g (right) of the named sources: a dot per seed, a bar for the
    mean over seeds."""
    arms = [a for a in arms if a in shares_by_arm]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.8 / len(arms)
    for ax, what, title in ((axes[0], "Q", "self-share Q (self part D_k)"), (axes[1], "Q^g", "J·g share Q^g")):
        for k, arm in enumerate(arms):
            rows = np.array([values(shares_by_arm[arm], s, what) for s in sources])     # [sources, seeds]
            x = np.arange(len(sources)) + (k - (len(arms) - 1) / 2) * width
            ax.bar(x, rows.mean(1), width * 0.9, color=PALETTE[k], alpha=0.45,
                   label=f"{arm} ({rows.shape[1]} seeds)" if ax is axes[0] else None)
            for j in range(rows.shape[1]):
                ax.plot(x, rows[:, j], "o", color=PALETTE[k], ms=3)
        ax.axhline(0, color=GREY, lw=0.8)
        ax.set_xticks(range(len(sources)), sources)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("log10 magnitude − reference sources' median\n(Fisher units, last checkpoint)")
    fig.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def _interval(ax, y, row, marker, colour, hollow, label, limits):
    """One interval; an infinite end is drawn to the axis edge with an arrow head."""
    low, high = (max(row["low"], limits[0]), min(row["high"], limits[1]))
    ax.plot([low, high], [y, y], color=colour, lw=1.4)
    for end, edge, head in ((row["low"], limits[0], "<"), (row["high"], limits[1], ">")):
        if not np.isfinite(end):
            ax.plot(edge, y, head, color=colour, ms=6)
    ax.plot(row["mean"], y, marker, color=colour, mfc="none" if hollow else colour, ms=7, label=label)


def plot_contrasts(tables: dict):
    """The pre-registered contrasts (contrasts.contrast_tables): per contrast the mean over seeds and its interval at
    the Holm-consistent level, on Q (filled circles), on Q^g (hollow squares) and Q − 2·Q^g paired by seed
    (diamonds); red where Holm rejects (p ≤ 0.05)."""
    names = list(CONTRASTS)
    rows = [(n, key) for n in names for key in ("Q", "Q^g", "against J·g") if n in tables[key]]
    finite = [v for n, key in rows for v in (tables[key][n]["mean"], tables[key][n]["low"], tables[key][n]["high"])
              if np.isfinite(v)]
    span = max(1.0, np.ptp(finite)) if finite else 1.0
    limits = (min(finite + [0]) - 0.15 * span, max(finite + [0]) + 0.15 * span)
    fig, ax = plt.subplots(figsize=(11, 5.2))
    styles = {"Q": ("o", False, "on Q"), "Q^g": ("s", True, "on Q^g"), "against J·g": ("D", False, "Q − 2·Q^g, paired")}
    seen = set()
    for y, (name, key) in enumerate(rows):
        row = tables[key][name]
        marker, hollow, label = styles[key]
        colour = PALETTE[3] if row["p_holm"] <= 0.05 else "0.3"
        _interval(ax, y, row, marker, colour, hollow, None if key in seen else label, limits)
        seen.add(key)
        ax.annotate(f"Holm p {row['p_holm']:.3f}, {row['level']:.1%}", (limits[1], y), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=7, annotation_clip=False)
    ax.axvline(0, color=GREY, lw=0.8)
    ax.set_xlim(*limits)
    ax.set_yticks(range(len(rows)), [f"{n.split(':')[0]} {'' if key == 'Q' else '(' + key + ')'}" for n, key in rows],
                  fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("contrast over seeds (log10); interval at its Holm-consistent level (red: Holm p ≤ 0.05)")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.06), ncol=3)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return fig


def plot_training_dose(training: dict):
    """The training-level dose: Eyeglasses' mean |residual| on the glasses band's images against the arm's band
    (known_answers.training_dose); a dot per seed, the line through the means."""
    fig, ax = plt.subplots(figsize=(6, 4))
    colour = group_colour(("Eyeglasses",))
    for band, arm in zip(training["bands"], training["arms"]):
        v = training["per_seed"][arm]
        ax.plot(np.full(len(v), band), v, ".", color=colour, alpha=0.6)
    ax.plot(training["bands"], training["means"], "o-", color=colour, label="mean over seeds")
    ax.set(xlabel="glasses band of the arm's data", ylabel="Eyeglasses mean |p − y|\non the band's images",
           title=f"Training-level dose ({len(training['seeds'])} seeds)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_dial(profile: Profile, shares_by_arm: dict):
    """The dial: Q of the hair, glasses and makeup sources against the band fraction (independent loss; dots: seeds)."""
    arm_of = {a.name: a for a in design.study_arms(profile)}
    dial = [n for n in ("independent, no bands", "independent, bands / 3", "independent") if n in shares_by_arm]
    fig, ax = plt.subplots(figsize=(6, 4))
    for source, colour in SOURCE_COLOURS.items():
        xs = [arm_of[n].band for n in dial]
        v = [values(shares_by_arm[n], source) for n in dial]
        label = f"{source}" + (" (not banded)" if source == MAKEUP else "")
        ax.plot(xs, [a.mean() for a in v], "o-", color=colour, label=label)
        for x, a in zip(xs, v):
            ax.plot(np.full(len(a), x), a, ".", color=colour, alpha=0.5)
    ax.axhline(0, color=GREY, lw=0.8)
    ax.set(xlabel="noise band: fraction of faces at posterior 0.5", ylabel="self-share Q (log10)",
           title="The dial (independent loss; dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


assert set(READOUT_STYLE) == set(DOSE_EXPECTED)
