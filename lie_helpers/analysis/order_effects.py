"""Real order effects: swap two training steps at a checkpoint, and test what brackets predict of it.

A bracket describes plain SGD with BatchNorm in eval mode; the training that made the
checkpoints is Adam with batch statistics. At checkpoint θ₀, with its Adam state, take two
real training minibatches A and B (the next ones in training's order) and take the two
training steps in both orders exactly as `train.train_step` does (a float64 copy of the model
in train mode, torch.optim.Adam with the checkpoint's state). The swap effect is the change of
the fixed batch's logits between the orders, with BatchNorm in eval mode and the checkpoint's
running statistics, so that only the parameters differ:

    real         f(θ_AB) − f(θ_BA)                       [batch, outputs]

Its predictions, each pushed onto the same logits:

    bracket      lr²·J·[v_A, v_B]   the write-up's object: eval-mode SGD fields of the two batch losses
    gradient     J·(v_A − v_B)      the first-order direction (by cosine: it has no size of its own)
    adam_frozen  the two Adam steps in both orders with both gradients taken at θ₀: Adam's moments
                 make the order matter at first order in lr, with no curvature at all
    adam_aware   adam_frozen plus Adam's curvature term (`adam_curvature`), the second-order part:
                 what a bracket becomes under Adam

Adam's curvature term. With m, v the moments, P = 1/(√v̂ + eps) the preconditioner and
c_t = 1/(1 − β1^t) the bias correction, the second step's gradient is taken at θ₁ = θ₀ − lr·c₁·P₁m₁,
so g_B(θ₁) ≈ g_B − lr·c₁·H_B P₁ m₁, and to second order in lr

    θ_AB − θ_BA ⊃ lr²·c₁c₂(1 − β1)·[P₂ᴬᴮ H_B P₁ᴬᴮ m₁ᴬᴮ − P₂ᴮᴬ H_A P₁ᴮᴬ m₁ᴮᴬ],   m₁ᴬᴮ = β1·m₀ + (1 − β1)·g_A,

plus the same change of g_B seen through v₂ (it moves P₂; weight (1 − β2)/(1 − β2^t), not small early).

With β1 = 0 and P = 1 it is the SGD bracket lr²·(H_B g_A − H_A g_B) = lr²·[v_A, v_B]; with
momentum it carries β1·(H_B − H_A)·P·m₀ besides, a term no SGD bracket has.

and two controls: `sgd` — two plain SGD steps in eval mode swapped the same way, the brackets'
own dynamics, which the bracket must predict (positive control) — and the swap at lr/4, whose
size gives the order in lr of the real effect (1: Adam's moments; 2: curvature, the bracket's
order). `buffers` is what the running statistics add: the logits with each order's own buffers.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from ..engine.brackets import gradient, hvp, lie_bracket, pushforward, swap_difference
from ..engine.numerics import cosine, rms
from ..data.progress import report as report_progress
from ..training.config import Profile, swap_steps
from ..training.losses import get_loss
from ..training.train import default_device, epoch_order, load_training_state, prepare_inputs

PREDICTIONS = ("bracket", "gradient", "adam_frozen", "adam_aware")
LR_SCALE = 0.25   # the second learning rate, as a fraction of the training one, for the order in lr


# ----------------------------------------------------------------------------- which minibatches

@dataclass(frozen=True)
class MinibatchPair:
    """Two consecutive minibatches of training's order after checkpoint `step`, as training-image indices."""
    step: int
    first: torch.Tensor
    second: torch.Tensor
    ambiguous: int        # how many of the 2 × batch_size images are ambiguous black/brown faces


def next_minibatches(profile: Profile, n_train: int, step: int, count: int) -> list[torch.Tensor]:
    """The `count` minibatches training takes after checkpoint `step`, in its order (continued past the run's end)."""
    per_epoch = n_train // profile.batch_size
    batches = []
    for s in range(step, step + count):
        epoch, position = divmod(s, per_epoch)
        order = epoch_order(n_train, profile.seed, epoch)
        batches.append(order[position * profile.batch_size:(position + 1) * profile.batch_size])
    return batches


