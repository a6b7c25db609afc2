"""Real swaps of two Adam training steps against their expansion, across learning rates: the residual orders.

At a checkpoint θ₀ with its Adam state (m₀, v₀, t), two real training minibatches A and B are taken in
both orders exactly as training takes them (torch.optim.Adam, BatchNorm with each minibatch's own
statistics), in float64, at several learning rates lr. With δ_XY = θ_XY − θ₀ the displacement after the
two steps X then Y, the swap is Δ = δ_AB − δ_BA. Its expansion (engine.adam.adam_swap_expansion, from
the checkpoint's own state) is Δ = F + S + O(lr³), F ∝ lr (Adam's moments and bias corrections with
the gradients frozen at θ₀), S ∝ lr² (curvature, with each order's preconditioners and the v term).

In parameter space the residuals and their orders in lr are

    ‖Δ‖                1   Adam's moments make the order matter at first order
    ‖Δ − lr²·[v_A, v_B]‖  1   the SGD bracket (train mode, the minibatch losses) is a small part
    ‖Δ − F‖            2
    ‖Δ − F − S‖        3   the expansion is right to second order

In logits (the fixed batch, eval mode, the checkpoint's running statistics, so only θ differs) the real
change is f(θ₀ + δ_AB) − f(θ₀ + δ_BA). Its expansion to second order needs more than J·Δ: with
f(θ₀ + δ) = f + Jδ + ½f''(δ, δ) + O(δ³) and f''(a, a) − f''(b, b) = f''(a + b, a − b),

    f(θ₀ + δ_AB) − f(θ₀ + δ_BA) = J·(F + S) + ½ f''(Σ₁, F) + O(lr³),

where Σ₁ = δ_AB + δ_BA to first order (the two frozen-gradient displacements, ∝ lr) — the term is
O(lr²), the order of J·S, and J·(F + S) alone leaves a residual of order 2. The logit residuals:
real 1, minus lr²·J[v_A, v_B] 1, minus J·F 2, minus J·(F + S) 2 ("linear"), minus the full second-order
prediction 3. f'' is a jvp of a jvp (forward over forward: exact, no finite differences).

Everything of the prediction is computed once per unit lr (F₁ = F/lr, S₁ = S/lr², Σ₁/lr) and scaled;
each learning rate costs only the four real steps and two forward passes.

Kinks. MXResNet's stem has a max-pool: where a step moves a window's maximum to another pixel the
two orders take different branches and no Taylor expansion holds (docs/design.md §5). Adam's steps
move every coordinate by about lr, so at the training lr they cross kinks; the residual orders are
therefore also measured on the same checkpoint with an average-pool stem (training.mxresnet.with_stem_pool:
the same parameters, Adam state and buffers, a smooth function of θ), where they must hold.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from tqdm.auto import tqdm

from ..engine.adam import AdamState, adam_swap_expansion
from ..engine.brackets import bracket_mode, field_norm, gradient, lie_bracket, parameters_of
from ..engine.numerics import cosine, loglog_fit, rms
from ..training.config import Profile, swap_steps
from ..training.losses import get_loss
from ..training.mxresnet import with_stem_pool
from ..training.train import default_device, load_training_state, prepare_inputs
from .order_effects import choose_pairs

LR_FACTORS = tuple(4.0 ** -k for k in range(7))     # the learning rates, as fractions of training's: 1 to 1/4096
PARAM_RESIDUALS = {"real": 1, "sgd": 1, "first": 2, "second": 3}                  # name -> expected order
LOGIT_RESIDUALS = {"real": 1, "sgd": 1, "first": 2, "linear": 2, "second": 3}


# ----------------------------------------------------------------------------- Adam from a state

def adam_run(model: nn.Module, state: AdamState, loss_fn, steps, *, lr: float, record=None,
             bn_mode: str = "train") -> dict:
    """Run torch.optim.Adam from `state` at `lr` on a copy of `model` (neither changes), one step per entry
    of `steps`: a minibatch (inputs, targets) — its loss's gradient in `bn_mode` (training's: "train") —,
    a dict of gradients (a frozen field), or None (a zero gradient: momentum pays out, nothing new comes in).

    Returns {k: θ_k − θ₀} for the step counts k in `record` (default: only the last; 0 is θ₀ itself).
    """
    net = copy.deepcopy(model)
    params = parameters_of(model)
    adam = state.with_lr(lr).optimizer(net)
    named = dict(net.named_parameters())
    steps = list(steps)
    record = {len(steps)} if record is None else set(record)
    out = {}

    def keep(k):
        if k in record:
            out[k] = {n: named[n].detach() - params[n] for n in params}

    keep(0)
    with bracket_mode(net, bn_mode), torch.enable_grad():
        for k, step in enumerate(steps, start=1):
            adam.zero_grad(set_to_none=False)
            if isinstance(step, dict):
                for n in params:
                    named[n].grad = step[n].clone()
            elif step is None:
                for n in params:
                    named[n].grad = torch.zeros_like(params[n])
            else:
                loss_fn(net(step[0]), step[1]).backward()
            adam.step()
            keep(k)
    return out


def logits_at(model: nn.Module, inputs: torch.Tensor, displacement=None) -> torch.Tensor:
    """The eval-mode outputs of `inputs` at θ₀ + displacement, with the model's own running statistics."""
    params = parameters_of(model)
    at = params if displacement is None else {n: params[n] + displacement[n] for n in params}
    with bracket_mode(model, "eval"), torch.no_grad():
        return functional_call(model, at, (inputs,))


