"""The study's figures (notebook 04): each arm's profile, the contrasts, the dial."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..analysis.currency import CORRELATED_CONTROLS, HAIR_PAIR
from ..data.attributes import ATTRIBUTES
from ..study import design
from ..study.design import GLASSES
from ..study.contrasts import CONTRASTS, attribute_means
from ..training.config import Profile
from .style import PALETTE, group_colour

KEY_ATTRIBUTES = (*HAIR_PAIR, *GLASSES, *CORRELATED_CONTROLS, "Blond_Hair", "Gray_Hair", "Male", "Attractive")

MAIN_ARMS = ("independent", "independent, no bands", "categorical, matched", "exclusive makeup", "categorical x4")


def plot_arm_profiles(profiles: dict, arms=MAIN_ARMS, attributes=KEY_ATTRIBUTES):
    """Each arm's relative log10 magnitude of the key attributes: a dot per seed, a bar for the mean."""
    arms = [a for a in arms if a in profiles]
    fig, ax = plt.subplots(figsize=(12, 4.4))
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        values = np.array([[p.pooled[ATTRIBUTES.index(a)] for a in attributes] for p in profiles[arm]])
        x = np.arange(len(attributes)) + (k - (len(arms) - 1) / 2) * width
        ax.bar(x, values.mean(0), width * 0.9, color=PALETTE[k], alpha=0.45, label=f"{arm} ({len(values)} seeds)")
        for row in values:
            ax.plot(x, row, "o", color=PALETTE[k], ms=3)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(attributes)), attributes, rotation=20, ha="right")
    ax.set_ylabel("log10 magnitude − median attribute's\n(Fisher units; late checkpoints, all strata)")
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    fig.tight_layout()
    return fig


def plot_contrasts(table: dict, first_order: dict | None = None):
    """The pre-registered contrasts: mean and 95% t interval over seeds, Holm p beside each (red: < 0.05);
    hollow, below: the same contrast on J·g of the same examples. C1–C4 are log10 differences; C5 a
    difference of AUROCs, on its own axis (reference 0 for both)."""
    names = list(table)
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1.4]})
    for ax, rows in ((ax_l, names[:-1]), (ax_a, names[-1:])):
        for y, name in enumerate(rows):
            sources = [(table, 0.0, "o", "brackets")]
            if first_order is not None and name in CONTRASTS:
                sources.append((first_order, 0.25, "s", "J·g"))
            for source, dy, marker, label in sources:
                r = source[name]
                colour = PALETTE[3] if r["p_holm"] < 0.05 else "0.3"
                ax.errorbar(r["mean"], y + dy, xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]], fmt=marker,
                            capsize=3, color=colour, mfc="none" if label == "J·g" else colour,
                            label=label if y == 0 and ax is ax_l else None)
                ax.annotate(f"Holm p {r['p_holm']:.3f}", (r["high"], y + dy), xytext=(6, 0), textcoords="offset points",
                            va="center", fontsize=7)
        ax.axvline(0, color="0.3", lw=0.8)
        labels = [n.split(": ", 1)[1] for n in rows]
        ax.set_yticks(range(len(rows)), [t.replace(" of the manipulated attributes within (a)", "\n(manipulated, in (a))")
                                         for t in labels], fontsize=8)
        low, high = ax.get_xlim()
        ax.set_xlim(low, high + 0.35 * (high - low))      # room for the Holm p labels
        ax.set_ylim(len(rows) - 0.5, -0.5)
    ax_l.set_title("C1–C4 (log10 ratio of relative magnitudes)", fontsize=10)
    ax_a.set_title("C5 (difference of AUROCs)", fontsize=10)
    ax_l.set_xlabel("mean over seeds, 95% t interval (red: Holm p < 0.05)")
    ax_a.set_xlabel("brackets − J·g")
    if first_order is not None:
        ax_l.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_dial(profile: Profile, profiles: dict):
    """The dial: hair pair and Eyeglasses relative magnitude against the band fraction (independent loss)."""
    arm_of = {a.name: a for a in design.study_arms(profile)}
    dial = [n for n in ("independent, no bands", "independent, bands / 3", "independent") if n in profiles]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, names in (("Black & Brown hair", HAIR_PAIR), ("Eyeglasses", GLASSES),
                         ("makeup & lipstick (not banded)", CORRELATED_CONTROLS)):
        xs = [arm_of[n].band for n in dial]
        values = [attribute_means(profiles[n], names) for n in dial]
        ax.plot(xs, [v.mean() for v in values], "o-", color=group_colour(names), label=label)
        for x, v in zip(xs, values):
            ax.plot(np.full(len(v), x), v, ".", color=group_colour(names), alpha=0.5)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set(xlabel="noise band: fraction of faces at posterior 0.5", ylabel="log10 magnitude\n− median attribute's",
           title="The dial (independent loss; dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
