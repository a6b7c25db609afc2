"""Source-attributed brackets: which loss terms create a bracket (issue 19, part 1).

A loss that is a sum of per-output terms, L_x = Σ_k ℓ_{x,k}, splits every example's gradient into
per-source gradients g_x = Σ_k g_{x,k}, g_{x,k} = ∇θ ℓ_{x,k} (a softmax group's cross-entropy is one
source). The bracket is bilinear in the fields, so it splits exactly:

    [v_x, v_y] = H_y g_x − H_x g_y = Σ_k S_k,   S_k = H_y g_{x,k} − H_x g_{y,k}      (source part)

S_k is the part of the bracket whose *transported gradient* comes from term k (H_y and H_x are the
full Hessians of the two examples' losses). The bilinear split goes one step further,
[v_x, v_y] = Σ_{k,l} [v_{x,k}, v_{y,l}], with [v_{x,k}, v_{y,l}] = H_{y,l} g_{x,k} − H_{x,k} g_{y,l}, and its
diagonal

    D_k = [v_{x,k}, v_{y,k}] = H_{y,k} g_{x,k} − H_{x,k} g_{y,k}                        (self part)

is the bracket of the two examples' term-k fields alone. The self parts do NOT sum to the bracket
(the rest, Σ_{k≠l} [v_{x,k}, v_{y,l}], is interaction between terms).

Known answers under a dose (term m's loss multiplied by w at a fixed checkpoint; lie_helpers.analysis.controls):
  D_m(w) = w² D_m                     (exactly: both fields scale by w)
  S_m(w) = w S_m + (w² − w) D_m       (exactly: g_{·,m} scales by w, and H gains (w − 1) H_{·,m})
  J·g_{x,m}(w) = w J·g_{x,m}          (exactly)
so only the self part is a pure power w²; the source part, w (S_m − D_m) + w² D_m, follows a curve fixed in
advance by the two w = 1 quantities (log-slope between 1 and 2 unless its two pieces partly cancel).

Everything is pushed onto the logits of a fixed batch (a Jacobian-vector product, as
brackets.pushforward): per (pair, source) a [batch, outputs] array, and J·v_{x,k} = −J·g_{x,k} per
(example, source), the sign of first_order.gradient_pushforward.

Requirements: the loss is separable by source (each term depends on its own outputs only), which
holds for lie_helpers.training.losses' losses; `source_terms` gives the terms (a loss object may define its
own `source_terms(logits, targets)` and `source_layout(n_outputs)`). BatchNorm in eval mode
(brackets.bracket_mode), TF32 off; the model is left as it was.

Cost (benchmarks/bench_source_brackets.py; default profile's model, 6 examples, batch 32, float32, one CPU
thread on a shared 2-core machine, process CPU time against bracket_matrix + pushforward's 0.95 s):
  source_brackets, all 40 sources                         28.9x   (46.3x with self parts)
  source_brackets, 4 sources + rest                        3.8x   (6.3x with self parts; 1 + rest: 2.8x)
  source_brackets_on_outputs, all 40 sources, 1 logit      4.9x   (2 logits: 9.1x)
  sketched_source_magnitudes, all 40, 32 sketches          4.9x
Every source costs two Hessian-vector products per pair and one batch pushforward in the forward way, so
all K sources cost about K/2 to K times the plain bracket. Two cheaper exact formulations: `sources` picks
the terms a readout needs and adds a "rest" source (the gradient minus theirs), so the parts still sum to
the bracket exactly; and the adjoint (`source_brackets_on_outputs`, below) gives every source on a few
chosen logits at a cost set by the logits, not the sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..data.attributes import ATTRIBUTES
from ..engine.brackets import bracket_mode, check_example, check_pairs, parameters_of
from ..training.losses import IndependentBCE, SoftmaxGroupLoss

REST = "rest"
TANGENTS_PER_CALL = 96     # Hessian-vector products of single examples in one vmapped call (memory bound) …
PUSH_PER_CALL = 48         # … and tangents of the pushforward batch in one: both for a model of …
REFERENCE_PARAMETERS = 708_624   # … the default profile's size; a larger model takes proportionally fewer (per_call)


def per_call(base: int, params: dict) -> int:
    """`base` vmapped tangents at a time for a model of REFERENCE_PARAMETERS, proportionally fewer for a larger one
    (memory grows with tangents × model): measured at width 1.0 (11.2 M parameters), 96 and 48 took 13.6 GB."""
    n = sum(t.numel() for t in params.values())
    return max(2, int(base * min(1.0, REFERENCE_PARAMETERS / n)))


# ----------------------------------------------------------------------------- sources of a loss


@dataclass(frozen=True)
class Source:
    """One loss term: its name and the output indices it depends on."""
    name: str
    outputs: tuple


def source_layout(loss_fn, n_outputs: int) -> list[Source]:
    """The loss terms of `loss_fn` in the order of `source_terms`' columns.

    IndependentBCE: one term per output (named by attribute when there are 40 outputs).
    Other SoftmaxGroupLoss: one term per ungrouped attribute, then one per softmax group (named
    by its members joined with "+", covering the members' and the "none" logits).
    """
    if hasattr(loss_fn, "source_layout"):
        return loss_fn.source_layout(n_outputs)
    if isinstance(loss_fn, IndependentBCE):
        names = ATTRIBUTES if n_outputs == len(ATTRIBUTES) else [f"output {k}" for k in range(n_outputs)]
        return [Source(names[k], (k,)) for k in range(n_outputs)]
    if isinstance(loss_fn, SoftmaxGroupLoss):
        if n_outputs != loss_fn.n_outputs:
            raise ValueError(f"{type(loss_fn).__name__} has {loss_fn.n_outputs} outputs, the model {n_outputs}.")
        sources = [Source(ATTRIBUTES[i], (k,)) for k, i in enumerate(loss_fn.binary_index)]
        for where, members in zip(loss_fn.group_slices(), loss_fn.group_index):
            sources.append(Source("+".join(ATTRIBUTES[i] for i in members), tuple(range(where.start, where.stop))))
        return sources
    raise TypeError(f"No source layout for {type(loss_fn).__name__}: use a lie_helpers.training.losses loss, or give the "
                    "loss `source_terms(logits, targets)` and `source_layout(n_outputs)` methods.")


def source_terms(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[batch, sources]: the loss's terms, summing to loss_fn(logits, targets) (same normalisation)."""
    if hasattr(loss_fn, "source_terms"):
        return loss_fn.source_terms(logits, targets)
    if isinstance(loss_fn, IndependentBCE):               # mean over batch × outputs
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none") / logits.numel()
    if isinstance(loss_fn, SoftmaxGroupLoss):
        norm = logits.shape[0] * len(ATTRIBUTES)
        n_binary = len(loss_fn.binary_index)
        terms = [F.binary_cross_entropy_with_logits(logits[:, :n_binary], targets[:, loss_fn.binary_index].to(logits.dtype),
                                                    reduction="none") / norm]
        for where, members in zip(loss_fn.group_slices(), loss_fn.group_index):
            group = F.cross_entropy(logits[:, where], loss_fn.group_targets(targets, members).to(logits.dtype),
                                    reduction="none")
            terms.append(loss_fn.group_weight * group[:, None] / norm)
        return torch.cat(terms, dim=1)
    raise TypeError(f"No source terms for {type(loss_fn).__name__}: use a lie_helpers.training.losses loss, or give the "
                    "loss a `source_terms(logits, targets)` method.")


def source_index(loss_fn, n_outputs: int, source) -> int:
    """A source given by index or by name (an attribute, or a group's "A+B")."""
    layout = source_layout(loss_fn, n_outputs)
    if isinstance(source, str):
        names = [s.name for s in layout]
        if source not in names:
            raise ValueError(f"Unknown source {source!r}; sources are {names}.")
        return names.index(source)
    if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < len(layout):
        raise ValueError(f"source must be a name or an index in [0, {len(layout)}), got {source!r}.")
    return source


# ----------------------------------------------------------------------------- the engine


@dataclass
class SourceBrackets:
    """Per-source bracket parts among N examples, pushed onto a fixed batch's logits.

    pushforward[p, s]      = J_B S_s of pair p (pairs as BracketMatrix(n).pairs), [pairs, sources, batch, outputs];
                             summing over sources gives the bracket's pushforward J_B [v_i, v_j];
    self_pushforward[p, s] = J_B D_s (self part; None unless asked), same shape; for "rest" the bracket of the
                             two examples' rest fields [v_{i,rest}, v_{j,rest}];
    first_order[e, s]      = J_B v_{e,s} = −J_B g_{e,s}, [examples, sources, batch, outputs];
    parameter_space / self_parameter_space: name -> [pairs, sources, *shape] when kept (small models).
    sources: names, "rest" last when the sources were a subset.
    """
    n: int
    sources: list
    pushforward: torch.Tensor
    first_order: torch.Tensor
    self_pushforward: torch.Tensor | None = None
    parameter_space: dict | None = None
    self_parameter_space: dict | None = None
    pairs: list = field(default_factory=list)

    @property
    def bracket_pushforward(self) -> torch.Tensor:
        """[pairs, batch, outputs]: J_B [v_i, v_j], the sum of the source parts."""
        return self.pushforward.sum(dim=1)

    @property
    def gradient_pushforward(self) -> torch.Tensor:
        """[examples, batch, outputs]: J_B v_e, the sum of the first-order source parts."""
        return self.first_order.sum(dim=1)


def selection(n_terms: int, chosen: list[int], rest: bool, dtype, device) -> torch.Tensor:
    """[sources, n_terms] weights of the terms each source sums: one-hot rows, and the complement for "rest"."""
    rows = torch.zeros(len(chosen) + rest, n_terms, dtype=dtype, device=device)
    rows[torch.arange(len(chosen)), torch.tensor(chosen, dtype=torch.long)] = 1
    if rest:
        rows[-1] = 1 - rows[:-1].sum(0)
    return rows


def stack_fields(fields: list) -> dict:
    return {k: torch.stack([f[k] for f in fields]) for k in fields[0]}


def _chunked(fn, tensors: list, chunk: int):
    """fn over the leading dimension of every tensor (dicts of tensors too) in chunks; concatenated."""
    def take(t, a, b):
        return {k: v[a:b] for k, v in t.items()} if isinstance(t, dict) else t[a:b]
    first = tensors[0]
    n = next(iter(first.values())).shape[0] if isinstance(first, dict) else first.shape[0]
    outs = [fn(*[take(t, a, a + chunk) for t in tensors]) for a in range(0, n, chunk)]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)