def choose_pairs(profile: Profile, n_train: int, step: int, ambiguous: np.ndarray, per_kind: int = 2,
                 search: int = 40) -> list[MinibatchPair]:
    """`per_kind` pairs with the most ambiguous images and `per_kind` with the fewest, among the first
    `search` consecutive pairs of minibatches training takes after `step` (ties: the earliest)."""
    ambiguous = np.asarray(ambiguous, bool)
    if len(ambiguous) != n_train:
        raise ValueError(f"ambiguous has {len(ambiguous)} entries, the training split {n_train} images.")
    if 2 * per_kind > search:
        raise ValueError(f"per_kind={per_kind} needs at least {2 * per_kind} candidate pairs; search={search}.")
    batches = next_minibatches(profile, n_train, step, 2 * search)
    pairs = [MinibatchPair(step, a, b, int(ambiguous[a].sum() + ambiguous[b].sum()))
             for a, b in zip(batches[::2], batches[1::2])]
    by_count = sorted(range(len(pairs)), key=lambda k: (pairs[k].ambiguous, k))
    chosen = by_count[-per_kind:][::-1] + by_count[:per_kind]
    return [pairs[k] for k in chosen]


# ----------------------------------------------------------------------------- one swap

def adam_two_steps(model, optimizer, loss_fn, batches, *, lr: float, gradients=None) -> dict:
    """The parameters after two training steps on `batches` from (model, optimizer), neither of which changes.

    As train.train_step: train mode, loss.backward(), optimizer.step(). With `gradients` (one
    dict per step), those are used instead of the ones at the current parameters (frozen fields).
    Returns {"params": …, "buffers": …} of the copy.
    """
    net = copy.deepcopy(model).train()
    adam = type(optimizer)(net.parameters(), **{**optimizer.defaults, "lr": lr})
    adam.load_state_dict(copy.deepcopy(optimizer.state_dict()))   # Adam updates its moments in place
    for group in adam.param_groups:
        group["lr"] = lr
    for k, (inputs, targets) in enumerate(batches):
        adam.zero_grad(set_to_none=True)
        if gradients is None:
            loss_fn(net(inputs), targets).backward()
        else:
            for name, p in net.named_parameters():
                p.grad = gradients[k][name].clone()
        adam.step()
    return {"params": {n: p.detach() for n, p in net.named_parameters()},
            "buffers": {n: b.detach() for n, b in net.named_buffers()}}


def train_mode_gradient(model, loss_fn, batch) -> dict:
    """The gradient training computes on `batch` (train mode, batch statistics), on a copy of `model`."""
    net = copy.deepcopy(model).train()
    net.zero_grad(set_to_none=True)
    loss_fn(net(batch[0]), batch[1]).backward()
    return {n: p.grad.detach() for n, p in net.named_parameters()}


