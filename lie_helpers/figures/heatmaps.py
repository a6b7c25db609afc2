"""The logit-perturbation heatmaps of notebook 03: one bracket pushed onto the outputs of a fixed batch
(batch examples × outputs).

`heatmap_frame` draws one (checkpoint, pair) and returns a function that redraws it; `plot_logit_heatmaps`
is a static grid of checkpoints, `interactive_heatmaps` an ipywidgets viewer (needs a kernel) built on the
frame. The same data as one self-contained HTML page: `lie_helpers.figures.page`.

Colour scales are symmetric, clipped at a percentile of |value| and held fixed over the checkpoints of a
pair, so frames can be compared; the colour bar states the limit per unit ε² (ε: the learning rate) and
in logits at the run's learning rate (× lr²). Magnitudes are heavy-tailed across checkpoints
(docs/design.md §5), so early frames look pale; the page also offers a scale per frame.
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

from ..analysis import summaries
from .style import attribute_colours
from .widgets import live_image, png_bytes

SIGNED_CMAP = "RdBu_r"


def color_limit(values, percentile: float = 99.0) -> float:
    """Symmetric colour limit of one frame: the given percentile of |values| (1 when all are zero)."""
    limit = float(np.percentile(np.abs(np.asarray(values)), percentile))
    return limit if limit > 0 else 1.0


def pair_label(pair) -> str:
    return f"[v{pair[0]}, v{pair[1]}]"


TICK_FONTSIZE = 7   # points; the static figures are saved at their own size, so also the printed size


def _label_outputs(ax, output_names, highlight) -> None:
    """Output names as x tick labels, the highlighted ones in bold colour."""
    ax.set_xticks(range(len(output_names)))
    ax.set_xticklabels(output_names, rotation=90, fontsize=TICK_FONTSIZE)
    colours = attribute_colours(highlight)
    for tick, name in zip(ax.get_xticklabels(), output_names):
        if name in colours:
            tick.set_color(colours[name])
            tick.set_fontweight("bold")


def _outline_columns(ax, output_names, highlight, n_rows: int, colour: str = "k") -> None:
    """A box around each highlighted output's column."""
    for name in highlight:
        if name in output_names:
            ax.add_patch(Rectangle((output_names.index(name) - 0.5, -0.5), 1, n_rows, fill=False,
                                   edgecolor=colour, lw=1.2))


def _label_rows(ax, pair, n_rows: int, n_examples: int) -> None:
    """Row ticks: the bracket examples as v0 … (the chosen pair's two bold and marked ▶), then every 5th row."""
    rows = list(range(n_examples)) + [r for r in range(0, n_rows, 5) if r >= n_examples]
    ax.set_yticks(rows, [("▶ " if r in pair else "") + (f"v{r}" if r < n_examples else str(r)) for r in rows],
                  fontsize=TICK_FONTSIZE)
    for tick, r in zip(ax.get_yticklabels(), rows):
        tick.set_fontweight("bold" if r in pair else "normal")


def _row_boxes(ax, n_outputs: int):
    """Two boxes around the rows of a bracket's own examples (moved by `_place_row_boxes`)."""
    return [ax.add_patch(Rectangle((-0.5, -0.5), n_outputs, 1, fill=False, edgecolor="k", lw=1.6, zorder=4))
            for _ in range(2)]


def _place_row_boxes(boxes, pair) -> None:
    for box, row in zip(boxes, pair):
        box.set_y(row - 0.5)


