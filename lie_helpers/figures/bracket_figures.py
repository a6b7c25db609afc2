"""Figures of the stored bracket records (notebook 03); every number comes from `lie_helpers.summaries`.

* `plot_rms_loglog`: bracket RMS against gradient RMS per parameter tensor, log-log, with fits.
* Logit-perturbation heatmaps: one bracket pushed onto the outputs of a fixed batch
  (batch examples × outputs). `heatmap_frame` draws one (checkpoint, pair); a static grid
  of checkpoints and an ipywidgets viewer (needs a kernel) are built on it.
  `heatmap_page` is the same data as one self-contained HTML page (checkpoint slider, pair
  menu, fixed or per-frame colour scale; no kernel, no network), `screenshot_page` a PNG of it.
* `plot_attribute_perturbation`: mean |logit perturbation| of every output against training
  step (the other hair colours and every output that leads somewhere named), and the rank of the
  highlighted outputs among all of them.

Colour scales of the heatmaps are symmetric, clipped at a percentile of |value| and held fixed over
the checkpoints of a pair, so frames can be compared; the colour bar states the limit per unit ε²
(ε: the learning rate) and in logits at the run's learning rate (× lr²). Magnitudes are
heavy-tailed across checkpoints (docs/design.md §5), so early frames look pale; the page also
offers a scale per frame (detail in the small ones).
"""
from __future__ import annotations

import base64
import html
import io
import json

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

from ..analysis import rms_law, summaries
from ..engine import numerics
from ..data.attributes import HAIR_COLOURS

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
            x, y = rms_law.rms_points(records, c, average_pairs=average_pairs)
            fit = numerics.loglog_fit(x, y)
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


TICK_FONTSIZE = 7   # points; the static figures are saved at their own size, so also the printed size


def _label_outputs(ax, output_names, highlight) -> None:
    """Output names as x tick labels, the highlighted ones in bold colour."""
    ax.set_xticks(range(len(output_names)))
    ax.set_xticklabels(output_names, rotation=90, fontsize=TICK_FONTSIZE)
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


def _bracket_examples(records, n_rows: int) -> int:
    """How many batch rows are bracket examples (they are the batch's first images)."""
    n_examples = 1 + max(max(p) for p in records.pairs)
    if n_examples > n_rows:
        raise ValueError(f"pairs {records.pairs} name examples beyond the {n_rows} batch rows; the bracket examples "
                         "must be the first images of the pushforward batch.")
    return n_examples


def _check_lr(lr: float) -> None:
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
    _check_lr(lr)
    output_names = list(output_names)
    pairs = list(records.pairs)
    n_rows = records.logit_perturbation.shape[2]
    n_examples = _bracket_examples(records, n_rows)
    fig = plt.figure(figsize=(9.5, 9))
    grid = fig.add_gridspec(2, 2, height_ratios=[32, len(pairs) * 1.2], width_ratios=[40, 1.2],
                            hspace=0.08, wspace=0.04)
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
    title = fig.suptitle("", y=0.93)
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
    _check_lr(lr)
    output_names = list(output_names)
    n_rows = records.logit_perturbation.shape[2]
    n_examples = _bracket_examples(records, n_rows)
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


# ----------------------------------------------------------------------------- the interactive page

def encode_frames(values) -> tuple[str, list]:
    """[checkpoints, pairs, rows, outputs] values as base64 little-endian float16 of value / max|frame|,
    and the per-frame scales (max |value|, 1 for an all-zero frame), checkpoint-major.

    Dividing by the frame's maximum keeps every frame inside float16's range (raw magnitudes reach
    1e4 and more); the relative error of each value is then at most 2⁻¹¹ (about 0.05%) down to
    6e-5 of its frame's maximum, far below what a colour or a 3-digit readout shows.
    """
    values = np.asarray(values, dtype=np.float64)
    scale = np.abs(values).max(axis=(2, 3))
    scale[scale == 0] = 1.0
    halves = (values / scale[..., None, None]).astype("<f2")
    return base64.b64encode(halves.tobytes()).decode("ascii"), scale.ravel().tolist()


