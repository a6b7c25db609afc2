"""The lesson's figures (notebook 00): toy problems in float64, fields in the plane, brackets and gaps.

Every function draws what the notebook has computed (or, for the plane of §4–6, computes what it draws from
the toy problem through the engine); the notebook keeps the numbers it records. The two examples of a
pair are drawn in blue (x) and orange (y): here they are toy examples, not attributes.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import patheffects
from torch.func import grad, vmap

from ..engine import toy
from ..engine.brackets import lie_bracket, swap_difference
from .style import PALETTE

EXAMPLE_COLOURS = (PALETTE[0], PALETTE[1])   # example x, example y
MARK = PALETTE[3]                              # the current ε, the ε² line
WINDOW = (-2.5, 2.5)                           # the part of the plane drawn, for w and for b
FLOOR = 1e-17                                  # exact zeros of the commuting control drawn here


# ----------------------------------------------------------------------------- the plane (§4–6)

def plane_grid(n: int, window=WINDOW) -> torch.Tensor:
    """An n × n grid of points θ = (w, b) over `window`, as a tensor (n, n, 2) (float64)."""
    w, b = torch.meshgrid(torch.linspace(*window, n, dtype=torch.float64),
                          torch.linspace(*window, n, dtype=torch.float64), indexing="xy")
    return torch.stack([w, b], -1)


def example_line(problem, k: int) -> tuple[float, float]:
    """(u, t) of the neuron's example k: its line of perfect fit is w·u + b = t."""
    return float(problem.examples[k][0][0, 0, 0]), float(problem.examples[k][1][0, 0])


def example_field(problem, k: int, points: torch.Tensor) -> torch.Tensor:
    """v_k = −∇L_k at every point of `points` (..., 2); the toy models compute design @ θ, so example k's
    loss is a plain function of θ, and vmap evaluates its gradient at all points at once."""
    design, target = problem.examples[k]
    field = vmap(grad(lambda theta: problem.loss_fn(design @ theta, target)))
    return -field(points.reshape(-1, 2)).reshape(points.shape)


def order_gaps(problem, lrs) -> np.ndarray:
    """‖θ_xy − θ_yx‖ for each learning rate: the two orders of two SGD steps (the engine's swap_difference)."""
    return np.array([float(swap_difference(problem.model, problem.loss_fn, *problem.examples, float(lr))["theta"].norm())
                     for lr in lrs])


def _lines_of_fit(ax, problem, window=WINDOW) -> None:
    for k, colour in enumerate(EXAMPLE_COLOURS):
        u, t = example_line(problem, k)
        ax.plot(window, [t - u * window[0], t - u * window[1]], "--", color=colour, lw=1.3)   # w·u + b = t