def adam_curvature(model, optimizer, loss_fn, batch_a, batch_b, lr: float) -> dict:
    """Adam's second-order (curvature) part of θ_AB − θ_BA, from the optimizer's state (module docstring).

    Gradients and Hessians are training's (train mode, batch statistics); neither input changes.
    For plain SGD (no momentum) it is the train-mode bracket lr²·(H_B g_A − H_A g_B).
    """
    if isinstance(optimizer, torch.optim.SGD):
        if any(group["momentum"] for group in optimizer.param_groups):
            raise ValueError("adam_curvature handles torch.optim.Adam and plain SGD (momentum 0) only.")
        g_a, g_b = (train_mode_gradient(model, loss_fn, batch) for batch in (batch_a, batch_b))
        h_b, h_a = (hvp(model, loss_fn, batch, g, bn_mode="train", batch=True)
                    for batch, g in ((batch_b, g_a), (batch_a, g_b)))
        return {n: lr ** 2 * (h_b[n] - h_a[n]) for n in h_a}
    if not isinstance(optimizer, torch.optim.Adam):
        raise TypeError(f"adam_curvature handles torch.optim.Adam and plain SGD, not {type(optimizer).__name__}.")
    (group,) = optimizer.param_groups
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    names = {id(p): n for n, p in model.named_parameters()}
    state = {names[id(p)]: s for p, s in optimizer.state.items()}
    params = dict(model.named_parameters())
    zero = {n: torch.zeros_like(p) for n, p in params.items()}
    m0 = {n: state[n]["exp_avg"] if n in state else zero[n] for n in params}
    v0 = {n: state[n]["exp_avg_sq"] if n in state else zero[n] for n in params}
    t0 = int(next(iter(state.values()))["step"]) if state else 0
    c1, c2 = 1 / (1 - beta1 ** (t0 + 1)), 1 / (1 - beta1 ** (t0 + 2))
    g = {"A": train_mode_gradient(model, loss_fn, batch_a), "B": train_mode_gradient(model, loss_fn, batch_b)}
    batches = {"A": batch_a, "B": batch_b}

    def order(first, second):
        v1 = {n: beta2 * v0[n] + (1 - beta2) * g[first][n] ** 2 for n in params}
        v2 = {n: beta2 * v1[n] + (1 - beta2) * g[second][n] ** 2 for n in params}
        p1 = {n: 1 / ((v1[n] / (1 - beta2 ** (t0 + 1))).sqrt() + eps) for n in params}
        m1 = {n: beta1 * m0[n] + (1 - beta1) * g[first][n] for n in params}
        m2 = {n: beta1 * m1[n] + (1 - beta1) * g[second][n] for n in params}
        h = hvp(model, loss_fn, batches[second], {n: p1[n] * m1[n] for n in params}, bn_mode="train", batch=True)
        # the second gradient moves m₂ (first term) and, through g², v₂ and so P₂ (second term)
        v_weight = (1 - beta2) / (1 - beta2 ** (t0 + 2))
        root_v2 = {n: (v2[n] / (1 - beta2 ** (t0 + 2))).sqrt() for n in params}
        p2 = {n: 1 / (root_v2[n] + eps) for n in params}
        through_v = {n: torch.where(root_v2[n] > 0, m2[n] * g[second][n] * p2[n] ** 2 / root_v2[n], 0.0)
                     for n in params}                               # 0 where a parameter never had a gradient
        return {n: lr ** 2 * c1 * c2 * h[n] * ((1 - beta1) * p2[n] - v_weight * through_v[n]) for n in params}

    ab, ba = order("A", "B"), order("B", "A")
    return {n: ab[n] - ba[n] for n in params}


def logits_at(model_eval, state: dict, inputs, *, own_buffers: bool = False) -> torch.Tensor:
    """The eval-mode logits of `inputs` at `state`'s parameters, with the checkpoint's buffers (or its own)."""
    tensors = {**state["params"], **(state["buffers"] if own_buffers else {})}
    with torch.no_grad():
        return functional_call(model_eval, tensors, (inputs,))


@dataclass
class Swap:
    """One measured swap (see the module docstring); every array is over the fixed batch's logits."""
    step: int
    ambiguous: int
    real: torch.Tensor            # [batch, outputs]
    predictions: dict             # name -> [batch, outputs]
    sgd: torch.Tensor             # the positive control: the eval-mode SGD swap
    real_small_lr: torch.Tensor   # the real swap at LR_SCALE × lr
    buffers: torch.Tensor         # what each order's own running statistics add to `real`
    lr: float

    @property
    def lr_order(self) -> float:
        """log(size at lr / size at LR_SCALE·lr) / log(1 / LR_SCALE): 1 first order in lr, 2 second."""
        return float(np.log(rms(self.real) / rms(self.real_small_lr)) / np.log(1 / LR_SCALE))