def heatmap_page(records, output_names, *, lr: float, caption: str, highlight=("Black_Hair", "Brown_Hair"),
                 pair: int = 0, percentile: float = 99.0, row_notes=None) -> str:
    """One self-contained HTML page of the logit-perturbation heatmaps: every checkpoint and pair.

    A checkpoint slider (opening at the last one), a pair menu, a colour scale fixed over the pair's
    checkpoints or set per frame (both at `percentile` of |value|), the pair's own examples' rows and
    the `highlight` columns boxed, a readout in logits per unit lr² and in logits at `lr` (the run's
    learning rate), an explanation and the data `caption`. Everything is inline (data as base64
    float16, see `encode_frames`): no network request, so it opens from disk or any static host.
    `row_notes` (optional, one short text per batch image, e.g. its hair colour) label the rows.
    """
    output_names, highlight = list(output_names), list(highlight)
    values = records.logit_perturbation.double().numpy()
    n_checkpoints, n_pairs, n_rows, n_outputs = values.shape
    if (n_checkpoints, n_pairs, n_outputs) != (len(records.steps), len(records.pairs), len(output_names)):
        raise ValueError(f"logit_perturbation has shape {tuple(values.shape)} but the records have "
                         f"{len(records.steps)} steps and {len(records.pairs)} pairs and there are {len(output_names)} "
                         "output names: pass the output names of the loss the run trained with.")
    if missing := [name for name in highlight if name not in output_names]:
        raise ValueError(f"highlight names {missing} are not output names; choose among {output_names}.")
    _check_lr(lr)
    if not 0 <= pair < n_pairs:
        raise ValueError(f"pair {pair} is not an index into the {n_pairs} pairs.")
    n_examples = _bracket_examples(records, n_rows)
    if row_notes is not None and len(row_notes) != n_rows:
        raise ValueError(f"row_notes has {len(row_notes)} entries; give one per batch image ({n_rows}).")
    encoded, scale = encode_frames(values)
    lut = (plt.get_cmap(SIGNED_CMAP)(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
    data = {
        "steps": list(records.steps), "pairs": [list(p) for p in records.pairs], "outputs": output_names,
        "highlight": highlight, "rows": n_rows, "examples": n_examples,
        "row_notes": list(row_notes) if row_notes is not None else None, "lr": lr, "percentile": percentile,
        "pair": pair, "values": encoded, "scale": scale,
        "frame_limit": [[color_limit(values[c, p], percentile) for p in range(n_pairs)] for c in range(n_checkpoints)],
        "fixed_limit": [color_limit(values[:, p], percentile) for p in range(n_pairs)],
        "colormap": ["#%02x%02x%02x" % tuple(rgb) for rgb in lut],
    }
    text = {"@TITLE@": "Brackets pushed onto the logits of a fixed batch", "@CAPTION@": caption,
            "@LR@": f"{lr:g}", "@LR2@": f"{lr * lr:.3g}", "@PCT@": f"{percentile:g}", "@ROWS@": str(n_rows),
            "@EXAMPLES@": str(data["examples"]), "@PAIRS@": str(n_pairs), "@CHECKPOINTS@": str(n_checkpoints),
            "@OUTPUTS@": str(n_outputs), "@LASTEXAMPLE@": str(data["examples"] - 1),
            "@HIGHLIGHT@": " and ".join(highlight) or "no attribute"}
    page = _PAGE_TEMPLATE
    for key, value in text.items():
        page = page.replace(key, html.escape(value))
    # JSON inside <script>: "</" would end the element early
    return page.replace("@DATA@", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))


def screenshot_page(html_path, png_path, *, browser: str = "/usr/bin/chromium", width: int = 1100,
                    scale: float = 2.0) -> None:
    """A PNG of the whole page at `html_path` as headless Chromium draws it (for the README).

    Needs the test extra (playwright, `pip install -e .[test]`) and a Chromium binary (Debian:
    `apt-get install chromium`); playwright drives that browser, it downloads none.
    """
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    html_path = Path(html_path).resolve()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser)
        page = chromium.new_page(viewport={"width": width, "height": 800}, device_scale_factor=scale)
        page.goto(html_path.as_uri())
        page.wait_for_selector("#readout[data-ready]")
        page.screenshot(path=str(png_path), full_page=True)
        chromium.close()