def draw_two_orders(ax, problem, eps: float, eps_scan, inset: bool = True) -> None:
    """Onto `ax`: both examples' fields, both orders of two SGD steps of size `eps` from the start, the arrow
    ε²·[v_x, v_y] from the end of y-then-x, and (inset) the gap against ε over `eps_scan` with ε²‖bracket‖."""
    x, y = problem.examples
    path_xy = torch.stack([p["theta"] for p in toy.sgd_path(problem.model, problem.loss_fn, [x, y], eps)])
    path_yx = torch.stack([p["theta"] for p in toy.sgd_path(problem.model, problem.loss_fn, [y, x], eps)])
    bracket_here = lie_bracket(problem.model, problem.loss_fn, x, y)["theta"]
    grid = plane_grid(30)
    for k, colour in enumerate(EXAMPLE_COLOURS):
        v = example_field(problem, k, grid)
        speed = v.norm(dim=-1).numpy()
        lines = ax.streamplot(grid[..., 0].numpy(), grid[..., 1].numpy(), v[..., 0].numpy(), v[..., 1].numpy(),
                              color=colour, density=0.4, linewidth=0.2 + 1.2 * speed / speed.max(), arrowsize=0.7)
        lines.lines.set_alpha(0.45)
        lines.arrows.set_alpha(0.45)
    _lines_of_fit(ax, problem)
    halo = [patheffects.withStroke(linewidth=5, foreground="white")]
    for path, colour, label in ((path_xy, EXAMPLE_COLOURS[0], "step on x, then y"),
                                (path_yx, EXAMPLE_COLOURS[1], "step on y, then x")):
        ax.plot(*path.T, "-o", color=colour, lw=2.5, ms=5, label=label, path_effects=halo, zorder=5)
    ax.plot(*path_xy[0], "ko", ms=8, label="start θ", zorder=6)
    ax.annotate("", xy=path_yx[-1] + eps**2 * bracket_here, xytext=path_yx[-1],
                arrowprops=dict(arrowstyle="->", lw=1.8, color="k", shrinkA=0, shrinkB=0), zorder=7)
    ax.plot([], [], "k-", label=r"$\varepsilon^2\,[v_x, v_y]$")
    ax.plot([], [], "--", color="0.4", label="lines of perfect fit")
    ax.set(xlim=WINDOW, ylim=WINDOW, aspect="equal", xlabel="weight w", ylabel="bias b", title=f"ε = {eps:g}")
    if inset:
        box = ax.inset_axes([0.62, 0.07, 0.34, 0.3])
        box.loglog(eps_scan, order_gaps(problem, eps_scan), ".-", color="k", ms=3, lw=1)
        box.loglog(eps_scan, eps_scan**2 * float(bracket_here.norm()), ":", color=MARK, lw=1.3)
        box.loglog([eps], order_gaps(problem, [eps]), "o", color=MARK, ms=5)
        box.set_xlabel("ε", fontsize=7, labelpad=1)
        box.set_ylabel("gap", fontsize=7, labelpad=1)
        box.tick_params(labelsize=6)
        box.patch.set_alpha(0.85)