def pushforwards(model: nn.Module, inputs: torch.Tensor, directions: list) -> list:
    """J·d for several directions d at once (eval mode): one vmapped forward-mode pass."""
    params = parameters_of(model)
    stacked = {n: torch.stack([d[n] for d in directions]) for n in params}
    with bracket_mode(model, "eval"):
        out = vmap(lambda d: jvp(lambda p: functional_call(model, p, (inputs,)), (params,), (d,))[1])(stacked)
    return list(out.detach())


def second_derivative(model: nn.Module, inputs: torch.Tensor, a, b) -> torch.Tensor:
    """f''(a, b) = ∂²/∂s∂t f(θ₀ + s·a + t·b) at 0 for the eval-mode outputs: a jvp of a jvp."""
    params = parameters_of(model)

    def along_b(p):
        return jvp(lambda q: functional_call(model, q, (inputs,)), (p,), (b,))[1]
    with bracket_mode(model, "eval"):
        return jvp(along_b, (params,), (a,))[1].detach()


# ----------------------------------------------------------------------------- one swap across lr

@dataclass
class SwapOrders:
    """One swap measured across learning rates (module docstring). Residual norms are over all
    parameters (Euclidean) and over the fixed batch's logits (RMS), one entry per learning rate."""
    step: int
    ambiguous: int
    stem: str                       # "max" (the trained network) or "avg" (its kink-free twin)
    lrs: np.ndarray                 # descending; lrs[0] is the training lr
    params: dict                    # PARAM_RESIDUALS name -> [lrs]
    logits: dict                    # LOGIT_RESIDUALS name -> [lrs]
    at_training_lr: dict = field(default_factory=dict)   # cosines and size ratios at lrs[0]

    def orders(self, space: str, smallest: int | None = None) -> dict:
        """The fitted log-log slope of each residual against lr ("params" or "logits"), over every lr or the
        `smallest` ones (below the kinks' scale)."""
        at = slice(-smallest if smallest else 0, None)
        return {name: loglog_fit(self.lrs[at], values[at]).slope for name, values in getattr(self, space).items()}