def interactive_heatmaps(records, output_names, *, lr: float, highlight=("Black_Hair", "Brown_Hair"),
                         percentile: float = 99.0, pair: int = 0, dpi: int = 80):
    """An ipywidgets viewer of `heatmap_frame`: a slider over checkpoints, a pair menu, the frame as an image.

    Live only with a running kernel. The frame is a PNG in an Image widget rather than a plot in an
    Output widget: headless runs (papermill, nbclient) mimic Output widgets by talking back to the
    kernel mid-cell, which intermittently hangs (jupyter/nbclient#312).
    """
    import ipywidgets as widgets

    fig, update = heatmap_frame(records, output_names, lr=lr, highlight=highlight, percentile=percentile)
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

# Colours for the labelled outputs after the highlighted ones (seaborn's colorblind C7 is grey, kept for the rest).
LABEL_COLOURS = tuple(f"C{k}" for k in range(10) if k != 7)


def labelled_outputs(summary: summaries.AttributeSummary, output_names) -> dict[str, int]:
    """The outputs `plot_attribute_perturbation` names besides the highlighted ones: the other hair
    colours, then every output that is the most perturbed at some trained checkpoint (most often
    first, as `summaries.describe_highlighted` counts them), as many as there are colours;
    name -> checkpoints it leads."""
    leads = summaries.leading_outputs(summary, output_names)
    names = [n for n in dict.fromkeys([*HAIR_COLOURS, *leads]) if n in output_names and n not in summary.names]
    return {n: leads.get(n, 0) for n in names[:len(LABEL_COLOURS) - len(summary.names)]}


def plot_attribute_perturbation(summary: summaries.AttributeSummary, output_names, *, lr: float):
    """Left: every output's mean |logit perturbation| per step (log y; right axis: in logits at the
    run's learning rate `lr`), the highlighted outputs in bold colour, the other hair colours and every
    output that leads at some checkpoint (`labelled_outputs`) in colour and named, the rest grey,
    the median output dashed. Right: the highlighted outputs' rank among all outputs per step."""
    _check_lr(lr)
    output_names = list(output_names)
    steps = np.asarray(summary.steps)
    n_trained = int(np.sum(steps > 0)) or len(steps)
    leads = summaries.leading_outputs(summary, output_names)
    named = labelled_outputs(summary, output_names)
    fig, (ax, ax_rank) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    for k in range(summary.magnitude.shape[1]):
        if output_names[k] not in summary.names and output_names[k] not in named:
            ax.plot(steps, summary.magnitude[:, k], color="0.8", lw=0.8, zorder=1)
    ax.plot([], [], color="0.8", lw=0.8, label=f"the other {len(output_names) - len(summary.names) - len(named)} outputs")
    ax.plot(steps, summary.median, "k--", lw=1.5, label="median output", zorder=2)
    colours = iter(c for c in LABEL_COLOURS if c not in HIGHLIGHT_COLOURS[:len(summary.names)])
    for name, n_leads in named.items():
        ax.plot(steps, summary.magnitude[:, output_names.index(name)], lw=1.3, color=next(colours), zorder=2.5,
                label=f"{name} (leads at {n_leads} of {n_trained})")
    for k, (name, colour) in enumerate(zip(summary.names, HIGHLIGHT_COLOURS)):
        ax.plot(steps, summary.magnitude[:, output_names.index(name)], "o-", ms=3.5, color=colour, lw=2.5,
                label=f"{name} (leads at {leads.get(name, 0)} of {n_trained})", zorder=3)
        ax_rank.plot(steps, summary.rank[:, k], "o-", ms=3.5, color=colour, lw=2,
                     label=f"{name}: median rank {summary.median_rank[name]:g}, "
                           f"{summary.median_ratio[name]:.1f}× the median output")
    ax.set(yscale="log", xlabel="training step", ylabel="mean |logit perturbation| per unit ε²",
           title="Every output, mean over the brackets and batch images")
    ax.secondary_yaxis("right", functions=(lambda v: v * lr**2, lambda v: v / lr**2)).set_ylabel(
        f"in logits at lr = {lr:g} (× lr²)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              title=f"leads: the most perturbed output at that many of the {n_trained} trained checkpoints",
              title_fontsize=7)
    n_outputs = summary.magnitude.shape[1]
    ax_rank.axhspan(0.5, summary.top + 0.5, color="C2", alpha=0.12, label=f"top {summary.top}")
    ax_rank.axhline((n_outputs + 1) / 2, color="0.4", ls=":", label="chance (median rank)")
    ax_rank.set(ylim=(n_outputs + 0.5, 0.5), xlabel="training step", ylabel=f"rank among {n_outputs} (1 = most perturbed)",
                title="Rank within each checkpoint (medians: steps > 0)")
    ax_rank.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# The page of `heatmap_page`: @NAME@ fields are filled in (HTML-escaped), @DATA@ with the JSON data.