def source_brackets(model, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, batch: torch.Tensor, *,
                    sources=None, self_part: bool = False, keep_parameter_space: bool = False,
                    pairs=None, tangents_per_call: int | None = None) -> SourceBrackets:
    """Source parts S_k (and with `self_part` the self parts D_k) of every bracket among the examples
    (inputs[i:i+1], targets[i:i+1]), pushed onto `batch`; and each example's per-source J·v.

    sources: None for every term of the loss; else a list of sources (indices or names, source_layout)
    plus a "rest" source that holds every other term, so the parts always sum to the bracket.
    pairs: as bracket_matrix (default every i < j).

    Per example: the per-source gradients g_{e,s} in one vmapped call (one reverse pass per source, the
    forward shared). Per pair (i, j): H_j g_{i,s} and H_i g_{j,s} for all s by reverse-over-forward
    Hessian-vector products, vmapped over the sources with each example's forward pass shared, and over
    as many pairs as fit in `tangents_per_call` products (with `self_part` also H_{j,s} g_{i,s} and
    H_{i,s} g_{j,s}, the Hessian of term s alone, in the same call); the differences are pushed onto the
    batch in vmapped Jacobian-vector products that share the batch's forward pass (per_call(PUSH_PER_CALL) at once).
    Memory: N·S gradients, the products of one call, S = number of sources.
    """
    params = parameters_of(model)
    tangents_per_call = tangents_per_call or per_call(TANGENTS_PER_CALL, params)
    push_per_call = per_call(PUSH_PER_CALL, params)
    dtype = next(iter(params.values())).dtype
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs and targets hold different numbers of examples: {inputs.shape[0]} and {targets.shape[0]}.")
    n = inputs.shape[0]
    if n < 2:
        raise ValueError(f"source_brackets needs at least 2 examples, got {n}.")
    check_example((inputs[:1], targets[:1]), "inputs[0]", params)
    if batch.dtype != dtype:
        raise ValueError(f"batch is {batch.dtype} but the model is {dtype}: convert one.")
    pairs = check_pairs(n, pairs)

    def logits_at(p, x):
        return functional_call(model, p, (x,))

    def terms_at(p, x, t):                               # [terms] of one example
        return source_terms(loss_fn, logits_at(p, x), t)[0]

    with bracket_mode(model), torch.no_grad():
        n_outputs = model(inputs[:1]).shape[1]
    layout = source_layout(loss_fn, n_outputs)
    if sources is None:
        chosen, rest = list(range(len(layout))), False
    else:
        chosen = [source_index(loss_fn, n_outputs, s) for s in sources]
        if len(set(chosen)) != len(chosen) or not chosen:
            raise ValueError(f"sources must be distinct and not empty, got {sources!r}.")
        rest = len(chosen) < len(layout)
    names = [layout[k].name for k in chosen] + ([REST] if rest else [])
    sel = selection(len(layout), chosen, rest, dtype, inputs.device)               # [S, terms]
    ones = torch.ones_like(sel)
    n_sources = sel.shape[0]

    def selected_loss(p, x, t, s):
        return (s * terms_at(p, x, t)).sum()

    def directional(p, x, t, v, s):                      # d/dε Σ s·terms(θ + εv)
        return jvp(lambda q: selected_loss(q, x, t, s), (p,), (v,))[1]

    source_gradients = vmap(grad(selected_loss), in_dims=(None, None, None, 0))
    hvps = vmap(grad(directional), in_dims=(None, None, None, 0, 0))    # one example: forward shared, tangents batched

    def push(v):                                          # [T, batch, outputs]
        return vmap(lambda u: jvp(lambda p: logits_at(p, batch), (params,), (u,))[1])(v)

    def push_all(v):                                      # [..., *shape] -> [..., batch, outputs], chunked
        lead = next(iter(v.values())).shape[:2]
        flat = {k: t.reshape(-1, *t.shape[2:]) for k, t in v.items()}
        return _chunked(push, [flat], push_per_call).detach().reshape(*lead, batch.shape[0], -1)

    weights = torch.cat([ones, sel]) if self_part else ones       # [W, terms]: full Hessian (and term s's)
    width = weights.shape[0]
    per_example = vmap(hvps, in_dims=(None, 0, 0, 0, None))      # examples batched, each sharing its forward

    with bracket_mode(model):
        grads = stack_fields([source_gradients(params, inputs[e:e + 1], targets[e:e + 1], sel) for e in range(n)])
        first_order = -push_all(grads)

        def products(chunk):
            """[2c, W, ...]: rows 2m and 2m + 1 are H_j g_i and H_i g_j of the m-th pair (i, j), for the W
            (Hessian, source) combinations; several pairs in one call when the tangents fit, else one example
            at a time in chunks of tangents."""
            hessian = torch.tensor([e for i, j in chunk for e in (j, i)], device=inputs.device)
            partner = torch.tensor([e for i, j in chunk for e in (i, j)], device=inputs.device)
            tangents = {k: t[partner].repeat(1, width // n_sources, *[1] * (t.dim() - 2)) for k, t in grads.items()}
            if 2 * len(chunk) * width <= tangents_per_call:
                return per_example(params, inputs[hessian][:, None], targets[hessian][:, None], tangents, weights)
            return stack_fields([_chunked(lambda v, w: hvps(params, inputs[e:e + 1], targets[e:e + 1], v, w),
                                          [{k: t[m] for k, t in tangents.items()}, weights], tangents_per_call)
                                 for m, e in enumerate(hessian.tolist())])

        pairs_per_call = max(1, tangents_per_call // (2 * width))
        pushed, self_pushed, kept, self_kept = [], [], [], []
        for start in range(0, len(pairs), pairs_per_call):
            h = products(pairs[start:start + pairs_per_call])
            part = {k: t[0::2, :n_sources] - t[1::2, :n_sources] for k, t in h.items()}   # [c, S, ...]
            pushed.append(push_all(part))
            if keep_parameter_space:
                kept.append({k: t.detach() for k, t in part.items()})
            if self_part:
                own = {k: t[0::2, n_sources:] - t[1::2, n_sources:] for k, t in h.items()}
                self_pushed.append(push_all(own))
                if keep_parameter_space:
                    self_kept.append({k: t.detach() for k, t in own.items()})

    def stacked(rows):
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]} if rows else None

    return SourceBrackets(n=n, sources=names, pushforward=torch.cat(pushed), first_order=first_order,
                          self_pushforward=torch.cat(self_pushed) if self_part else None,
                          parameter_space=stacked(kept) if keep_parameter_space else None,
                          self_parameter_space=stacked(self_kept) if keep_parameter_space and self_part else None,
                          pairs=pairs)


# ----------------------------------------------------------------------------- all sources at the cost of the outputs read
#
# The forward formulation costs two Hessian-vector products and a batch pushforward per (pair, source). A
# readout that looks at few batch logits can have every source at once by the adjoint: H is symmetric, so
# for a direction u over the batch's logits,
#     ⟨u, J_B S_k⟩ = ⟨H_j w_u, g_{i,k}⟩ − ⟨H_i w_u, g_{j,k}⟩,   w_u = J_Bᵀ u,   and ⟨u, J_B v_{x,k}⟩ = −⟨w_u, g_{x,k}⟩.
# One Hessian-vector product per (example, direction), shared by every pair and source; the rest are inner
# products with the stored per-source gradients. With u the unit vectors of some logits (`outputs`, every
# batch image) the result is exact; with random Gaussian u it estimates the magnitude over all logits
# (E (u·a)² = ‖a‖²). Self parts need the Hessian of each term: they are not available this way.


@dataclass
class SourceProjections:
    """⟨u, ·⟩ of every source part for M directions u over the batch's logits [M, batch, outputs].

    pushforward[p, s, m] = ⟨u_m, J_B S_s⟩ of pair p; first_order[e, s, m] = ⟨u_m, J_B v_{e,s}⟩.
    """
    n: int
    sources: list
    directions: torch.Tensor
    pushforward: torch.Tensor
    first_order: torch.Tensor
    pairs: list = field(default_factory=list)


def source_projections(model, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, batch: torch.Tensor,
                       directions: torch.Tensor, *, pairs=None, tangents_per_call: int | None = None,
                       unit_rows: bool = False) -> SourceProjections:
    """Every source's part of every bracket (and of J·v) projected on `directions` [M, batch, outputs], by the
    adjoint above: M batch VJPs (one-example VJPs with `unit_rows`, when each direction is a unit vector of one
    logit), N·M Hessian-vector products, and N²·M·S inner products of parameter vectors."""
    params = parameters_of(model)
    tangents_per_call = tangents_per_call or per_call(TANGENTS_PER_CALL, params)
    push_per_call = per_call(PUSH_PER_CALL, params)
    dtype = next(iter(params.values())).dtype
    n = inputs.shape[0]
    if n < 2 or inputs.shape[0] != targets.shape[0]:
        raise ValueError("source_projections needs at least 2 examples, as many inputs as targets.")
    check_example((inputs[:1], targets[:1]), "inputs[0]", params)
    pairs = check_pairs(n, pairs)
    directions = directions.to(dtype)

    def logits_at(p, x):
        return functional_call(model, p, (x,))

    with bracket_mode(model), torch.no_grad():
        n_outputs = model(inputs[:1]).shape[1]
    if directions.shape[1:] != (batch.shape[0], n_outputs):
        raise ValueError(f"directions must be [M, {batch.shape[0]}, {n_outputs}], got {tuple(directions.shape)}.")
    layout = source_layout(loss_fn, n_outputs)
    sel = torch.eye(len(layout), dtype=dtype, device=inputs.device)

    def selected_loss(p, x, t, s):
        return (s * source_terms(loss_fn, logits_at(p, x), t)[0]).sum()

    def directional(p, x, t, v, s):
        return jvp(lambda q: selected_loss(q, x, t, s), (p,), (v,))[1]

    source_gradients = vmap(grad(selected_loss), in_dims=(None, None, None, 0))
    hvps = vmap(grad(directional), in_dims=(None, None, None, 0, None))
    ones = torch.ones(len(layout), dtype=dtype, device=inputs.device)
    with bracket_mode(model):
        if unit_rows:          # w = ∇θ of one logit of one batch image: that image alone
            where = directions.reshape(directions.shape[0], -1).abs().argmax(1)
            image, output = where // n_outputs, where % n_outputs
            scale = directions.reshape(directions.shape[0], -1).gather(1, where[:, None])[:, 0]

            pick = torch.nn.functional.one_hot(output, n_outputs).to(dtype) * scale[:, None]       # [M, outputs]

            def one_logit(p, x, c):
                return (c * logits_at(p, x[None])[0]).sum()
            w = _chunked(lambda x, c: vmap(grad(one_logit), in_dims=(None, 0, 0))(params, x, c),
                         [batch[image], pick], tangents_per_call)
        else:
            _, pull = vjp(lambda p: logits_at(p, batch), params)
            w = _chunked(lambda u: vmap(pull)(u)[0], [directions], push_per_call)
        flat_grads = torch.stack([torch.cat([t.reshape(len(layout), -1) for t in
                                             source_gradients(params, inputs[e:e + 1], targets[e:e + 1], sel).values()], dim=1)
                                  for e in range(n)])                                              # [N, S, P]
        flat_w = torch.cat([t.reshape(t.shape[0], -1) for t in w.values()], dim=1)                  # [M, P]
        first_order = -torch.einsum("mp,esp->esm", flat_w, flat_grads)
        inner = []                                        # [N(hessian), M, N(gradient), S]
        for e in range(n):
            h = _chunked(lambda v: hvps(params, inputs[e:e + 1], targets[e:e + 1], v, ones), [w], tangents_per_call)
            flat_h = torch.cat([t.reshape(t.shape[0], -1) for t in h.values()], dim=1)
            inner.append(torch.einsum("mp,xsp->mxs", flat_h, flat_grads))
        inner = torch.stack(inner)
    projected = torch.stack([inner[j, :, i] - inner[i, :, j] for i, j in pairs])                 # [pairs, M, S]
    return SourceProjections(n=n, sources=[s.name for s in layout], directions=directions,
                             pushforward=projected.transpose(1, 2).detach(), first_order=first_order.detach(),
                             pairs=pairs)


def unit_directions(batch_size: int, n_outputs: int, outputs, dtype=torch.float32, device=None) -> torch.Tensor:
    """[batch · len(outputs), batch, outputs]: the unit vectors of the chosen logits of every batch image,
    ordered image-major (reshape a projection's last axis to [batch, len(outputs)])."""
    outputs = list(outputs)
    u = torch.zeros(batch_size, len(outputs), batch_size, n_outputs, dtype=dtype, device=device)
    for n_ in range(batch_size):
        for k, o in enumerate(outputs):
            u[n_, k, n_, o] = 1
    return u.reshape(-1, batch_size, n_outputs)


def source_brackets_on_outputs(model, loss_fn, inputs, targets, batch, outputs, *, pairs=None,
                               tangents_per_call: int | None = None) -> SourceBrackets:
    """Exactly source_brackets(...) restricted to the logits `outputs` (every source, no "rest"), by the adjoint:
    pushforward [pairs, sources, batch, len(outputs)], first_order [examples, sources, batch, len(outputs)].

    Cost: N · batch · len(outputs) Hessian-vector products whatever the number of sources (the forward way:
    2 · pairs · sources products and pairs · sources batch pushforwards).
    """
    with bracket_mode(model), torch.no_grad():
        n_outputs = model(inputs[:1]).shape[1]
    u = unit_directions(batch.shape[0], n_outputs, outputs, batch.dtype, batch.device)
    r = source_projections(model, loss_fn, inputs, targets, batch, u, pairs=pairs,
                           tangents_per_call=tangents_per_call, unit_rows=True)
    shape = (batch.shape[0], len(list(outputs)))
    return SourceBrackets(n=r.n, sources=r.sources, pushforward=r.pushforward.reshape(*r.pushforward.shape[:2], *shape),
                          first_order=r.first_order.reshape(*r.first_order.shape[:2], *shape), pairs=r.pairs)


def sketched_source_magnitudes(model, loss_fn, inputs, targets, batch, *, sketches: int = 32, seed: int = 0,
                               weights: torch.Tensor | None = None, pairs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """([pairs, sources], [examples, sources]): estimated RMS over the batch's logits of every source part and of
    every J·v part, from `sketches` Gaussian directions (relative sd about √(2 / sketches) per entry).

    weights [batch, outputs] (e.g. the Fisher factor √(p(1 − p))) reweights the logits before the RMS. The same
    seed gives the same directions, so an estimate is linear in the part it reads: a part scaled by c has its
    estimate scaled by exactly c (the dose's known slopes hold exactly for it).
    """
    with bracket_mode(model), torch.no_grad():
        n_outputs = model(inputs[:1]).shape[1]
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(sketches, batch.shape[0], n_outputs, generator=g, dtype=torch.float64)
    if weights is not None:
        u = u * weights.double().cpu()
    r = source_projections(model, loss_fn, inputs, targets, batch, u.to(batch.device, batch.dtype), pairs=pairs)
    size = batch.shape[0] * n_outputs
    return ((r.pushforward.double().pow(2).mean(-1) / size).sqrt(), (r.first_order.double().pow(2).mean(-1) / size).sqrt())


# ----------------------------------------------------------------------------- readouts


def source_magnitude(parts: torch.Tensor, outputs=None) -> torch.Tensor:
    """[pairs or examples, sources, batch, outputs] -> [sources]: RMS over the batch and the chosen `outputs`
    (all by default), then the median over pairs (examples).

    Both steps are positively homogeneous, so a part scaled by c has its magnitude scaled by exactly c:
    the dose's known answers carry over to this readout unchanged.
    """
    parts = parts if outputs is None else parts[..., list(outputs)]
    return parts.double().pow(2).mean(dim=(2, 3)).sqrt().median(dim=0).values
