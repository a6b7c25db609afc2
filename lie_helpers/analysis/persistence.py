"""The persistent order effect: swap two real Adam training steps, continue both orders, and see what stays.

Right after two swapped Adam steps, D₀ = θ_AB − θ_BA is first order in lr, mostly momentum: the first
step's gradient is already in the second step's momentum, the second's not yet (engine.adam, F). Later
steps pay the momentum difference out. So continue both orders from their states with the same K
steps and measure D_K = θ_AB,K − θ_BA,K as K grows, two ways:

    later   training's next K minibatches after the pair (what training would have done)
    zero    K steps with zero gradients: momentum drains and nothing new comes in — the clean limit,
            D_∞ after β1^K ≈ 0 (ZERO_STEPS)

In the zero-gradient limit everything is computable. Continuing the two frozen-gradient steps (gradients
taken at θ₀) the same way gives the first-order part F_∞ exactly (nothing depends on θ, so it is linear in
lr): the bias correction's share lr(1−β1)(c₁ − γ)·P(g_B − g_A) and v's order dependence (engine.adam).
What is left, D_∞ − F_∞, is second order in lr, and engine.adam predicts it with Adam's bracket:

    D_∞ − F_∞ ≈ lr²·γc₁·𝔅(A, B),   𝔅 = P(H_B w_A − H_A w_B),  w_X = P((1−β1)g_X + β1 m₀),
    γc₁ = AdamState.scales()["drained"]   (P frozen at the state's; → lr²·𝔅 for large t)

up to the second-moment remainder (relative O((1−β2)/(1 − β2^t)), small late in training, and the
growth of P while v decays without gradients) and O(lr³). It is compared with that prediction (cosine,
size ratio), with the SGD bracket lr²·[v_A, v_B] (cosine), and its order in lr is read from the swap at
lr and LR_SCALE·lr. With later minibatches D_K is compared with the same predictions and with the
zero-gradient D_K (does training merely drain the momentum, or does it move the difference?).

All in parameter space, float64, BatchNorm in train mode as training has it (batch statistics).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine.adam import AdamState, adam_bracket
from ..engine.brackets import field_norm, gradient, lie_bracket
from ..engine.numerics import cosine
from ..training.config import Profile
from ..training.losses import get_loss
from ..training.train import default_device, prepare_inputs
from .order_effects import next_minibatches
from .swap_orders import adam_run, checkpoint_swaps

LATER_KS = (0, 1, 2, 5, 10, 20)                # continuation lengths with training's later minibatches
ZERO_KS = (0, 1, 2, 5, 10, 20, 40, 80)         # … with zero gradients
ZERO_STEPS = ZERO_KS[-1]                       # β1 = 0.8: 0.8⁸⁰ ≈ 2e-8 of the momentum is left
LR_SCALE = 0.25                                # the second learning rate, for the order in lr


def _flat(field_: dict) -> torch.Tensor:
    return torch.cat([t.flatten() for t in field_.values()])


def _difference(a: dict, b: dict) -> dict:
    return {n: a[n] - b[n] for n in a}


@dataclass
class Persistence:
    """One swap continued (module docstring); norms are Euclidean over all parameters."""
    step: int
    ambiguous: int
    stem: str
    lr: float
    later_ks: np.ndarray
    later: np.ndarray                 # ‖D_K‖ / ‖D₀‖ with later minibatches (empty when not measured)
    later_vs_zero_cosine: np.ndarray  # cos(D_K later, D_K zero)
    zero_ks: np.ndarray
    zero: np.ndarray                  # ‖D_K‖ / ‖D₀‖ with zero gradients
    drained: dict = field(default_factory=dict)   # the zero-gradient limit: see measure_persistence


def measure_persistence(model, state: AdamState, loss_fn, batch_a, batch_b, later_batches=(), *,
                        step: int = 0, ambiguous: int = 0, stem: str = "max", lr_scale: float = LR_SCALE,
                        later_ks=LATER_KS, zero_ks=ZERO_KS) -> Persistence:
    """Swap two Adam steps on batch_a, batch_b from (model, state) at state.lr, continue both orders with
    `later_batches` (the first max(later_ks) of them; none: no later continuation) and with zero gradients,
    and compare the drained second-order part with lr²·γc₁·𝔅 and with lr²·[v_A, v_B] (module docstring).

    `drained` holds, at lr = state.lr: "survives" ‖D_∞‖/‖D₀‖, "first_share" ‖F_∞‖/‖D_∞‖, "second_share"
    ‖D_∞ − F_∞‖/‖D₀‖, "adam_cosine" and "adam_ratio" of D_∞ − F_∞ against lr²·γc₁·𝔅, "sgd_cosine" against
    lr²·[v_A, v_B], "order" of ‖D_∞ − F_∞‖ in lr (from lr and lr_scale·lr), "order_total" of ‖D_∞‖, the norms
    "immediate_norm" ‖D₀‖, "first_norm" ‖F_∞‖, "prediction_norm" ‖lr²·γc₁·𝔅‖, and with later minibatches
    "later_survives", "later_zero_cosine", "later_adam_cosine" at the longest continuation. Use float64.
    """
    lr = state.lr
    zero_ks, later_ks = sorted(zero_ks), sorted(later_ks)
    g_a, g_b = (gradient(model, loss_fn, b, bn_mode="train", batch=True) for b in (batch_a, batch_b))
    orders = ((batch_a, batch_b), (batch_b, batch_a))
    tail = [None] * zero_ks[-1]

    def swap(first_two, scale, extra, ks):
        runs = [adam_run(model, state, loss_fn, list(pair) + list(extra), lr=scale * lr, record=[2 + k for k in ks])
                for pair in first_two]
        return {k: _difference(runs[0][2 + k], runs[1][2 + k]) for k in ks}

    zero = {scale: swap(orders, scale, tail, zero_ks) for scale in (1.0, lr_scale)}
    frozen = swap(((g_a, g_b), (g_b, g_a)), 1 / lr, tail, [zero_ks[-1]])[zero_ks[-1]]   # F_∞ per unit lr
    scales = state.scales()
    prediction = {n: lr ** 2 * scales["drained"] * t for n, t in
                  adam_bracket(model, loss_fn, batch_a, batch_b, state, bn_mode="train", batch=True).items()}
    sgd = lie_bracket(model, loss_fn, batch_a, batch_b, bn_mode="train", batch=True)

    immediate, last = zero[1.0][0], zero_ks[-1]
    second = {scale: {n: zero[scale][last][n] - scale * lr * frozen[n] for n in frozen} for scale in zero}
    d0 = field_norm(immediate)
    drained = {
        "immediate_norm": d0, "first_norm": lr * field_norm(frozen), "prediction_norm": field_norm(prediction),
        "survives": field_norm(zero[1.0][last]) / d0,
        "first_share": field_norm({n: lr * t for n, t in frozen.items()}) / field_norm(zero[1.0][last]),
        "second_share": field_norm(second[1.0]) / d0,
        "adam_cosine": cosine(_flat(second[1.0]), _flat(prediction)),
        "adam_ratio": field_norm(second[1.0]) / field_norm(prediction),
        "sgd_cosine": cosine(_flat(second[1.0]), _flat(sgd)),
        "order": float(np.log(field_norm(second[1.0]) / field_norm(second[lr_scale])) / np.log(1 / lr_scale)),
        "order_total": float(np.log(field_norm(zero[1.0][last]) / field_norm(zero[lr_scale][last]))
                             / np.log(1 / lr_scale)),
    }
    later, later_cos = np.array([]), np.array([])
    if len(later_batches):
        needed = later_ks[-1]
        if len(later_batches) < needed:
            raise ValueError(f"later_ks reach {needed} steps but only {len(later_batches)} later minibatches were given.")
        continued = swap(orders, 1.0, later_batches[:needed], later_ks)
        later = np.array([field_norm(continued[k]) / d0 for k in later_ks])
        later_cos = np.array([cosine(_flat(continued[k]), _flat(zero[1.0][k])) if k in zero[1.0] else np.nan
                              for k in later_ks])
        drained["later_survives"] = float(later[-1])
        drained["later_adam_cosine"] = cosine(_flat(continued[needed]), _flat(prediction))
        drained["later_zero_cosine"] = cosine(_flat(continued[needed]), _flat(zero[1.0][last]))
    return Persistence(step, ambiguous, stem, lr, np.array(later_ks if len(later) else []), later, later_cos,
                       np.array(zero_ks), np.array([field_norm(zero[1.0][k]) / d0 for k in zero_ks]), drained)


def measure_run_persistence(profile: Profile, run_dir, train_data, ambiguous, *, steps=None, per_kind: int = 1,
                            pairs: int | None = None, stems=("max", "avg"), later_stems=("max",), later_ks=LATER_KS,
                            zero_ks=ZERO_KS, device=None, progress: bool = True) -> list[Persistence]:
    """measure_persistence at `steps` (default config.swap_steps) for the pairs of choose_pairs (the first
    `pairs` of them), on the trained network and its average-pool twin; the later-minibatch continuation (training's minibatches after the pair)
    on `later_stems` only (it costs a training step per step)."""
    images, attributes = train_data
    loss_fn = get_loss(profile.loss)
    device = default_device() if device is None else torch.device(device)
    out = []
    for step, stem, net, state, pair, a, b in checkpoint_swaps(
            profile, run_dir, train_data, ambiguous, steps=steps, per_kind=per_kind, pairs=pairs, stems=stems,
            device=device, desc="persistence", progress=progress):
        later = []
        if stem in later_stems:
            after = next_minibatches(profile, len(images), pair.step, 2 * 40 + max(later_ks))
            start = _position_after(after, pair)
            later = [(prepare_inputs(images[i], device, torch.float64), attributes[i].to(device, torch.float64))
                     for i in after[start:start + max(later_ks)]]
        out.append(measure_persistence(net, state.with_lr(profile.lr), loss_fn, a, b, later, step=step,
                                       ambiguous=pair.ambiguous, stem=stem, later_ks=later_ks, zero_ks=zero_ks))
    return out


def _position_after(batches, pair) -> int:
    """The index in `batches` just after the pair's second minibatch (training's next ones)."""
    for k, batch in enumerate(batches):
        if torch.equal(batch, pair.second):
            return k + 1
    raise ValueError("The pair's minibatches are not among the next ones training takes.")


def summarise_persistence(results: list[Persistence]) -> dict:
    """Per stem: {name: (median, min, max)} over swaps of every `drained` number, the mean curves
    ("zero_curve", "later_curve": median over swaps of ‖D_K‖/‖D₀‖), "swaps" and "steps"."""
    table = {}
    for stem in sorted({r.stem for r in results}, reverse=True):
        mine = [r for r in results if r.stem == stem]
        keys = sorted(set.intersection(*(set(r.drained) for r in mine)))
        row = {k: (float(np.median([r.drained[k] for r in mine])), float(min(r.drained[k] for r in mine)),
                   float(max(r.drained[k] for r in mine))) for k in keys}
        row["zero_ks"] = mine[0].zero_ks.tolist()
        row["zero_curve"] = np.median([r.zero for r in mine], axis=0).tolist()
        with_later = [r for r in mine if len(r.later)]
        if with_later:
            row["later_ks"] = with_later[0].later_ks.tolist()
            row["later_curve"] = np.median([r.later for r in with_later], axis=0).tolist()
        row["swaps"], row["steps"] = len(mine), sorted({r.step for r in mine})
        table[stem] = row
    return table


def describe_persistence(table: dict) -> str:
    """A paragraph generated from summarise_persistence: what survives of a swap, at what order, and what predicts it."""
    def span(stem, key, fmt="{:.2f}"):
        m, lo, hi = table[stem][key]
        return f"{fmt.format(m)} ({fmt.format(lo)} to {fmt.format(hi)})"

    parts = []
    for stem, t in table.items():
        name = "the trained network" if stem == "max" else "its average-pool twin"
        text = (f"On {name} ({t['swaps']} swaps at steps {t['steps']}), once the momentum has drained (zero gradients, "
                f"{t['zero_ks'][-1]} steps) {span(stem, 'survives')} of the immediate swap survives; of that, the "
                f"first-order part (bias correction and v's order dependence, exact from frozen gradients) is "
                f"{span(stem, 'first_share')} of its size. The rest has order {span(stem, 'order')} in lr "
                f"(second order expected) and, against Adam's bracket lr²·γc₁·𝔅, cosine {span(stem, 'adam_cosine')} "
                f"and size ratio {span(stem, 'adam_ratio')}; against the SGD bracket cosine {span(stem, 'sgd_cosine')}.")
        if "later_survives" in t:
            text += (f" Continued with training's next {t['later_ks'][-1]} minibatches instead, "
                     f"{span(stem, 'later_survives')} of the swap's size remains, at cosine "
                     f"{span(stem, 'later_zero_cosine')} with the zero-gradient limit and "
                     f"{span(stem, 'later_adam_cosine')} with Adam's bracket.")
        parts.append(text)
    return " ".join(parts)
