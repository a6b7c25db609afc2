"""Figures of the stored bracket records (notebook 03); every number comes from `lie_helpers.summaries`.

* `plot_rms_loglog`: bracket RMS against gradient RMS per parameter tensor, log-log, with fits.
* Logit-perturbation heatmaps: one bracket pushed onto the outputs of a fixed batch
  (batch examples × outputs). `heatmap_frame` draws one (checkpoint, pair); a static grid
  of checkpoints, a JavaScript animation over checkpoints (works without a kernel) and an
  ipywidgets viewer (needs one) are built on it.
* `plot_attribute_perturbation`: mean |logit perturbation| of every output against training
  step, and the rank of the highlighted outputs among all of them.

Colour scales of the heatmaps are symmetric and per frame, clipped at a percentile of |value|:
magnitudes are heavy-tailed across checkpoints (docs/design.md §5), so one scale for all
frames would leave most of them blank.
"""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

from . import summaries

HIGHLIGHT_COLOURS = ("C0", "C1", "C2", "C3")  # as plots.plot_training_curves colours its highlighted attributes
SIGNED_CMAP = "RdBu_r"


# ----------------------------------------------------------------------------- RMS law

def plot_rms_loglog(records, checkpoints):
    """Bracket RMS against gradient RMS at the given checkpoint indices, on two log-log panels:
    one point per (pair, tensor), and one per tensor (geometric means over the pairs).

    Each checkpoint gets one colour, its least-squares line and its slope and r in the legend;
    a dotted line of slope 1 (proportionality) goes through the last checkpoint's centre.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True, sharey=True)
    panels = [(False, "one point per (pair, tensor)"),
              (True, f"one point per tensor (geometric mean over {len(records.pairs)} pairs)")]
    for ax, (average_pairs, what) in zip(axes, panels):
        for colour, c in zip(plt.cm.viridis(np.linspace(0, 0.9, len(checkpoints))), checkpoints):
            x, y = summaries.rms_points(records, c, average_pairs=average_pairs)
            fit = summaries.loglog_fit(x, y)
            keep = (x > 0) & (y > 0)
            ax.scatter(x[keep], y[keep], s=6 if not average_pairs else 14, alpha=0.35 if not average_pairs else 0.8,
                       color=colour, linewidths=0)
            line_x = np.array([x[keep].min(), x[keep].max()])
            ax.plot(line_x, 10 ** fit.intercept * line_x ** fit.slope, color=colour, lw=2,
                    label=f"step {records.steps[c]}: slope {fit.slope:.2f}, r {fit.r:.2f}")
        centre_x, centre_y = np.exp(np.log(x[keep]).mean()), np.exp(np.log(y[keep]).mean())  # last checkpoint's
        span = np.array([x[keep].min(), x[keep].max()])
        ax.plot(span, centre_y * span / centre_x, "k:", lw=1.2, label="slope 1 (bracket ∝ gradient)")
        ax.set(xscale="log", yscale="log", title=what,
               xlabel=r"gradient RMS of the tensor, $\sqrt{\mathrm{rms}(g_i)\,\mathrm{rms}(g_j)}$")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel(r"bracket RMS of the tensor, $\mathrm{rms}([v_i, v_j])$")
    fig.suptitle("Bracket RMS against gradient RMS, per parameter tensor (lines: least squares on log10 values)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- heatmaps

def color_limit(values, percentile: float = 99.0) -> float:
    """Symmetric colour limit of one frame: the given percentile of |values| (1 when all are zero)."""
    limit = float(np.percentile(np.abs(np.asarray(values)), percentile))
    return limit if limit > 0 else 1.0


def pair_label(pair) -> str:
    return f"[v{pair[0]}, v{pair[1]}]"


def _label_outputs(ax, output_names, highlight) -> None:
    """Output names as small x tick labels, the highlighted ones in bold colour."""
    ax.set_xticks(range(len(output_names)))
    ax.set_xticklabels(output_names, rotation=90, fontsize=6)
    colours = dict(zip(highlight, HIGHLIGHT_COLOURS))
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


def _signed_heatmap(ax, cax, values, output_names, highlight, percentile: float):
    """One pair's [batch, outputs] perturbation with a symmetric, clipped colour scale; returns (image, colorbar)."""
    limit = color_limit(values, percentile)
    image = ax.imshow(values, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    colorbar = ax.figure.colorbar(image, cax=cax, extend="both")
    _outline_columns(ax, output_names, highlight, values.shape[0])
    ax.set_ylabel("batch example")
    ax.grid(False)
    return image, colorbar


def _signed_label(percentile: float, limit: float) -> str:
    return f"logit change per unit ε²\n(clipped at ±{limit:.3g},\nthe {percentile:g}th pct of |·|)"


def heatmap_frame(records, output_names, *, highlight=("Black_Hair", "Brown_Hair"), percentile: float = 99.0):
    """A figure for one (checkpoint, pair) and a function update(checkpoint, pair) that redraws it.

    Top: the chosen bracket pushed onto the fixed batch's outputs (batch examples × outputs),
    symmetric colour scale per frame. Bottom: every pair's mean |perturbation| over the batch,
    per output, divided by that pair's median output (log scale; > 1: perturbed more than
    the pair's typical output), with the chosen pair's row marked.
    """
    output_names = list(output_names)
    pairs = list(records.pairs)
    fig = plt.figure(figsize=(9.5, 8.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[32, len(pairs) * 1.2], width_ratios=[40, 1.2],
                            hspace=0.08, wspace=0.04)
    ax, cax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_pairs, cax_pairs = fig.add_subplot(grid[1, 0], sharex=ax), fig.add_subplot(grid[1, 1])
    image, colorbar = _signed_heatmap(ax, cax, np.zeros(records.logit_perturbation.shape[2:]), output_names,
                                      highlight, percentile)
    ax.tick_params(labelbottom=False)
    relative = summaries.ratio_to_median(summaries.pair_attribute_magnitude(records.logit_perturbation)).numpy()
    pair_image = ax_pairs.imshow(relative[0], cmap="magma", norm=LogNorm(0.1, 10), aspect="auto",
                                 interpolation="nearest")
    fig.colorbar(pair_image, cax=cax_pairs, extend="both").set_label("÷ pair's median", fontsize=8)
    _outline_columns(ax_pairs, output_names, highlight, len(pairs), colour="w")
    marker = ax_pairs.add_patch(Rectangle((-0.5, -0.5), len(output_names), 1, fill=False, edgecolor="C2", lw=2))
    ax_pairs.set_yticks(range(len(pairs)), [pair_label(p) for p in pairs], fontsize=6)
    ax_pairs.set_ylabel("bracket")
    ax_pairs.grid(False)
    _label_outputs(ax_pairs, output_names, highlight)
    title = fig.suptitle("", y=0.93)

    def update(checkpoint: int, pair: int):
        values = records.logit_perturbation[checkpoint, pair].numpy()
        limit = color_limit(values, percentile)
        image.set_data(values)
        image.set_clim(-limit, limit)
        colorbar.set_label(_signed_label(percentile, limit), fontsize=8)
        pair_image.set_data(relative[checkpoint])
        marker.set_y(pair - 0.5)
        title.set_text(f"Bracket {pair_label(pairs[pair])} pushed onto {values.shape[0]} images' outputs · "
                       f"step {records.steps[checkpoint]}")

    update(0, 0)
    return fig, update


def plot_logit_heatmaps(records, pair: int, checkpoints, output_names, *, highlight=("Black_Hair", "Brown_Hair"),
                        percentile: float = 99.0):
    """A static 2 × 2 (or 1 × n) grid: one pair's perturbation heatmap at each of the given checkpoint indices."""
    output_names = list(output_names)
    n_cols = 2 if len(checkpoints) == 4 else len(checkpoints)
    n_rows = int(np.ceil(len(checkpoints) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(7.5 * n_cols, 5 * n_rows), squeeze=False)
    for ax, c in zip(axes.flat, checkpoints):
        values = records.logit_perturbation[c, pair].numpy()
        cax = ax.inset_axes([1.02, 0, 0.025, 1])
        _, colorbar = _signed_heatmap(ax, cax, values, output_names, highlight, percentile)
        colorbar.set_label(_signed_label(percentile, color_limit(values, percentile)), fontsize=7)
        _label_outputs(ax, output_names, highlight)
        ax.set_title(f"step {records.steps[c]}", fontsize=10)
    for ax in axes.flat[len(checkpoints):]:
        ax.set_visible(False)
    fig.suptitle(f"Bracket {pair_label(records.pairs[pair])} pushed onto the outputs of a fixed batch")
    fig.tight_layout()
    return fig


def logit_heatmap_html(records, output_names, pair: int, *, highlight=("Black_Hair", "Brown_Hair"),
                       percentile: float = 99.0, interval_ms: int = 700, dpi: int = 72) -> str:
    """`heatmap_frame` of one pair at every checkpoint, one frame each, as self-contained JavaScript HTML
    (matplotlib's `to_jshtml`, frames embedded as PNG; dpi sets the size). Needs no kernel."""
    fig, update = heatmap_frame(records, output_names, highlight=highlight, percentile=percentile)
    animation = FuncAnimation(fig, lambda c: update(c, pair), frames=len(records.steps), interval=interval_ms,
                              repeat=False)
    with plt.rc_context({"savefig.dpi": dpi, "savefig.bbox": None}):
        html = animation.to_jshtml()
    plt.close(fig)
    return html


def html_page(body: str, title: str, caption: str) -> str:
    """A standalone HTML page: title, the body (e.g. an animation) and the caption (profile and data)."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>\n"
            f"<body style='font-family:sans-serif'>\n<h3>{title}</h3>\n{body}\n"
            f"<p style='font-size:small;color:#555'>{caption}</p>\n</body></html>\n")


def interactive_heatmaps(records, output_names, *, highlight=("Black_Hair", "Brown_Hair"), percentile: float = 99.0,
                         pair: int = 0, dpi: int = 80):
    """An ipywidgets viewer of `heatmap_frame`: a slider over checkpoints, a pair menu, the frame as an image.

    Live only with a running kernel. The frame is a PNG in an Image widget rather than a plot in an
    Output widget: headless runs (papermill, nbclient) mimic Output widgets by talking back to the
    kernel mid-cell, which intermittently hangs (jupyter/nbclient#312).
    """
    import ipywidgets as widgets

    fig, update = heatmap_frame(records, output_names, highlight=highlight, percentile=percentile)
    plt.close(fig)   # drawn into the Image widget only, not by the notebook's backend
    step = widgets.SelectionSlider(options=list(records.steps), value=records.steps[-1], description="step",
                                   continuous_update=False)
    pair_menu = widgets.Dropdown(options=[(pair_label(p), k) for k, p in enumerate(records.pairs)], value=pair,
                                 description="bracket")
    image = widgets.Image(format="png")

    def redraw(_change=None):
        update(records.steps.index(step.value), pair_menu.value)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        image.value = buffer.getvalue()

    step.observe(redraw, names="value")
    pair_menu.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([step, pair_menu]), image])


# ----------------------------------------------------------------------------- attributes over training

def plot_attribute_perturbation(summary: summaries.AttributeSummary, output_names):
    """Left: every output's mean |logit perturbation| per step (log y), highlighted outputs in colour,
    the median output dashed. Right: the highlighted outputs' rank among all outputs per step."""
    output_names = list(output_names)
    steps = np.asarray(summary.steps)
    fig, (ax, ax_rank) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for k in range(summary.magnitude.shape[1]):
        if output_names[k] not in summary.names:
            ax.plot(steps, summary.magnitude[:, k], color="0.75", lw=0.8, zorder=1)
    ax.plot([], [], color="0.75", lw=0.8, label="other outputs")
    ax.plot(steps, summary.median, "k--", lw=1.5, label="median output", zorder=2)
    for k, (name, colour) in enumerate(zip(summary.names, HIGHLIGHT_COLOURS)):
        ax.plot(steps, summary.magnitude[:, output_names.index(name)], "o-", ms=3.5, color=colour, lw=2,
                label=name, zorder=3)
        ax_rank.plot(steps, summary.rank[:, k], "o-", ms=3.5, color=colour, lw=2,
                     label=f"{name}: median rank {summary.median_rank[name]:g}, "
                           f"{summary.median_ratio[name]:.1f}× the median output")
    ax.set(yscale="log", xlabel="training step", ylabel="mean |logit perturbation| (per unit ε²)",
           title="Every output, mean over the brackets and batch images")
    ax.legend(fontsize=8)
    n_outputs = summary.magnitude.shape[1]
    ax_rank.axhspan(0.5, summary.top + 0.5, color="C2", alpha=0.12, label=f"top {summary.top}")
    ax_rank.axhline((n_outputs + 1) / 2, color="0.4", ls=":", label="chance (median rank)")
    ax_rank.set(ylim=(n_outputs + 0.5, 0.5), xlabel="training step", ylabel=f"rank among {n_outputs} (1 = most perturbed)",
                title="Rank within each checkpoint (medians: steps > 0)")
    ax_rank.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