def measure_swap_orders(model: nn.Module, state: AdamState, loss_fn, batch_a, batch_b, inputs: torch.Tensor,
                        lrs, *, step: int = 0, ambiguous: int = 0, stem: str = "max") -> SwapOrders:
    """Swap two Adam steps on minibatches batch_a, batch_b from (model, state) at each lr in `lrs`, and compare
    with the expansion in parameters and in the logits of `inputs` (module docstring). Use float64."""
    lrs = np.asarray(sorted(lrs, reverse=True), dtype=np.float64)
    unit = state.with_lr(1.0)
    first, second = adam_swap_expansion(model, loss_fn, batch_a, batch_b, unit, bn_mode="train", batch=True)
    g_a, g_b = (gradient(model, loss_fn, b, bn_mode="train", batch=True) for b in (batch_a, batch_b))
    frozen = [adam_run(model, unit, loss_fn, order, lr=1.0)[2] for order in ((g_a, g_b), (g_b, g_a))]
    total = {n: frozen[0][n] + frozen[1][n] for n in first}                 # Σ₁ per unit lr
    bracket = lie_bracket(model, loss_fn, batch_a, batch_b, bn_mode="train", batch=True)
    j_first, j_second, j_bracket = pushforwards(model, inputs, [first, second, bracket])
    curvature = 0.5 * second_derivative(model, inputs, total, first)        # ½ f''(Σ₁, F₁), per unit lr²

    params = {k: [] for k in PARAM_RESIDUALS}
    logits = {k: [] for k in LOGIT_RESIDUALS}
    at_training_lr = {}
    for lr in lrs:
        ab, ba = (adam_run(model, state, loss_fn, order, lr=lr)[2] for order in ((batch_a, batch_b), (batch_b, batch_a)))
        real = {n: ab[n] - ba[n] for n in ab}
        real_logits = logits_at(model, inputs, ab) - logits_at(model, inputs, ba)
        for name, prediction in (("real", {}), ("sgd", {"b": lr ** 2}), ("first", {"f": lr}),
                                 ("second", {"f": lr, "s": lr ** 2})):
            params[name].append(field_norm({n: real[n] - prediction.get("f", 0) * first[n]
                                            - prediction.get("s", 0) * second[n] - prediction.get("b", 0) * bracket[n]
                                            for n in real}))
        logit_predictions = {"real": 0, "sgd": lr ** 2 * j_bracket, "first": lr * j_first,
                             "linear": lr * j_first + lr ** 2 * j_second,
                             "second": lr * j_first + lr ** 2 * (j_second + curvature)}
        for name, prediction in logit_predictions.items():
            logits[name].append(rms(real_logits - prediction))
        if not at_training_lr:
            sgd = {n: lr ** 2 * t for n, t in bracket.items()}
            flat = torch.cat([real[n].flatten() for n in real])
            flat_sgd = torch.cat([sgd[n].flatten() for n in real])
            at_training_lr = {
                "params_sgd_cosine": cosine(flat, flat_sgd), "logits_sgd_cosine": cosine(real_logits, j_bracket),
                "params_sgd_ratio": field_norm(sgd) / field_norm(real),
                "logits_sgd_ratio": rms(logit_predictions["sgd"]) / rms(real_logits),
                "params_first_cosine": cosine(flat, torch.cat([first[n].flatten() for n in real])),
                "params_left_after_second": params["second"][0] / params["real"][0],
                "logits_left_after_second": logits["second"][0] / logits["real"][0],
                "logits_left_after_linear": logits["linear"][0] / logits["real"][0],
                "curvature_term_ratio": rms(lr ** 2 * curvature) / rms(lr ** 2 * j_second)}
    return SwapOrders(step, ambiguous, stem, lrs, {k: np.array(v) for k, v in params.items()},
                      {k: np.array(v) for k, v in logits.items()}, at_training_lr)


# ----------------------------------------------------------------------------- a run

def checkpoint_pairs(profile: Profile, run_dir, train_data, ambiguous, step: int, per_kind: int,
                     pairs: int | None = None, device="cpu"):
    """(float64 model in train mode, its AdamState, [(pair, (batch_A, batch_B))]) at checkpoint `step`:
    the pairs of order_effects.choose_pairs (the first `pairs` of them: most ambiguous first), as float64
    minibatches, on `device`."""
    images, attributes = train_data
    model, optimizer = load_training_state(run_dir, step, profile, dtype=torch.float64, device=device)
    state = AdamState.from_optimizer(model, optimizer)
    pairs = [(pair, [(prepare_inputs(images[i], device, torch.float64), attributes[i].to(device, torch.float64))
                     for i in (pair.first, pair.second)])
             for pair in choose_pairs(profile, len(images), step, ambiguous, per_kind)[:pairs]]
    return model, state, pairs


def checkpoint_swaps(profile: Profile, run_dir, train_data, ambiguous, *, steps=None, per_kind: int = 1,
                     pairs: int | None = None, stems=("max", "avg"), device=None, desc: str = "swaps",
                     progress: bool = True):
    """Every swap the run measures, as (step, stem, network, AdamState, pair, minibatch A, minibatch B), with a
    progress bar: at `steps` (default config.swap_steps), the pairs of checkpoint_pairs, on each of `stems` ("max":
    the trained network; "avg": its average-pool twin), in float64 on `device` (default: training.default_device)."""
    steps = swap_steps(profile) if steps is None else list(steps)
    if not steps:
        raise ValueError(f"Profile {profile.name!r} measures no swaps (swap_checkpoints={profile.swap_checkpoints}).")
    device = default_device() if device is None else torch.device(device)
    count = min(2 * per_kind, pairs or 2 * per_kind)
    with tqdm(total=len(steps) * count * len(stems), desc=desc, disable=not progress) as bar:
        for step in steps:
            model, state, chosen = checkpoint_pairs(profile, run_dir, train_data, ambiguous, step, per_kind, pairs,
                                                    device)
            for stem in stems:
                net = model if stem == "max" else with_stem_pool(model, stem)
                for pair, (a, b) in chosen:
                    yield step, stem, net, state, pair, a, b
                    bar.update(1)