# No URL but data: ones: nothing is fetched, so the page works offline, from file:// and from a static host.
_PAGE_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">  <!-- an empty icon: no request for /favicon.ico on a static host -->
<title>@TITLE@</title>
<style>
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
         max-width: 1120px; margin: 1em auto; padding: 0 12px; }
  h1 { font-size: 1.35em; margin: 0.2em 0; }
  .caption { color: #444; font-size: 14px; border-left: 3px solid #999; padding-left: 0.6em; margin: 0.3em 0 0.8em; }
  .controls { display: flex; flex-wrap: wrap; gap: 0.6em 1.8em; align-items: center; margin: 0.6em 0; }
  .controls label { font-weight: 600; margin-right: 0.4em; }
  #checkpoint { width: 300px; vertical-align: middle; }
  #frame-title { font-size: 1.1em; font-weight: 600; margin: 0.5em 0 0.2em; }
  #limit { font-size: 14px; color: #333; margin: 0.2em 0; }
  #readout { font: 14px/1.5 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; background: #f3f3f3;
             padding: 0.35em 0.6em; min-height: 3em; white-space: pre-wrap; }
  .figure { overflow-x: auto; }
  canvas { display: block; }
  .explain p { margin: 0.45em 0; }
</style>
</head>
<body>
<h1>@TITLE@</h1>
<p class="caption">Data: @CAPTION@</p>
<noscript><p><strong>This page draws its heatmaps with JavaScript, which is off or unavailable here.</strong>
The @CHECKPOINTS@ checkpoints × @PAIRS@ brackets × @ROWS@ images × @OUTPUTS@ attributes are embedded in this
file; open it in a browser with JavaScript on. Notebook 03 also draws a static version
(figures/03_logit_heatmaps.png, one pair at four checkpoints).</p></noscript>
<div class="controls">
  <span><label for="checkpoint">Checkpoint</label><input type="range" id="checkpoint" min="0" max="0" step="1" value="0">
    <span id="step-label"></span></span>
  <span><label for="pair">Bracket</label><select id="pair"></select></span>
  <span><label>Colour scale</label>
    <input type="radio" name="scale" id="scale-fixed" value="fixed" checked><label for="scale-fixed"
      style="font-weight:normal">fixed over checkpoints</label>
    <input type="radio" name="scale" id="scale-frame" value="frame"><label for="scale-frame"
      style="font-weight:normal">per checkpoint</label></span>
