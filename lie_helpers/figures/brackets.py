"""Figures of the bracket records and the real swaps (notebooks 02 and 03); numbers come from lie_helpers.analysis.

* `plot_rms_loglog`: bracket RMS against gradient RMS per parameter tensor, log-log, with fits (the RMS law).
* `plot_attribute_perturbation`: mean |logit perturbation| of every output against training step (the other
  hair colours and every output that leads somewhere named), and the rank of the highlighted outputs.
* `plot_first_order`: brackets against the first-order baselines (J·g and others), and the RMS law against its nulls.
* `plot_real_swaps`: what each prediction gets right of two real training steps swapped (notebook 02).

The heatmaps of the same records: `lie_helpers.figures.heatmaps` and `.page`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..analysis import rms_law, summaries
from ..data.attributes import HAIR_COLOURS
from ..engine import numerics
from .heatmaps import check_lr
from .style import GREY, LABEL_COLOURS, PALETTE, attribute_colours, checkpoint_colours, other_colours


# ----------------------------------------------------------------------------- the RMS law

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
        for colour, c in zip(checkpoint_colours(len(checkpoints)), checkpoints):
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


# ----------------------------------------------------------------------------- attributes over training

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
    check_lr(lr)
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
    colours = attribute_colours([*summary.names, *named])
    for name, n_leads in named.items():
        ax.plot(steps, summary.magnitude[:, output_names.index(name)], lw=1.3, color=colours[name], zorder=2.5,
                label=f"{name} (leads at {n_leads} of {n_trained})")
    for k, name in enumerate(summary.names):
        colour = colours[name]
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
    ax_rank.axhspan(0.5, summary.top + 0.5, color=GREY, alpha=0.15, label=f"top {summary.top}")
    ax_rank.axhline((n_outputs + 1) / 2, color="0.4", ls=":", label="chance (median rank)")
    ax_rank.set(ylim=(n_outputs + 0.5, 0.5), xlabel="training step", ylabel=f"rank among {n_outputs} (1 = most perturbed)",
                title="Rank within each checkpoint (medians: steps > 0)")
    ax_rank.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13))   # under the panel, over no line
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- first-order baselines

def plot_first_order(comparison, rms_fits: dict):
    """Is a bracket more than a gradient? Rank agreement with each baseline, the highlighted outputs'
    ranks by bracket, by J·g and by the residual over J·g, and the RMS law against its null."""
    fig, (ax_rho, ax_rank, ax_rms) = plt.subplots(1, 3, figsize=(17, 6.2))
    colours = attribute_colours(comparison.highlight)
    baseline_colours = other_colours(len(comparison.rho), colours.values())
    for k, ((name, rho), colour) in enumerate(zip(comparison.rho.items(), baseline_colours)):
        ax_rho.plot(comparison.steps, rho, "o-" if k == 0 else ".-", lw=2.2 if k == 0 else 1, ms=4,
                    color=colour, label=name)
    ax_rho.axhline(0, color="0.4", lw=0.8)
    ax_rho.set(xlabel="training step", ylabel="Spearman ρ over the outputs", ylim=(-1, 1),
               title="Bracket magnitude ranked against each baseline")
    for k, name in enumerate(comparison.highlight):
        for values, style, what in ((comparison.bracket_rank, "o-", "bracket"), (comparison.gradient_rank, "s:", "J·g"),
                                    (comparison.residual_rank, "^--", "residual over J·g")):
            ax_rank.plot(comparison.steps, values[:, k], style, color=colours[name], ms=4, lw=1.2,
                         label=f"{name}: {what}")
    n_outputs = comparison.residual.shape[1]
    ax_rank.axhline((n_outputs + 1) / 2, color="0.5", lw=0.8, ls=":")
    ax_rank.set(xlabel="training step", ylabel=f"rank among {n_outputs} (1 = largest)", ylim=(n_outputs + 1, 0),
                title="Bracket finding or gradient finding?")
    steps = list(rms_fits)
    within_colour = PALETTE[4]
    for k, (field, style, colour, label) in enumerate([
            ("bracket", "o-", "k", "bracket, across tensors"),
            ("null", "o:", GREY, "third example's gradient (null), across tensors"),
            ("within", "s-", within_colour, "bracket, within tensors")]):
        fits = [getattr(rms_fits[s], field) for s in steps]
        slopes = np.array([f.slope for f in fits])
        errors = np.array([[f.slope - f.low for f in fits], [f.high - f.slope for f in fits]])
        x = np.arange(len(steps)) + 0.1 * (k - 1)
        ax_rms.errorbar(x, slopes, yerr=errors, fmt=style, color=colour, capsize=3, ms=5,
                        label=label + f" (median r {np.median([f.r for f in fits]):.2f})")
    # Each checkpoint's p in one row above every interval, where it covers no point.
    ends = [getattr(rms_fits[s], field).low for s in steps for field in ("bracket", "null", "within")] + \
           [getattr(rms_fits[s], field).high for s in steps for field in ("bracket", "null", "within")] + [1.0]
    low, high = min(ends), max(ends)
    for i, s in enumerate(steps):
        ax_rms.text(i, high + 0.06 * (high - low), f"p={rms_fits[s].within_p:.3f}", fontsize=7, color=within_colour,
                    ha="center", va="bottom")
    ax_rms.set_ylim(low - 0.05 * (high - low), high + 0.2 * (high - low))
    ax_rms.plot([], [], ls="", marker="$p$", color=within_colour,
                label="p: within-tensor r against the examples relabelled (exact)")
    ax_rms.axhline(1, color="0.4", lw=0.8)
    ax_rms.set_xticks(range(len(steps)), [str(s) for s in steps])
    ax_rms.set(xlabel="checkpoint (training step)", title="The RMS law against its nulls",
               ylabel="log-log slope\n(reduced major axis, 95% jackknife over examples)")
    # Legends under their panels, where they cover no data.
    for ax, ncol, fontsize in ((ax_rho, 2, 8), (ax_rank, 2, 7), (ax_rms, 1, 7)):
        ax.legend(fontsize=fontsize, ncol=ncol, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- real order effects (notebook 02)

SWAP_PREDICTIONS = {"sgd control": ("sgd_cosine", "sgd_ratio"), "lr²·bracket": ("bracket_cosine", "bracket_ratio"),
                    "J·(v_A − v_B)": ("gradient_cosine", None), "Adam, frozen gradients": ("adam_frozen_cosine", "adam_frozen_ratio"),
                    "Adam-aware": ("adam_aware_cosine", "adam_aware_ratio")}


def plot_real_swaps(table: dict):
    """Cosine and size ratio of each prediction with the real swap effect (order_effects.summarise), one dot a swap.

    "sgd control" compares the bracket with the swap of plain eval-mode SGD steps (the brackets' own
    dynamics): it must sit at 1 in both panels. Dots are coloured by checkpoint. J·(v_A − v_B) has no size of
    its own (it is first order in lr, the swap second): its row of the Size panel says so.
    """
    steps = sorted(set(table["step"].tolist()))
    colours = checkpoint_colours(len(steps))
    fig, (ax_c, ax_r, ax_o) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [3, 3, 1.3]})
    rng = np.random.default_rng(0)
    for k, (label, (cos_key, ratio_key)) in enumerate(SWAP_PREDICTIONS.items()):
        jitter = rng.uniform(-0.15, 0.15, len(table["step"]))
        colour = [colours[steps.index(s)] for s in table["step"]]
        ax_c.scatter(table[cos_key], k + jitter, c=colour, s=18)
        if ratio_key:
            ax_r.scatter(table[ratio_key], k + jitter, c=colour, s=18)
        else:
            ax_r.text(0.5, k, f"{label}: a direction only, no size of its own", transform=ax_r.get_yaxis_transform(),
                      ha="center", va="center", fontsize=8, color="0.4",
                      bbox=dict(facecolor="white", edgecolor="none", pad=1.5))
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
    for level in (1, 2):
        ax_o.axhline(level, color="0.3", lw=0.8, ls=":")
    ax_o.set(xlim=(-0.5, 0.5), ylim=(0.5, 2.5), xticks=[], ylabel="exponent of lr", title="Order in lr")
    meaning = ax_o.secondary_yaxis("right")   # what each order means, beside the points rather than over them
    meaning.set_ticks([1, 2], labels=["1: Adam's\nmoments", "2: a\nbracket"])
    meaning.tick_params(labelsize=7, length=0)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f"step {s}") for s, c in zip(steps, colours)]
    fig.legend(handles=handles, loc="lower center", ncol=len(steps), fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