def measure_swap(model, optimizer, loss_fn, pair_batches, fixed_batch, lr: float, step: int = 0,
                 ambiguous: int = 0) -> Swap:
    """Swap two training steps on pair_batches = ((inputs_A, targets_A), (inputs_B, targets_B)) at (model,
    optimizer), and compute the predictions; use a float64 model (the orders differ in the last digits)."""
    a, b = pair_batches
    reference = copy.deepcopy(model).eval()

    def swap_logits(scale, gradients=None):
        ab = adam_two_steps(model, optimizer, loss_fn, (a, b), lr=scale * lr, gradients=gradients)
        ba = adam_two_steps(model, optimizer, loss_fn, (b, a), lr=scale * lr,
                            gradients=None if gradients is None else gradients[::-1])
        own = [logits_at(reference, s, fixed_batch, own_buffers=True) for s in (ab, ba)]
        params = [logits_at(reference, s, fixed_batch) for s in (ab, ba)]
        return params[0] - params[1], (own[0] - own[1]) - (params[0] - params[1])

    real, buffers = swap_logits(1.0)
    real_small_lr, _ = swap_logits(LR_SCALE)
    frozen, _ = swap_logits(1.0, [train_mode_gradient(model, loss_fn, a), train_mode_gradient(model, loss_fn, b)])
    bracket = lie_bracket(reference, loss_fn, a, b, batch=True)
    g_a, g_b = (gradient(reference, loss_fn, batch, batch=True) for batch in (a, b))
    field_difference = {n: g_b[n] - g_a[n] for n in g_a}                       # v_A − v_B = g_B − g_A
    sgd = pushforward(reference, fixed_batch, swap_difference(reference, loss_fn, a, b, lr, batch=True))
    curvature = pushforward(reference, fixed_batch, adam_curvature(model, optimizer, loss_fn, a, b, lr))
    return Swap(step, ambiguous, real.cpu(),
                {"bracket": (lr ** 2 * pushforward(reference, fixed_batch, bracket)).detach().cpu(),
                 "gradient": pushforward(reference, fixed_batch, field_difference).detach().cpu(),
                 "adam_frozen": frozen.cpu(),
                 "adam_aware": (frozen + curvature).detach().cpu()},
                sgd.detach().cpu(), real_small_lr.cpu(), buffers.cpu(), lr)


# ----------------------------------------------------------------------------- a run

def measure_run(profile: Profile, run_dir, train_data, fixed_batch: torch.Tensor, ambiguous: np.ndarray, *,
                steps=None, per_kind: int = 2, device=None, progress: bool = True) -> list[Swap]:
    """Real swaps at `steps` (default config.swap_steps), `per_kind` pairs with many and with few ambiguous
    images at each (choose_pairs). train_data: (uint8 images, attributes) of the training split;
    fixed_batch: the prepared pushforward batch (analysis.fixed_inputs). device: where to compute (float64), by
    default the GPU when there is one (training.default_device)."""
    steps = swap_steps(profile) if steps is None else list(steps)
    if not steps:
        raise ValueError(f"Profile {profile.name!r} measures no swaps (swap_checkpoints={profile.swap_checkpoints}, "
                         f"or no checkpoint inside the run): set swap_checkpoints ≥ 1.")
    images, attributes = train_data
    loss_fn = get_loss(profile.loss)
    device = default_device() if device is None else torch.device(device)
    batch = fixed_batch.to(device=device, dtype=torch.float64)
    swaps = []
    with tqdm(total=len(steps) * 2 * per_kind, desc="real swaps", disable=not progress) as bar:
        for step in steps:
            model, optimizer = load_training_state(run_dir, step, profile, dtype=torch.float64, device=device)
            for pair in choose_pairs(profile, len(images), step, ambiguous, per_kind):
                batches = [(prepare_inputs(images[i], device, torch.float64), attributes[i].to(device, torch.float64))
                           for i in (pair.first, pair.second)]
                swaps.append(measure_swap(model, optimizer, loss_fn, batches, batch, profile.lr, step,
                                          pair.ambiguous))
                bar.update(1)
                report_progress("real swaps", len(swaps), bar.total, f"step {step}", "swaps")
    return swaps


# ----------------------------------------------------------------------------- what they show

def per_attribute(logits_change: torch.Tensor) -> np.ndarray:
    """RMS over the batch of each output's change: [batch, outputs] -> [outputs]."""
    return logits_change.double().pow(2).mean(0).sqrt().numpy()


