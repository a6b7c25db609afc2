"""Figures of Adam's order effects (notebook 02 §5): the residual orders of real swaps against their expansion
(analysis.swap_orders) and what persists of a swap once later steps have paid its momentum out
(analysis.persistence)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..analysis.swap_orders import LOGIT_RESIDUALS, PARAM_RESIDUALS

RESIDUAL_LABELS = {"real": "real swap", "sgd": "− lr²·SGD bracket", "first": "− first order (F)",
                   "linear": "− J(F + S), no ½f''", "second": "− first − second"}
RESIDUAL_COLOURS = {"real": "C0", "sgd": "C7", "first": "C1", "linear": "C4", "second": "C2"}


def plot_swap_orders(results) -> plt.Figure:
    """Residual norms against lr, one line a swap, in parameters and in logits, for each stem (rows). Dotted
    guides have each residual's expected slope (1, 2 or 3), through the geometric mean of its values."""
    stems = sorted({r.stem for r in results}, reverse=True)
    fig, axes = plt.subplots(len(stems), 2, figsize=(11, 3.8 * len(stems)), squeeze=False, sharex=True)
    for row, stem in zip(axes, stems):
        mine = [r for r in results if r.stem == stem]
        for ax, space, residuals in ((row[0], "params", PARAM_RESIDUALS), (row[1], "logits", LOGIT_RESIDUALS)):
            for name, order in residuals.items():
                for k, r in enumerate(mine):
                    values = getattr(r, space)[name]
                    ax.loglog(r.lrs, values, "o-", ms=3, lw=1, color=RESIDUAL_COLOURS[name], alpha=0.8,
                              label=f"{RESIDUAL_LABELS[name]} (order {order})" if k == 0 else None)
                lrs = mine[0].lrs
                logs = np.log([np.maximum(getattr(r, space)[name], 1e-300) for r in mine])
                centre, lr_centre = np.exp(logs.mean()), np.exp(np.log(lrs).mean())
                ax.loglog(lrs, centre * (lrs / lr_centre) ** order, ":", color=RESIDUAL_COLOURS[name], lw=0.8)
            ax.axvline(mine[0].lrs[0], color="0.5", lw=0.8)
            ax.set(title=f"{'max-pool stem (trained)' if stem == 'max' else 'average-pool twin (no kinks)'}: "
                         f"{'parameters, ‖·‖' if space == 'params' else 'logits, RMS'}",
                   ylabel="residual")
            ax.legend(fontsize=7, loc="lower right")
    for ax in axes[-1]:
        ax.set_xlabel("learning rate (grey line: training's)")
    fig.tight_layout()
    return fig


def plot_persistence(results) -> plt.Figure:
    """‖D_K‖/‖D₀‖ against the steps K after a swap, continued with zero gradients (solid) and with training's
    later minibatches (dashed), one colour a swap; right: the drained second-order part against Adam's bracket
    and the SGD bracket (cosine) and its size relative to lr²·γc₁·𝔅."""
    fig, (ax, ax_c) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1.3]})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(results)))
    for r, colour in zip(results, colours):
        label = f"step {r.step} ({r.stem})"
        ax.plot(r.zero_ks, r.zero, "o-", ms=3, color=colour, label=f"{label}, zero gradients")
        if len(r.later):
            ax.plot(r.later_ks, r.later, "s--", ms=3, color=colour, label=f"{label}, later minibatches")
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set(xlabel="steps K after the swap", ylabel="‖θ_AB,K − θ_BA,K‖ / ‖θ_AB − θ_BA‖",
           title="What persists of a swap of two Adam steps")
    ax.legend(fontsize=6, ncol=2)
    rows = {"cos(·, Adam's bracket)": "adam_cosine", r"size / lr²γc₁‖$\mathfrak{B}$‖": "adam_ratio",
            "cos(·, SGD bracket)": "sgd_cosine"}
    rng = np.random.default_rng(0)
    for k, key in enumerate(rows.values()):
        values = [r.drained[key] for r in results]
        ax_c.scatter(values, k + rng.uniform(-0.15, 0.15, len(values)), c=colours, s=20)
    ax_c.set_yticks(range(len(rows)), list(rows))
    ax_c.invert_yaxis()
    ax_c.axvline(1, color="0.3", lw=0.8, ls=":")
    ax_c.axvline(0, color="0.3", lw=0.8)
    ax_c.set(xlim=(-1.05, 1.6), title="Drained, second-order part (D_∞ − F_∞)")
    fig.tight_layout()
    return fig
