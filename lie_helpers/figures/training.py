"""The training figures (notebooks 01 and 03): example images, base rates, loss and accuracy curves."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..data.attributes import ATTRIBUTES, HAIR_COLOURS
from .style import GREY, attribute_colours, other_colours, wrap_to_figure

# Each plot function takes `caption`, the figure's title line (what it shows); save_figure adds
# the full caption (with describe_source) under the figure.

SHORT_NAMES = {"Male": "male", "Smiling": "smiling", "Eyeglasses": "glasses", "Wearing_Hat": "hat",
               "Young": "young"}


def _title(fig, caption: str) -> None:
    """`caption` as the figure's title line, wrapped."""
    fig.suptitle(wrap_to_figure(fig, caption, 11), fontsize=11)


def _hair_label(row: dict) -> str:
    colours = [name.split("_")[0].lower() for name in HAIR_COLOURS if row[name]]
    if row["Bald"]:
        return "bald"
    return " + ".join(colours) + " hair" if colours else "no hair-colour label"


def plot_image_grid(images, attributes, n: int = 16, caption: str = "", *,
                    show=("Male", "Smiling", "Eyeglasses", "Wearing_Hat"), marked=None, marked_label="marked"):
    """The first `n` images (uint8 [N, 3, S, S]) with their hair colour and the positive `show` attributes.

    attributes: {0, 1} [N, 40] in CelebA's order. marked: optional booleans per image; those
    images get a red frame and `marked_label` (e.g. faces whose hair shade is ambiguous).
    """
    n = min(n, len(images))
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        row = dict(zip(ATTRIBUTES, (int(v) for v in attributes[i])))
        ax.imshow(np.asarray(images[i]).transpose(1, 2, 0), interpolation="nearest")
        tags = [SHORT_NAMES.get(a, a) for a in show if row[a]]
        label = _hair_label(row) + "\n" + (", ".join(tags) or "–")
        if marked is not None and marked[i]:
            label += f"\n{marked_label}"
            ax.add_patch(plt.Rectangle((-0.5, -0.5), images.shape[-1], images.shape[-2], fill=False,
                                       edgecolor="red", linewidth=3))
        ax.set_title(label, fontsize=7, pad=2)
    _title(fig, caption)
    fig.tight_layout()
    return fig


def plot_base_rates(observed: dict, expected: dict, caption: str = "", *,
                    labels=("observed", "expected")):
    """One row per attribute: the rate of positive labels in `observed` vs `expected` (dicts name -> rate)."""
    names = list(observed)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6.5, 0.17 * len(names) + 1.3))
    ax.hlines(y, [observed[a] for a in names], [expected[a] for a in names], color="0.7", lw=1)
    ax.plot([expected[a] for a in names], y, "o", ms=5, mfc="none", color=GREY, label=labels[1])
    ax.plot([observed[a] for a in names], y, "o", ms=3.5, color="k", label=labels[0])
    ax.set_yticks(y, [a.replace("_", " ") for a in names], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="fraction of images with the attribute", xlim=(0, 1))
    ax.legend(loc="upper right", fontsize=8)
    _title(fig, caption)
    fig.tight_layout()
    return fig


def accuracy_frame(metrics) -> pd.DataFrame:
    """Validation accuracy per checkpoint: one row per step (the index), one column per attribute."""
    steps = pd.Index([m["step"] for m in metrics], name="step")
    return pd.DataFrame([m["valid_accuracy"] for m in metrics], index=steps)


def plot_training_curves(metrics, caption: str = "", highlight=("Black_Hair", "Brown_Hair"), *,
                         references=None):
    """Loss against step, and every attribute's validation accuracy with `highlight` in colour.

    The accuracy is drawn twice: over its whole range 0–1 (where the untrained network and the
    attributes the image cannot predict fall), and zoomed onto the trained `highlight` curves and
    the mean; the zoom band is shaded on the whole-range panel and named in the zoom's title.
    metrics: lie_helpers.train.load_metrics records. references: optional {label: accuracy}
    drawn as dotted lines (e.g. the best accuracy the data allows).
    Returns the Figure (axes: loss, accuracy over 0–1, accuracy zoomed).
    """
    accuracy = accuracy_frame(metrics)
    steps = accuracy.index.to_numpy()
    fig, (ax_loss, ax_acc, ax_zoom) = plt.subplots(1, 3, figsize=(17, 4.8))
    colours = attribute_colours(highlight)
    reference_colours = other_colours(len(references or {}), used=colours.values())

    train = [(m["step"], m["train_loss"]) for m in metrics if m["train_loss"] is not None]
    if train:
        ax_loss.plot(*zip(*train), "o-", ms=3, label="training (mean over the steps since the last checkpoint)")
    valid = [m["valid_loss"] for m in metrics]
    ax_loss.plot(steps, valid, "s-", ms=3, label="validation")
    ax_loss.annotate(f"{valid[-1]:.3f}", (steps[-1], valid[-1]), textcoords="offset points", xytext=(4, 4),
                     fontsize=8)
    ax_loss.set(xlabel="training step", ylabel="loss (mean over attributes and images)", title="Loss")
    ax_loss.legend(fontsize=8)

    others = accuracy.drop(columns=list(highlight))
    mean = np.array([m["valid_mean_accuracy"] for m in metrics])
    second_half = steps >= steps[-1] / 2
    trained = steps > 0 if len(steps) > 1 else np.ones(len(steps), bool)
    low = max(0.0, min(accuracy.loc[trained, list(highlight)].min().min(), mean[trained].min()) - 0.08)
    for ax in (ax_acc, ax_zoom):
        ax.plot(steps, others.to_numpy(), color="0.8", lw=0.8, zorder=1)
        ax.plot([], [], color="0.8", lw=0.8, label=f"the other {others.shape[1]} attributes")
        ax.plot(steps, mean, "k--", lw=1.5, label=f"mean of {accuracy.shape[1]} (final {mean[-1]:.3f})", zorder=2)
        for name in highlight:
            acc = accuracy[name].to_numpy()
            ax.plot(steps, acc, "o-", ms=3, lw=2, color=colours[name], zorder=3,
                    label=f"{name} (final {acc[-1]:.3f}, lowest in the second half {acc[second_half].min():.3f})")
        for colour, (label, value) in zip(reference_colours, (references or {}).items()):
            ax.axhline(value, color=colour, ls=":", lw=1.5, label=f"{label}: {value:.3f}")
        ax.set(xlabel="training step", ylabel="validation accuracy")
    ax_acc.axhspan(low, 1.005, color=GREY, alpha=0.15, zorder=0, label="band zoomed at right")
    ax_acc.set(title="Accuracy per attribute, whole range", ylim=(0, 1.005))
    ax_acc.legend(fontsize=7, loc="lower right")
    ax_zoom.set(title=f"Zoom: accuracy {low:.2f}–1 (the shaded band at left)", ylim=(low, 1.005))
    _title(fig, caption)
    fig.tight_layout()
    return fig