def summarise(swaps: list[Swap]) -> dict:
    """One row per swap: the real effect's size, the predictions' cosine with it and size relative to it,
    the positive control, the order in lr, the running statistics' share, and what is left after Adam's
    moments (its size relative to the real effect and its cosine with the bracket)."""

    rows = []
    for s in swaps:
        row = {"step": s.step, "ambiguous": s.ambiguous, "real_rms": rms(s.real), "lr_order": s.lr_order,
               "buffers_ratio": rms(s.buffers) / rms(s.real),
               "sgd_cosine": cosine(s.sgd, s.predictions["bracket"]),
               "sgd_ratio": rms(s.predictions["bracket"]) / rms(s.sgd)}
        for name, p in s.predictions.items():
            row[f"{name}_cosine"] = cosine(s.real, p)
            if name != "gradient":                    # a direction only: it has no size of its own
                row[f"{name}_ratio"] = rms(p) / rms(s.real)
            row[f"{name}_attribute_rho"] = float(scipy.stats.spearmanr(per_attribute(s.real), per_attribute(p)).statistic)
        left = s.real - s.predictions["adam_frozen"]
        row["left_after_adam_ratio"] = rms(left) / rms(s.real)
        row["left_bracket_cosine"] = cosine(left, s.predictions["bracket"])
        row["left_bracket_ratio"] = rms(s.predictions["bracket"]) / rms(left)
        curvature = s.predictions["adam_aware"] - s.predictions["adam_frozen"]
        row["left_curvature_cosine"] = cosine(left, curvature)
        row["left_after_adam_aware_ratio"] = rms(s.real - s.predictions["adam_aware"]) / rms(s.real)
        rows.append(row)
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def describe_swaps(table: dict) -> str:
    """A plain-language paragraph generated from `summarise`'s table: do brackets predict real swaps here?"""
    med = {k: float(np.median(v)) for k, v in table.items()}
    lo = {k: float(np.min(v)) for k, v in table.items()}
    hi = {k: float(np.max(v)) for k, v in table.items()}
    n, steps = len(table["step"]), sorted(set(table["step"].tolist()))

    def span(k, fmt="{:.2f}"):
        return f"{fmt.format(med[k])} (range {fmt.format(lo[k])} to {fmt.format(hi[k])})"

    control = ("predicts it" if med["sgd_cosine"] > 0.9 else
               "predicts it only roughly" if med["sgd_cosine"] > 0.7 else "does not predict it")
    control += f" ({int((table['sgd_cosine'] > 0.9).sum())} of {n} swaps at cosine above 0.9)"
    order = ("first order in the learning rate, as Adam's moments make it" if med["lr_order"] < 1.5
             else "second order in the learning rate, as a bracket is")
    bracket_size = med["bracket_ratio"]
    dominant = "Adam's moments" if med["left_after_adam_ratio"] < 0.5 else "something besides Adam's moments"
    text = (
        f"Over {n} swaps of two real training minibatches at steps {steps}: "
        f"in the brackets' own dynamics (plain SGD, BatchNorm in eval mode) the bracket {control}: cosine "
        f"{span('sgd_cosine')}, size ratio {span('sgd_ratio')}. "
        f"In the training that made the checkpoints (Adam, batch statistics) the real swap effect is {order} "
        f"(exponent {span('lr_order')}); lr²·bracket is {bracket_size:.2g} times its size (median) and points "
        f"{_direction(med['bracket_cosine'])} (cosine {span('bracket_cosine')}). "
        f"Adam's moments with frozen gradients alone give cosine {span('adam_frozen_cosine')} and leave "
        f"{span('left_after_adam_ratio')} of the effect, so the order of two steps here matters mainly through "
        f"{dominant}. What is left has cosine {span('left_bracket_cosine')} with the bracket. "
        f"Per attribute, the real swap's profile over the 40 outputs agrees with the bracket's at Spearman "
        f"ρ {span('bracket_attribute_rho')} and with the gradient difference's at {span('gradient_attribute_rho')}. "
        f"The running statistics add {span('buffers_ratio')} times the parameters' effect.")
    return text


def _direction(c: float) -> str:
    return ("the same way" if c > 0.9 else "roughly the same way" if c > 0.5 else
            "in a weakly related direction" if c > 0.2 else "in an unrelated direction" if c > -0.5 else
            "largely the opposite way (a sign to check)")