</div>
<div id="frame-title"></div>
<div id="limit"></div>
<div class="figure"><canvas id="heatmap" aria-label="heatmap of logit changes: batch images by attributes"></canvas></div>
<div id="readout" aria-live="polite"></div>
<div class="explain">
<p><strong>What a cell is.</strong> One entry of J<sub>θ</sub>f(batch)·[v<sub>i</sub>, v<sub>j</sub>]: how the
logit of one attribute (column, @OUTPUTS@ attributes) of one image (row, the first @ROWS@ test images, a batch
fixed for all checkpoints) changes, per unit lr², when the parameters move along the Lie bracket of the
gradient fields of training examples i and j.</p>
<p><strong>In logits.</strong> Two plain SGD steps of size lr, on example i and then on example j, end at
parameters that differ from the other order (j, then i) by lr²·[v<sub>i</sub>, v<sub>j</sub>] + O(lr³). At the
run's learning rate lr = @LR@, swapping the two steps therefore moves a cell's logit by about
lr² × value = @LR2@ × value logits; the readout gives both. (The run trains with Adam at this learning rate;
the brackets are those of plain SGD steps.)</p>
<p><strong>Marks.</strong> Rows 0–@LASTEXAMPLE@ are the @EXAMPLES@ bracket examples themselves
(v<sub>0</sub> … v<sub>@LASTEXAMPLE@</sub>); the two of the chosen bracket are boxed and marked ▶. The
@HIGHLIGHT@ columns are boxed and their names coloured. The colour scale is symmetric and clipped at the
@PCT@th percentile of |value|, either fixed over all @CHECKPOINTS@ checkpoints of the bracket (frames can be
compared; magnitudes change by orders of magnitude over training, so some frames look pale) or per checkpoint
(detail in every frame; scales differ). Hover a cell to read it; otherwise the readout shows the frame's
largest |value|.</p>
</div>
<script type="application/json" id="heatmap-data">@DATA@</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("heatmap-data").textContent);
  const nC = D.steps.length, nP = D.pairs.length, nR = D.rows, nO = D.outputs.length, frameSize = nR * nO;
  const lr2 = D.lr * D.lr;
  const HIGHLIGHT_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
  const CELL_W = 18, CELL_H = 15, LEFT = 200, TOP = 10, BOTTOM = 160, BAR_GAP = 22, BAR_W = 16, RIGHT = 150;
  const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
  const BOLD = "bold " + FONT;

  // float16 (little-endian) of value / max|frame|, times the frame's scale
  const values = (function decode() {
    const bin = atob(D.values), out = new Float64Array(bin.length / 2);
    for (let n = 0; n < out.length; n++) {
      const bits = bin.charCodeAt(2 * n) | (bin.charCodeAt(2 * n + 1) << 8);
      const exp = (bits >> 10) & 0x1f, frac = bits & 0x3ff;
      const magnitude = exp === 0 ? frac * Math.pow(2, -24) : (1 + frac / 1024) * Math.pow(2, exp - 15);
      out[n] = (bits & 0x8000 ? -magnitude : magnitude) * D.scale[Math.floor(n / frameSize)];
    }
    return out;
  })();
  if (values.length !== nC * nP * frameSize) throw new Error("embedded data has the wrong length");

  const state = { checkpoint: nC - 1, pair: D.pair, mode: "fixed", hover: null };
  const slider = document.getElementById("checkpoint"), menu = document.getElementById("pair");
  const canvas = document.getElementById("heatmap"), ctx = canvas.getContext("2d");
  const readout = document.getElementById("readout");
  const width = LEFT + nO * CELL_W + BAR_GAP + BAR_W + RIGHT, height = TOP + nR * CELL_H + BOTTOM;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
  canvas.style.width = width + "px"; canvas.style.height = height + "px";
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  Object.assign(canvas.dataset, { left: LEFT, top: TOP, cellWidth: CELL_W, cellHeight: CELL_H });   // for tests

  // 3 significant digits: 1390, 0.0346, 6.32e-6
  const fmt = x => (x !== 0 && Math.abs(x) < 1e-3 ? x.toExponential(2) : String(Number(x.toPrecision(3))));
  const value = (c, p, r, k) => values[((c * nP + p) * nR + r) * nO + k];
  const note = r => (D.row_notes && D.row_notes[r] ? " (" + D.row_notes[r] + ")" : "");
  const limit = () => (state.mode === "fixed" ? D.fixed_limit[state.pair] : D.frame_limit[state.checkpoint][state.pair]);
  const colour = (v, L) => D.colormap[Math.max(0, Math.min(255, Math.round((v / L + 1) / 2 * 255)))];

  slider.max = nC - 1; slider.value = state.checkpoint;
  D.pairs.forEach(function (p, n) {
    const option = document.createElement("option");
    option.value = n;
    option.textContent = "[v" + p[0] + ", v" + p[1] + "] · images " + p[0] + note(p[0]) + " and " + p[1] + note(p[1]);
    menu.appendChild(option);
  });
  menu.value = state.pair;

  function rowLabel(r) {
    const [i, j] = D.pairs[state.pair];
    const name = (r < D.examples ? "v" + r + " · " : "") + "image " + r + note(r);
    return (r === i || r === j ? "▶ " : "") + name;
  }

  function draw() {
    const c = state.checkpoint, p = state.pair, L = limit(), [i, j] = D.pairs[p];
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
    for (let r = 0; r < nR; r++) for (let k = 0; k < nO; k++) {
      ctx.fillStyle = colour(value(c, p, r, k), L);
      ctx.fillRect(LEFT + k * CELL_W, TOP + r * CELL_H, CELL_W, CELL_H);
    }
    // the bracket's own examples (rows) and the highlighted attributes (columns)
    ctx.strokeStyle = "#000"; ctx.lineWidth = 2.5;
    [i, j].forEach(r => ctx.strokeRect(LEFT, TOP + r * CELL_H, nO * CELL_W, CELL_H));
    ctx.lineWidth = 2; ctx.setLineDash([5, 3]);
    D.highlight.forEach(name => ctx.strokeRect(LEFT + D.outputs.indexOf(name) * CELL_W, TOP, CELL_W, nR * CELL_H));
    ctx.setLineDash([]);
    if (state.hover) {
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#000";
      ctx.strokeRect(LEFT + state.hover[1] * CELL_W + 1, TOP + state.hover[0] * CELL_H + 1, CELL_W - 2, CELL_H - 2);
    }
    // row labels
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let r = 0; r < nR; r++) {
      const own = r === i || r === j;
      ctx.font = own || r < D.examples ? BOLD : FONT;
      ctx.fillStyle = own ? "#000" : r < D.examples ? "#333" : "#555";
      ctx.fillText(rowLabel(r), LEFT - 6, TOP + (r + 0.5) * CELL_H);
    }
    // column labels, read bottom to top
    D.outputs.forEach(function (name, k) {
      const h = D.highlight.indexOf(name);
      ctx.save();
      ctx.translate(LEFT + (k + 0.5) * CELL_W, TOP + nR * CELL_H + 6);
      ctx.rotate(-Math.PI / 2);
      ctx.font = h >= 0 ? BOLD : FONT; ctx.fillStyle = h >= 0 ? HIGHLIGHT_COLOURS[h % 4] : "#222";
      ctx.textAlign = "right"; ctx.fillText(name, 0, 0);
      ctx.restore();
    });
    ctx.font = BOLD; ctx.fillStyle = "#222"; ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    ctx.fillText("attribute (one logit per column)", LEFT + nO * CELL_W / 2, height - 4);
    ctx.save(); ctx.translate(14, TOP + nR * CELL_H / 2); ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle"; ctx.fillText("image of the fixed batch (row)", 0, 0); ctx.restore();
    drawColourBar(L);
  }

  function drawColourBar(L) {
    const x = LEFT + nO * CELL_W + BAR_GAP, top = TOP + 8, h = nR * CELL_H - 16;
    for (let y = 0; y < h; y++) {
      ctx.fillStyle = D.colormap[Math.round((1 - y / (h - 1)) * 255)];
      ctx.fillRect(x, top + y, BAR_W, 1);
    }
    // triangles: values beyond ±L are drawn in the end colours
    [[top, -1, 255], [top + h, 1, 0]].forEach(function ([y, dir, n]) {
      ctx.fillStyle = D.colormap[n]; ctx.beginPath();
      ctx.moveTo(x, y); ctx.lineTo(x + BAR_W, y); ctx.lineTo(x + BAR_W / 2, y + dir * 8); ctx.closePath(); ctx.fill();
    });
    ctx.strokeStyle = "#444"; ctx.lineWidth = 1; ctx.strokeRect(x, top, BAR_W, h);
    ctx.font = FONT; ctx.fillStyle = "#222"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    [1, 0.5, 0, -0.5, -1].forEach(function (t) {
      const y = top + (1 - t) / 2 * h;
      ctx.fillRect(x + BAR_W, y - 0.5, 4, 1);
      ctx.fillText(t === 0 ? "0" : fmt(t * L), x + BAR_W + 7, y);
    });
    ctx.save(); ctx.translate(x + BAR_W + 78, top + h / 2); ctx.rotate(-Math.PI / 2);
    ctx.font = BOLD; ctx.textAlign = "center";
    ctx.fillText("logit change per unit lr²", 0, -9);
    ctx.font = FONT; ctx.fillText("× " + fmt(lr2) + " = logits at lr = " + D.lr, 0, 9);
    ctx.restore();
  }

  function describe() {
    const c = state.checkpoint, p = state.pair, L = limit(), [i, j] = D.pairs[p];
    document.getElementById("step-label").textContent = "step " + D.steps[c] + " (" + (c + 1) + " of " + nC + ")";
    document.getElementById("frame-title").textContent = "Bracket [v" + i + ", v" + j + "] (examples " + i + " and " + j +
      ") pushed onto " + nR + " images' logits · step " + D.steps[c];
    document.getElementById("limit").textContent = "Colour scale ±" + fmt(L) + " per unit lr² (±" + fmt(L * lr2) +
      " logits at lr = " + D.lr + "): the " + D.percentile + "th percentile of |value| " +
      (state.mode === "fixed" ? "over all " + nC + " checkpoints of this bracket" : "in this frame") +
      "; larger values take the end colours.";
    let r, k, what;
    if (state.hover) { [r, k] = state.hover; what = "cell"; } else {
      let best = -1;
      for (let rr = 0; rr < nR; rr++) for (let kk = 0; kk < nO; kk++) {
        const a = Math.abs(value(c, p, rr, kk));
        if (a > best) { best = a; r = rr; k = kk; }
      }
      what = "largest |value| in this frame";
    }
    const v = value(c, p, r, k);
    readout.textContent = what + ": image " + r + note(r) + " · " + D.outputs[k] + "\n" + fmt(v) +
      " per unit lr²  →  " + fmt(v * lr2) + " logits at lr = " + D.lr +
      " (SGD on example " + i + " then " + j + ", minus " + j + " then " + i + ")";
    readout.dataset.row = r; readout.dataset.column = k; readout.dataset.value = v; readout.dataset.logits = v * lr2;
    readout.dataset.checkpoint = c; readout.dataset.pair = p; readout.dataset.limit = L;
  }

  function update() { draw(); describe(); readout.dataset.ready = "1"; }

  slider.addEventListener("input", function () { state.checkpoint = Number(slider.value); update(); });
  menu.addEventListener("change", function () { state.pair = Number(menu.value); update(); });
  document.querySelectorAll("input[name=scale]").forEach(function (radio) {
    radio.addEventListener("change", function () { state.mode = radio.value; update(); });
  });
  canvas.addEventListener("mousemove", function (event) {
    const box = canvas.getBoundingClientRect();
    const k = Math.floor((event.clientX - box.left - LEFT) / CELL_W);
    const r = Math.floor((event.clientY - box.top - TOP) / CELL_H);
    const inside = r >= 0 && r < nR && k >= 0 && k < nO;
    const hover = inside ? [r, k] : null;
    if (String(hover) !== String(state.hover)) { state.hover = hover; update(); }
  });
  canvas.addEventListener("mouseleave", function () { if (state.hover) { state.hover = null; update(); } });
  update();
})();
</script>
</body>
</html>
"""


def plot_first_order(comparison, rms_fits: dict):
    """Is a bracket more than a gradient? Rank agreement with each baseline, the highlighted outputs'
    ranks by bracket, by J·g and by the residual over J·g, and the RMS law against its null."""
    fig, (ax_rho, ax_rank, ax_rms) = plt.subplots(1, 3, figsize=(17, 4.8))
    for k, (name, rho) in enumerate(comparison.rho.items()):
        ax_rho.plot(comparison.steps, rho, "o-" if k == 0 else ".-", lw=2.2 if k == 0 else 1, ms=4,
                    color=f"C{k}", label=name)
    ax_rho.axhline(0, color="0.4", lw=0.8)
    ax_rho.set(xlabel="training step", ylabel="Spearman ρ over the outputs", ylim=(-1, 1),
               title="Bracket magnitude ranked against each baseline")
    ax_rho.legend(fontsize=8, loc="lower right")
    for k, name in enumerate(comparison.highlight):
        colour = ("C3", "C1", "C2", "C4")[k % 4]
        for values, style, what in ((comparison.bracket_rank, "o-", "bracket"), (comparison.gradient_rank, "s:", "J·g"),
                                    (comparison.residual_rank, "^--", "residual over J·g")):
            ax_rank.plot(comparison.steps, values[:, k], style, color=colour, ms=4, lw=1.2, label=f"{name}: {what}")
    n_outputs = comparison.residual.shape[1]
    ax_rank.axhline((n_outputs + 1) / 2, color="0.5", lw=0.8, ls=":")
    ax_rank.set(xlabel="training step", ylabel=f"rank among {n_outputs} (1 = largest)", ylim=(n_outputs + 1, 0),
                title="Bracket finding or gradient finding?")
    ax_rank.legend(fontsize=7, ncol=2, loc="lower center")
    steps = list(rms_fits)
    for k, (field, style, label) in enumerate([("bracket", "o-", "bracket, across tensors"),
                                               ("null", "o:", "third example's gradient (null), across tensors"),
                                               ("within", "s-", "bracket, within tensors")]):
        fits = [getattr(rms_fits[s], field) for s in steps]
        slopes = np.array([f.slope for f in fits])
        errors = np.array([[f.slope - f.low for f in fits], [f.high - f.slope for f in fits]])
        x = np.arange(len(steps)) + 0.1 * (k - 1)
        ax_rms.errorbar(x, slopes, yerr=errors, fmt=style, color=f"C{k + 5}", capsize=3, ms=5,
                        label=label + f" (median r {np.median([f.r for f in fits]):.2f})")
    for i, s in enumerate(steps):
        ax_rms.annotate(f"p={rms_fits[s].within_p:.3f}", (i + 0.1, rms_fits[s].within.high), fontsize=7,
                        color="C7", ha="center", va="bottom")
    ax_rms.axhline(1, color="0.4", lw=0.8)
    ax_rms.set_xticks(range(len(steps)), [str(s) for s in steps])
    ax_rms.set(xlabel="checkpoint  (p: within-tensor r against the examples relabelled, exact)",
               ylabel="log-log slope (reduced major axis, 95% jackknife over examples)",
               title="The RMS law against its nulls")
    ax_rms.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- real order effects (notebook 02)

SWAP_PREDICTIONS = {"sgd control": ("sgd_cosine", "sgd_ratio"), "lr²·bracket": ("bracket_cosine", "bracket_ratio"),
                    "J·(v_A − v_B)": ("gradient_cosine", None), "Adam, frozen gradients": ("adam_frozen_cosine", "adam_frozen_ratio"),
                    "Adam-aware": ("adam_aware_cosine", "adam_aware_ratio")}


def plot_real_swaps(table: dict):
    """Cosine and size ratio of each prediction with the real swap effect (order_effects.summarise), one dot a swap.

    "sgd control" compares the bracket with the swap of plain eval-mode SGD steps (the brackets' own
    dynamics): it must sit at 1 in both panels. Dots are coloured by checkpoint.
    """
    steps = sorted(set(table["step"].tolist()))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(steps)))
    fig, (ax_c, ax_r, ax_o) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [3, 3, 1.3]})
    rng = np.random.default_rng(0)
    for k, (label, (cos_key, ratio_key)) in enumerate(SWAP_PREDICTIONS.items()):
        jitter = rng.uniform(-0.15, 0.15, len(table["step"]))
        colour = [colours[steps.index(s)] for s in table["step"]]
        ax_c.scatter(table[cos_key], k + jitter, c=colour, s=18)
        if ratio_key:
            ax_r.scatter(table[ratio_key], k + jitter, c=colour, s=18)
    for ax in (ax_c, ax_r):
        ax.set_yticks(range(len(SWAP_PREDICTIONS)), list(SWAP_PREDICTIONS))
        ax.invert_yaxis()
        ax.axhline(0.5, color="0.7", lw=0.8)
    ax_r.set_yticklabels([])
    ax_c.axvline(1, color="0.3", lw=0.8, ls=":")
    ax_c.axvline(0, color="0.3", lw=0.8)
    ax_c.set(xlim=(-1.05, 1.05), xlabel="cosine with the real swap over the 32 × 40 logits",
             title="Direction (sgd control: bracket vs SGD's own swap)")
    ax_r.set_xscale("log")
    ax_r.axvline(1, color="0.3", lw=0.8, ls=":")
    ax_r.set(xlabel="size of the prediction / size of the real swap (RMS)", title="Size")
    ax_o.scatter(np.zeros_like(table["lr_order"]) + rng.uniform(-0.2, 0.2, len(table["step"])), table["lr_order"],
                 c=[colours[steps.index(s)] for s in table["step"]], s=18)
    for level, text in ((1, "1: Adam's moments"), (2, "2: a bracket")):
        ax_o.axhline(level, color="0.3", lw=0.8, ls=":")
        ax_o.text(0.3, level, text, fontsize=7, va="bottom", ha="right")
    ax_o.set(xlim=(-0.5, 0.5), ylim=(0.5, 2.5), xticks=[], ylabel="exponent of lr", title="Order in lr")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f"step {s}") for s, c in zip(steps, colours)]
    fig.legend(handles=handles, loc="lower center", ncol=len(steps), fontsize=8, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