def _signed_heatmap(ax, cax, values, output_names, highlight, limit: float):
    """One pair's [batch, outputs] perturbation on the symmetric scale ±limit; returns (image, colorbar)."""
    image = ax.imshow(values, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    colorbar = ax.figure.colorbar(image, cax=cax, extend="both")
    _outline_columns(ax, output_names, highlight, values.shape[0])
    ax.set_ylabel("batch image (v0 … : the bracket examples)")
    ax.grid(False)
    return image, colorbar


def signed_label(limit: float, lr: float, percentile: float, shared_by: str) -> str:
    """The colour bar's label: the limit per unit ε² and in logits at the run's learning rate `lr`."""
    return (f"logit change per unit ε² (ε = learning rate)\n"
            f"one scale for {shared_by}: ±{limit:.3g},\nthe {percentile:g}th pct of |·| (beyond: clipped)\n"
            f"= ±{limit * lr * lr:.2g} logits at lr = {lr:g} (× lr²)")


def bracket_examples(records, n_rows: int) -> int:
    """How many batch rows are bracket examples (they are the batch's first images)."""
    n_examples = 1 + max(max(p) for p in records.pairs)
    if n_examples > n_rows:
        raise ValueError(f"pairs {records.pairs} name examples beyond the {n_rows} batch rows; the bracket examples "
                         "must be the first images of the pushforward batch.")
    return n_examples


def check_lr(lr: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be positive (the run's learning rate, e.g. profile.lr), got {lr}.")


def heatmap_frame(records, output_names, *, lr: float, highlight=("Black_Hair", "Brown_Hair"),
                  percentile: float = 99.0):
    """A figure for one (checkpoint, pair) and a function update(checkpoint, pair) that redraws it.

    Top: the chosen bracket pushed onto the fixed batch's outputs (batch examples × outputs), on a
    symmetric colour scale fixed over the pair's checkpoints (at `percentile` of |value|), the
    pair's own example rows boxed. Bottom: every pair's mean |perturbation| over the batch,
    per output, divided by that pair's median output (log scale; > 1: perturbed more than
    the pair's typical output), with the chosen pair's row marked. lr: the run's learning rate.
    """
    check_lr(lr)
    output_names = list(output_names)
    pairs = list(records.pairs)
    n_rows = records.logit_perturbation.shape[2]
    n_examples = bracket_examples(records, n_rows)
    fig = plt.figure(figsize=(10.5, 9))
    grid = fig.add_gridspec(2, 2, height_ratios=[32, len(pairs) * 1.2], width_ratios=[40, 1.2],
                            hspace=0.08, wspace=0.04, left=0.1, right=0.8, bottom=0.14, top=0.9)  # room for the labels
    ax, cax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_pairs, cax_pairs = fig.add_subplot(grid[1, 0], sharex=ax), fig.add_subplot(grid[1, 1])
    image, colorbar = _signed_heatmap(ax, cax, np.zeros(records.logit_perturbation.shape[2:]), output_names,
                                      highlight, 1.0)
    boxes = _row_boxes(ax, len(output_names))
    ax.tick_params(labelbottom=False)
    relative = summaries.ratio_to_median(summaries.pair_attribute_magnitude(records.logit_perturbation)).numpy()
    pair_image = ax_pairs.imshow(relative[0], cmap="magma", norm=LogNorm(0.1, 10), aspect="auto",
                                 interpolation="nearest")
    fig.colorbar(pair_image, cax=cax_pairs, extend="both").set_label("÷ pair's median", fontsize=8)
    _outline_columns(ax_pairs, output_names, highlight, len(pairs), colour="w")
    marker = ax_pairs.add_patch(Rectangle((-0.5, -0.5), len(output_names), 1, fill=False, edgecolor="C2", lw=2))
    ax_pairs.set_yticks(range(len(pairs)), [pair_label(p) for p in pairs], fontsize=TICK_FONTSIZE)
    ax_pairs.set_ylabel("bracket")
    ax_pairs.grid(False)
    _label_outputs(ax_pairs, output_names, highlight)
    title = fig.suptitle("", x=0.45, y=0.93)   # centred over the panels
    limits = [color_limit(records.logit_perturbation[:, p].numpy(), percentile) for p in range(len(pairs))]

    def update(checkpoint: int, pair: int):
        values = records.logit_perturbation[checkpoint, pair].numpy()
        image.set_data(values)
        image.set_clim(-limits[pair], limits[pair])
        colorbar.set_label(signed_label(limits[pair], lr, percentile, f"all {len(records.steps)} checkpoints"),
                           fontsize=8)
        _label_rows(ax, pairs[pair], n_rows, n_examples)
        _place_row_boxes(boxes, pairs[pair])
        pair_image.set_data(relative[checkpoint])
        marker.set_y(pair - 0.5)
        title.set_text(f"Bracket {pair_label(pairs[pair])} pushed onto {values.shape[0]} images' outputs · "
                       f"step {records.steps[checkpoint]}")

    update(0, 0)
    return fig, update


def plot_logit_heatmaps(records, pair: int, checkpoints, output_names, *, lr: float,
                        highlight=("Black_Hair", "Brown_Hair"), percentile: float = 99.0):
    """A static 2 × 2 (or 1 × n) grid: one pair's perturbation heatmap at each of the given checkpoint indices.

    One colour scale for all panels (`percentile` of |value| over them), one colour bar stating it per
    unit ε² and in logits at the run's learning rate `lr`; the pair's own example rows boxed and marked ▶.
    """
    check_lr(lr)
    output_names = list(output_names)
    n_rows = records.logit_perturbation.shape[2]
    n_examples = bracket_examples(records, n_rows)
    values = records.logit_perturbation[list(checkpoints), pair].numpy()
    limit = color_limit(values, percentile)
    n_cols = 2 if len(checkpoints) == 4 else len(checkpoints)
    n_panel_rows = int(np.ceil(len(checkpoints) / n_cols))
    fig, axes = plt.subplots(n_panel_rows, n_cols, figsize=(7 * n_cols + 1.5, 5.2 * n_panel_rows), squeeze=False,
                             layout="constrained")
    for ax, c, frame in zip(axes.flat, checkpoints, values):
        image = ax.imshow(frame, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        _outline_columns(ax, output_names, highlight, n_rows)
        _place_row_boxes(_row_boxes(ax, len(output_names)), records.pairs[pair])
        _label_rows(ax, records.pairs[pair], n_rows, n_examples)
        _label_outputs(ax, output_names, highlight)
        ax.set_ylabel("batch image", fontsize=9)
        ax.grid(False)
        ax.set_title(f"step {records.steps[c]}", fontsize=10)
    for ax in axes.flat[len(checkpoints):]:
        ax.set_visible(False)
    colorbar = fig.colorbar(image, ax=axes, extend="both", shrink=0.6, aspect=30)
    colorbar.set_label(signed_label(limit, lr, percentile, f"all {len(checkpoints)} panels"), fontsize=9)
    colorbar.ax.tick_params(labelsize=8)
    fig.suptitle(f"Bracket {pair_label(records.pairs[pair])} pushed onto the outputs of a fixed batch "
                 f"(rows ▶ v{records.pairs[pair][0]}, ▶ v{records.pairs[pair][1]}: the bracket's own examples, boxed)")
    return fig


def interactive_heatmaps(records, output_names, *, lr: float, highlight=("Black_Hair", "Brown_Hair"),
                         percentile: float = 99.0, pair: int = 0, dpi: int = 80):
    """An ipywidgets viewer of `heatmap_frame`: a slider over checkpoints, a pair menu, the frame as an image
    (live only with a running kernel; see lie_helpers.figures.widgets)."""
    fig, update = heatmap_frame(records, output_names, lr=lr, highlight=highlight, percentile=percentile)
    plt.close(fig)   # drawn into the Image widget only, not by the notebook's backend
    step = widgets.SelectionSlider(options=list(records.steps), value=records.steps[-1], description="step",
                                   continuous_update=False)
    pair_menu = widgets.Dropdown(options=[(pair_label(p), k) for k, p in enumerate(records.pairs)], value=pair,
                                 description="bracket")

    def render() -> bytes:
        update(records.steps.index(step.value), pair_menu.value)
        return png_bytes(fig, dpi)

    return widgets.VBox([widgets.HBox([step, pair_menu]), live_image([step, pair_menu], render)])