def plot_two_orders(problem, eps: float, eps_scan):
    """One panel of `draw_two_orders`, with its legend: the slider's figure."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    draw_two_orders(ax, problem, eps, eps_scan)
    ax.legend(loc="upper left", fontsize=7)
    return fig


def plot_two_orders_grid(problem, eps_values, eps_scan):
    """`draw_two_orders` side by side at each of `eps_values`."""
    fig, axes = plt.subplots(1, len(eps_values), figsize=(4.5 * len(eps_values), 5.4), sharey=True)
    for ax, eps in zip(axes, eps_values):
        draw_two_orders(ax, problem, eps, eps_scan)
    axes[0].legend(loc="upper left", fontsize=7)
    fig.suptitle("One neuron, two examples, log-cosh loss: the two orders of two SGD steps, and the gap against ε "
                 "(insets)")
    fig.tight_layout()
    return fig


def plot_commuting_control(problem, control, eps_scan, gaps, control_gaps, bracket_norm: float):
    """Left: the commuting control's two orders at ε = 1 (they end at one point). Right: the gap against ε of
    `problem` (with ε²‖bracket‖, `bracket_norm`) and of the control (its exact zeros drawn at FLOOR)."""
    u, u_control = example_line(problem, 1)[0], example_line(control, 1)[0]
    fig, (ax, ax_gap) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.15]})
    draw_two_orders(ax, control, 1.0, eps_scan, inset=False)
    ax.set_title(f"Commuting control (u_y = {u_control:g}), ε = 1:\nboth orders end at the same point")
    ax.legend(loc="upper left", fontsize=7)
    ax_gap.loglog(eps_scan, gaps, "o-", color=EXAMPLE_COLOURS[0], label=f"the pair of §4 (u_y = {u:g})")
    ax_gap.loglog(eps_scan, eps_scan**2 * bracket_norm, ":", color=MARK,
                  label=r"$\varepsilon^2\,\|[v_x, v_y]\|$ of that pair")
    ax_gap.loglog(eps_scan, np.maximum(control_gaps, FLOOR), "s-", color=PALETTE[2],
                  label=f"commuting control (u_y = {u_control:g}); exact 0 drawn at {FLOOR:g}")
    ax_gap.set(xlabel="learning rate ε", ylabel="gap ‖θ_xy − θ_yx‖", ylim=(FLOOR / 3, 10),
               title="The gap between the two orders: ε² times the bracket")
    ax_gap.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return fig


def plot_bracket_field(problem, grid, bracket_field, joint_minimum):
    """Left: the two examples' fields on `grid` (n, n, 2). Right: their bracket `bracket_field` on the same
    grid, coloured by length. Both with the lines of perfect fit and the joint minimum."""
    w, b = grid[..., 0], grid[..., 1]
    fig, (ax_v, ax_b) = plt.subplots(1, 2, figsize=(13, 6), sharey=True)
    for k, colour in enumerate(EXAMPLE_COLOURS):
        v = example_field(problem, k, grid)
        ax_v.quiver(w, b, v[..., 0], v[..., 1], color=colour, angles="xy", scale_units="xy", scale=4.5, width=0.004,
                    label=f"v_{'xy'[k]} = −tanh(r_{'xy'[k]})·d_{'xy'[k]}")
    length = bracket_field.norm(dim=-1)
    arrows = ax_b.quiver(w, b, bracket_field[..., 0], bracket_field[..., 1], length, cmap="viridis", angles="xy",
                         scale_units="xy", scale=3.5, width=0.004)
    fig.colorbar(arrows, ax=ax_b, shrink=0.8, label="‖[v_x, v_y]‖")
    for ax in (ax_v, ax_b):
        _lines_of_fit(ax, problem)
        ax.plot(*joint_minimum, "r*", ms=14, label="joint minimum")
        ax.set(xlim=WINDOW, ylim=WINDOW, aspect="equal", xlabel="weight w")
    ax_v.set(ylabel="bias b", title="The two examples' fields")
    ax_v.legend(loc="upper left", fontsize=8)
    ax_b.set_title("Their bracket [v_x, v_y] over the plane")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- 2-D quadratics (§1)

def plot_vector_fields(problem, path_xy, path_yx, bracket, eps: float):
    """Two quadratic examples' flow lines and minima, two SGD steps in both orders, and ε²·[v(x), v(y)] drawn
    from the end of y-then-x (for quadratics it lands on the end of x-then-y)."""
    points = torch.stack(list(path_xy) + list(path_yx) + [problem.a[0], problem.a[1]])
    lo, hi = points.min(0).values - 0.6, points.max(0).values + 0.6
    g0, g1 = torch.meshgrid(torch.linspace(lo[0], hi[0], 40, dtype=torch.float64),
                            torch.linspace(lo[1], hi[1], 40, dtype=torch.float64), indexing="xy")
    grid = torch.stack([g0, g1], -1)
    fig, ax = plt.subplots(figsize=(8, 6))
    for i, (name, colour) in enumerate(zip("xy", EXAMPLE_COLOURS)):
        field = toy.quadratic_field(problem.A[i], problem.a[i], grid)
        ax.streamplot(g0.numpy(), g1.numpy(), field[..., 0].numpy(), field[..., 1].numpy(), color=colour,
                      density=0.55, linewidth=0.7, arrowsize=0.8)
        ax.plot([], [], color=colour, lw=0.7, label=f"flow lines of v({name})")
        ax.plot(*problem.a[i], marker="*", ms=14, color=colour, ls="none")
    for path, colour, label in ((path_xy, EXAMPLE_COLOURS[0], "step on x, then y"),
                                (path_yx, EXAMPLE_COLOURS[1], "step on y, then x")):
        pts = torch.stack(list(path))
        ax.plot(pts[:, 0], pts[:, 1], "-o", color=colour, lw=2.5, label=label)
    ax.plot(*path_xy[0], "ko", ms=8, label="start θ")
    end_yx = path_yx[-1]
    ax.annotate("", xy=end_yx + eps**2 * bracket, xytext=end_yx,
                arrowprops=dict(arrowstyle="->", ls="--", lw=2, color="k"))
    ax.plot([], [], "k--", label=r"$\varepsilon^2\,[v(x), v(y)]$")
    ax.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", aspect="equal",
           title=f"Two SGD steps in both orders (ε = {eps})\nstars: each example's minimum a_x, a_y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the engine's checks (§7–10)

def plot_quadratic_exact(swap_checks: dict, lrs):
    """Per pair of random quadratics, ‖swap/ε² − bracket‖ / ‖bracket‖ against ε: round-off only."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for (i, j), check in swap_checks.items():
        ax.loglog(check.lrs, check.rel_err, "o-", ms=4, label=f"pair ({i}, {j})")
    ax.loglog(lrs, 1e-16 / np.asarray(lrs)**2, "k:", label=r"round-off $\sim 10^{-16}/\varepsilon^2$")
    ax.set(xlabel="learning rate ε", ylabel="‖swap/ε² − bracket‖ / ‖bracket‖",
           title="Quadratics: swap = ε²·bracket exactly (up to round-off)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_swap_remainder(check, lrs):
    """A nonlinear toy's ‖swap/ε² − bracket‖ / ‖bracket‖ against ε, with a line of slope 1 (O(ε³) remainder)."""
    lrs = np.asarray(lrs)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(check.lrs, check.rel_err, "o-", label=f"tanh MLP (fitted slope {check.slope:.2f})")
    ax.loglog(lrs, check.rel_err[0] * lrs / lrs[0], "k:", label="slope 1")
    ax.set(xlabel="learning rate ε", ylabel="‖swap/ε² − bracket‖ / ‖bracket‖",
           title="Nonlinear toy: the remainder is O(ε³)")
    ax.legend()
    fig.tight_layout()
    return fig


def _flat(tensors: dict) -> np.ndarray:
    return torch.cat([t.flatten() for t in tensors.values()]).numpy()


def plot_minibatch_bilinearity(check, pairwise: list):
    """Left: the minibatch bracket against the mean of the pairwise example brackets (and each of them), per
    parameter. Right: the minibatch swap / ε² against the minibatch bracket, over ε."""
    fig, (ax, ax_swap) = plt.subplots(1, 2, figsize=(10, 4))
    for b in pairwise:
        ax.plot(_flat(check.bracket), _flat(b), ".", color="0.75", ms=3)
    ax.plot(_flat(check.bracket), _flat(check.pairwise_mean), "o", ms=3,
            label=f"mean of the {len(pairwise)} pairwise brackets")
    ax.plot([], [], ".", color="0.75", label="single pairwise brackets")
    diagonal = np.array([_flat(check.bracket).min(), _flat(check.bracket).max()])
    ax.plot(diagonal, diagonal, "k:", lw=1, label="diagonal y = x")
    ax.set(xlabel="minibatch bracket [v(X), v(Y)] (per parameter)", ylabel="example brackets",
           title="Bilinearity: the mean lies on the diagonal y = x")
    ax.legend(fontsize=8)
    ax_swap.loglog(check.swap.lrs, check.swap.rel_err, "o-", label=f"minibatch swap (slope {check.swap.slope:.2f})")
    ax_swap.set(xlabel="learning rate ε", ylabel="relative error", title="Minibatch swap/ε² vs [v(X), v(Y)]")
    ax_swap.legend()
    fig.tight_layout()
    return fig


def plot_smith_order_average(smith):
    """Left: one epoch averaged over every order of the minibatches against gradient flow on L (O(ε²)) and on the
    modified loss (O(ε³)). Right: one order's deviation from the mean against (ε²/2)·Σ brackets."""
    fig, (ax, ax_order) = plt.subplots(1, 2, figsize=(11, 4))
    ax.loglog(smith.lrs, smith.err_flow, "o-", color=PALETTE[0],
              label=f"vs gradient flow on L (slope {smith.slope_flow:.2f})")
    ax.loglog(smith.lrs, smith.err_modified, "s-", color=PALETTE[1],
              label=f"vs flow on modified L̃ (slope {smith.slope_modified:.2f})")
    for p, err, colour in [(2, smith.err_flow, PALETTE[0]), (3, smith.err_modified, PALETTE[1])]:
        ax.loglog(smith.lrs, err[0] * (smith.lrs / smith.lrs[0]) ** p, ":", color=colour, lw=1)
    ax.set(xlabel="learning rate ε", ylabel=f"‖mean over {math.factorial(len(smith.order))} orders − flow‖",
           title="Order-averaged epoch follows the modified flow")
    ax.legend(fontsize=8)
    ax_order.loglog(smith.lrs, smith.err_order, "o-", color=PALETTE[2],
                    label=f"order {smith.order} (slope {smith.slope_order:.2f})")
    ax_order.set(xlabel="learning rate ε", ylabel="relative error",
                 title=r"$\theta_\sigma - \bar\theta$ vs $(\varepsilon^2/2)\,\Sigma$ brackets")
    ax_order.legend(fontsize=8)
    fig.tight_layout()
    return fig