def measure_run_orders(profile: Profile, run_dir, train_data, fixed_batch: torch.Tensor, ambiguous, *,
                       steps=None, per_kind: int = 1, pairs: int | None = None, stems=("max", "avg"),
                       lr_factors=LR_FACTORS, device=None, progress: bool = True) -> list[SwapOrders]:
    """measure_swap_orders for every swap of checkpoint_swaps (`per_kind` pairs with the most and with the fewest
    ambiguous faces, only the first `pairs` of them, on each stem). train_data: (uint8 images, attributes) of the
    training split; fixed_batch: the prepared pushforward batch."""
    device = default_device() if device is None else torch.device(device)
    loss_fn, inputs = get_loss(profile.loss), fixed_batch.to(device=device, dtype=torch.float64)
    lrs = [profile.lr * f for f in lr_factors]
    return [measure_swap_orders(net, state, loss_fn, a, b, inputs, lrs, step=step, ambiguous=pair.ambiguous, stem=stem)
            for step, stem, net, state, pair, a, b in checkpoint_swaps(
                profile, run_dir, train_data, ambiguous, steps=steps, per_kind=per_kind, pairs=pairs, stems=stems,
                device=device, desc="swap orders", progress=progress)]


# ----------------------------------------------------------------------------- what they show

def summarise_orders(results: list[SwapOrders]) -> dict:
    """Per stem: the median (and range) over swaps of every residual's fitted order, in parameters and logits,
    and of the quantities at the training lr. {stem: {name: (median, min, max)}}, plus "swaps" and "steps"."""
    table = {}
    for stem in sorted({r.stem for r in results}, reverse=True):
        mine = [r for r in results if r.stem == stem]
        values = {}
        for space in ("params", "logits"):
            for name in getattr(mine[0], space):
                values[f"{space}_{name}_order"] = [r.orders(space)[name] for r in mine]
        for name in mine[0].at_training_lr:
            values[name] = [r.at_training_lr[name] for r in mine]
        table[stem] = {k: (float(np.median(v)), float(np.min(v)), float(np.max(v))) for k, v in values.items()}
        table[stem]["swaps"] = len(mine)
        table[stem]["steps"] = sorted({r.step for r in mine})
    return table


def alignment(c: float) -> str:
    """A cosine in words; "anti-aligned" where it is strongly negative."""
    return ("aligned" if c > 0.9 else "roughly aligned" if c > 0.5 else "weakly related" if c > 0.2 else
            "unrelated" if c > -0.2 else "weakly opposed" if c > -0.5 else "anti-aligned")


def describe_orders(table: dict) -> str:
    """A paragraph generated from summarise_orders: do the residual orders come out as the expansion says?"""
    def order(stem, key):
        m, lo, hi = table[stem][key]
        return f"{m:.2f} ({lo:.2f} to {hi:.2f})"

    parts = []
    for stem, t in table.items():
        name = "the trained network (max-pool stem)" if stem == "max" else "its average-pool twin (no kinks)"
        off = [f"{space} − {name}" for space, expected in (("params", PARAM_RESIDUALS), ("logits", LOGIT_RESIDUALS))
               for name, e in expected.items() if abs(t[f"{space}_{name}_order"][0] - e) > 0.3]
        if not off:
            verdict = "Every residual has the order the expansion says, in parameters and in logits"
        else:
            verdict = (f"The residuals off their expected order: {', '.join(off)}"
                       + (" — steps that cross the max-pool's kinks (a share ∝ lr of the pooling windows switch "
                          "within a step, each changing the next gradient by O(1)) leave an O(lr²) error that no "
                          "expansion has, until lr is so small that no window switches" if stem == "max" else ""))
        cos_p, cos_l = t["params_sgd_cosine"][0], t["logits_sgd_cosine"][0]
        parts.append(
            f"On {name}, {t['swaps']} swaps at steps {t['steps']}: in parameters the real swap has order "
            f"{order(stem, 'params_real_order')}, after lr²·bracket {order(stem, 'params_sgd_order')}, after the "
            f"first-order part {order(stem, 'params_first_order')}, after first and second "
            f"{order(stem, 'params_second_order')} (expected 1, 1, 2, 3); in logits {order(stem, 'logits_real_order')}, "
            f"{order(stem, 'logits_sgd_order')}, {order(stem, 'logits_first_order')}, without the ½f'' term "
            f"{order(stem, 'logits_linear_order')} and with it {order(stem, 'logits_second_order')} (expected 1, 1, 2, "
            f"2, 3). {verdict}. At the training lr the ½f'' term is {t['curvature_term_ratio'][0]:.2g} times J·S "
            f"(median), the expansion leaves {t['params_left_after_second'][0]:.2g} of the real swap in parameters "
            f"and {t['logits_left_after_second'][0]:.2g} in logits ({t['logits_left_after_linear'][0]:.2g} without "
            f"the ½f'' term); lr²·bracket is {t['params_sgd_ratio'][0]:.2g} times the swap's size and "
            f"{alignment(cos_p)} with it in parameters (cosine {order(stem, 'params_sgd_cosine')}), "
            f"{alignment(cos_l)} in logits (cosine {order(stem, 'logits_sgd_cosine')}).")
    return " ".join(parts)
