"""The symmetry figures (notebook 05): what every example's field conserves, every bracket conserves.

Each function draws what `lie_helpers.analysis.symmetry` measured in the notebook: BatchNorm's scale
symmetry (and its ε_BN), ReLU's rescale symmetry, the softmax head's translation symmetry, and the growth of
‖W‖² under discrete SGD steps. Exact zeros are drawn at a floor at the bottom of a log axis, and say so.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .style import PALETTE

FLOOR = 1e-18   # exact zeros (a unit dead for both examples) drawn at the bottom of the axis


def plot_batchnorm_scale_symmetry(scale_train: dict, scale_eval, model_eps: float, eps_slope: float):
    """Left: |cos(bracket_W, W)| per conv weight before BatchNorm (median and range over the brackets), in eval
    mode and with batch statistics at the network's ε_BN and at 1e-13. Right: the same against ε_BN.

    scale_train: {ε_BN: [brackets, convs]} with batch statistics; scale_eval: [brackets, convs] in eval mode;
    eps_slope: the log-log slope of the median against ε_BN (for the legend).
    """
    eps_values = list(scale_train)
    n_brackets, n_convs = np.shape(scale_eval)
    fig, (ax, ax_eps) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    layer = np.arange(n_convs)
    tiny = min(eps_values)
    for values, label, style in [(scale_eval, "eval mode (running statistics)", dict(color=PALETTE[3], marker="o")),
                                 (scale_train[model_eps], f"batch statistics, ε_BN = {model_eps:g} (the network's)",
                                  dict(color=PALETTE[0], marker="s")),
                                 (scale_train[tiny], f"batch statistics, ε_BN = {tiny:g}",
                                  dict(color=PALETTE[2], marker="^"))]:
        a = np.abs(values)
        ax.semilogy(layer, np.median(a, 0), lw=1.2, label=label, **style, ms=4)
        ax.fill_between(layer, a.min(0), a.max(0), color=style["color"], alpha=0.15)
    ax.set(xlabel="conv weight (stem, then each residual block's convs and shortcut, in order)",
           ylabel=f"|cos(bracket_W, W)|\n(median; band: range over {n_brackets} pairs)",
           title="Brackets are orthogonal to W only with batch statistics")
    ax.set_ylim(1e-19, 10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3)
    medians = [np.median(np.abs(r)) for r in scale_train.values()]
    worst = [np.abs(r).max() for r in scale_train.values()]
    ax_eps.loglog(eps_values, medians, "s-", color=PALETTE[0],
                  label=f"batch statistics (median over convs, pairs); slope {eps_slope:.2f}")
    ax_eps.loglog(eps_values, worst, "v:", color=PALETTE[0], label="worst conv and pair")
    ax_eps.axhline(np.median(np.abs(scale_eval)), color=PALETTE[3], ls="--", label="eval mode (median)")
    ax_eps.axvline(model_eps, color="0.5", lw=0.8)
    ax_eps.text(model_eps, 1e-1, "network's ε_BN ", fontsize=8, color="0.4", va="center", ha="right")
    ax_eps.set(xlabel="BatchNorm ε_BN", ylabel="|cos(bracket_W, W)|", title="The residual is BatchNorm's ε_BN")
    ax_eps.set_ylim(1e-17, 1)
    ax_eps.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    fig.tight_layout()
    return fig


def _strip(ax, groups, floor: float, *, jitter: float, marker: str, ms: float, alpha: float) -> None:
    """Columns of dots on a log axis, one per array of `groups` [(values, colour)], exact zeros at `floor`."""
    for x, (values, colour) in enumerate(groups):
        y = np.maximum(np.abs(np.asarray(values)).ravel(), floor)
        spread = np.random.default_rng(x % 2).uniform(-jitter, jitter, y.size)
        ax.semilogy(x + spread, y, marker, ms=ms, alpha=alpha, color=colour)


def plot_relu_rescale_symmetry(rescale: dict, floor: float = FLOOR):
    """|cos(∇Q_j, field)| per hidden unit j, for every example field and every bracket of each activation's MLP.

    rescale: {activation: (fields, brackets)} (symmetry.rescale_check).
    """
    fig, ax = plt.subplots(figsize=(8, 4.2))
    groups = [(values, PALETTE[k]) for k, (fields, brackets) in enumerate(rescale.values()) for values in (fields, brackets)]
    _strip(ax, groups, floor, jitter=0.25, marker=".", ms=3, alpha=0.6)
    names = {"relu": "ReLU"}
    ax.set_xticks(range(len(groups)), [f"{names.get(act, act)}\n{what}" for act in rescale
                                       for what in ("example fields", "brackets")])
    ax.axhline(floor, color="0.6", lw=0.8, ls=":")
    ax.text(len(groups) - 0.55, floor * 2, "exact 0", fontsize=8, color="0.4", ha="right", va="bottom")
    ax.set(ylabel="|cos(∇Q_j, field)| per hidden unit j", ylim=(floor / 3, 3),
           title="Each ReLU unit's rescale charge is conserved by every bracket")
    fig.tight_layout()
    return fig


def plot_softmax_translation_symmetry(translation: dict, floor: float = FLOOR):
    """‖Σ_k row_k‖ / (√K ‖rows‖) of the hair rows of the head, for every example field and bracket of each head.

    translation: {head label: (fields, brackets)} (symmetry.translation_check); the label up to " (" names the
    head on the axis.
    """
    fig, ax = plt.subplots(figsize=(8, 4.2))
    groups = [(values, PALETTE[k]) for k, (fields, brackets) in enumerate(translation.values())
              for values in (fields, brackets)]
    _strip(ax, groups, floor, jitter=0.2, marker="o", ms=4, alpha=0.7)
    ax.axhspan(0.45, 0.5, color="0.6", alpha=0.4)
    ax.text(1.5, 0.8, "unrelated rows: ≈ 1/√K", fontsize=8, color="0.3", ha="center")
    ticks = []
    for label, (fields, brackets) in translation.items():
        head = label.split(" (")[0]
        ticks += [f"{head}\n{len(fields)} example fields", f"{head}\n{len(brackets)} brackets"]
    ax.set_xticks(range(len(groups)), ticks)
    ax.set(ylabel="‖Σ_k row_k‖ / (√K ‖rows‖)\nof the hair rows", ylim=(floor / 3, 3),
           title="Softmax head: every field and bracket sums to zero over the classes")
    fig.tight_layout()
    return fig


def plot_sgd_norm_growth(growth: dict, model_eps: float):
    """Left: the measured growth of ‖W‖² per conv weight and SGD step against lr²‖g_W‖², at the network's ε_BN.
    Right: |measured / predicted − 1| against the learning rate, for each ε_BN, with the float64 rounding of the step
    itself removed (StepGrowth.ratio_without_rounding): what is left is BatchNorm's ε_BN cross term.

    growth: {ε_BN: [symmetry.StepGrowth per learning rate]}.
    """
    fig, (ax, ax_dev) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, g in enumerate(growth[model_eps]):
        ax.loglog(g.predicted.ravel(), np.abs(g.growth).ravel(), ".", ms=4, color=PALETTE[k], label=f"lr = {g.lr:g}")
    lims = np.array([min(g.predicted.min() for g in growth[model_eps]), max(g.predicted.max() for g in growth[model_eps])])
    ax.loglog(lims, lims, "k:", lw=1, label="growth = lr²‖g_W‖²")
    ax.set(xlabel="lr² ‖g_W‖²  (per conv weight and step)", ylabel="measured |‖W_new‖² − ‖W‖²|\n(a few < 0 at lr 1e-3)",
           title=f"SGD steps grow ‖W‖² by lr²‖g_W‖²\n(BatchNorm ε_BN = {model_eps:g})")
    ax.legend(fontsize=8)
    for k, (eps, style) in enumerate(zip(growth, ("s-", "^-"))):
        lrs = [g.lr for g in growth[eps]]
        deviation = [np.abs(g.ratio_without_rounding - 1) for g in growth[eps]]
        ax_dev.loglog(lrs, [np.median(d) for d in deviation], style, color=PALETTE[k],
                      label=f"BatchNorm ε_BN = {eps:g}: median over convs and steps")
        ax_dev.fill_between(lrs, [d.min() for d in deviation], [d.max() for d in deviation], color=PALETTE[k],
                            alpha=0.15)
    ax_dev.set(xlabel="learning rate", ylabel="|measured / predicted − 1|\n(the step's rounding removed; band: range)",
               title="Deviation from the formula falls like 1 / lr,\nscales with BatchNorm ε_BN")
    ax_dev.legend(fontsize=8)
    fig.tight_layout()
    return fig
