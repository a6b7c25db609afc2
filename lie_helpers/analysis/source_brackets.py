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

Adam's self part (`adam_source_brackets`; Adam's bracket, lie_helpers.engine.adam, with its state frozen: P =
1/(√v̂₀ + ε), momentum m₀). Adam's bracket of the two examples' source-k fields splits the same way,

    𝔅_k = (1−β1)·D^A_k + β1·M_k,   D^A_k = P(H_{y,k} P g_{x,k} − H_{x,k} P g_{y,k}),   M_k = P(H_{y,k} − H_{x,k}) P m₀,

D^A_k the bilinear part, M_k the momentum part (for a loss of one source 𝔅_k is engine.adam.adam_bracket). The
machinery is the SGD split's with the tangents P·g (and P·m₀) and each product multiplied by P. Under a dose w on
source k at a FIXED state (P and m₀ not recomputed): D^A_k → w² D^A_k, M_k → w M_k, J·(P g_k) → w J·(P g_k), exactly.

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
the bracket exactly; and the adjoint (lie_helpers.analysis.source_projections: `source_brackets_on_outputs`)
gives every source on a few chosen logits at a cost set by the logits, not the sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

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
    With a preconditioner P (adam_source_brackets) every part carries it: pushforward J·P(H_j P g_{i,s} − H_i P g_{j,s}),
    self_pushforward J·D^A_s, first_order −J·P g_{e,s}, and momentum_pushforward[p, s] = J·M_s.
    """
    n: int
    sources: list
    pushforward: torch.Tensor
    first_order: torch.Tensor
    self_pushforward: torch.Tensor | None = None
    parameter_space: dict | None = None
    self_parameter_space: dict | None = None
    pairs: list = field(default_factory=list)
    momentum_pushforward: torch.Tensor | None = None
    momentum_parameter_space: dict | None = None

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
                    sources=None, self_part: bool = False, keep_parameter_space: bool = False, source_part: bool = True,
                    pairs=None, tangents_per_call: int | None = None, precondition: dict | None = None,
                    momentum: dict | None = None) -> SourceBrackets:
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
    source_part=False skips the source parts S_k (half the products when only self parts are read; pushforward None).
    precondition (P, a field) and momentum (a field u; Adam: u = P·m₀): the preconditioned split of
    adam_source_brackets (module docstring), with momentum_pushforward J·P(H_{j,s} − H_{i,s})u (N·S more products).
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

    if not (source_part or self_part):
        raise ValueError("source_brackets needs source_part or self_part.")
    weights = torch.cat([ones] * source_part + [sel] * self_part)      # [W, terms]: full Hessian and/or term s's
    at = n_sources * source_part                                        # where the self parts' rows start
    width = weights.shape[0]
    per_example = vmap(hvps, in_dims=(None, 0, 0, 0, None))      # examples batched, each sharing its forward

    def times_p(f):                                      # P·f (identity without a preconditioner)
        return f if precondition is None else {k: t * precondition[k] for k, t in f.items()}

    with bracket_mode(model):
        grads = times_p(stack_fields([source_gradients(params, inputs[e:e + 1], targets[e:e + 1], sel)
                                      for e in range(n)]))
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
            if source_part:
                part = times_p({k: t[0::2, :n_sources] - t[1::2, :n_sources] for k, t in h.items()})   # [c, S, ...]
                pushed.append(push_all(part))
                if keep_parameter_space:
                    kept.append({k: t.detach() for k, t in part.items()})
            if self_part:
                own = times_p({k: t[0::2, at:] - t[1::2, at:] for k, t in h.items()})
                self_pushed.append(push_all(own))
                if keep_parameter_space:
                    self_kept.append({k: t.detach() for k, t in own.items()})

        moved = kept_moved = None
        if momentum is not None:        # P H_{e,s} u for each example (S fields at a time), pushed; then per pair
            u = {k: t.expand(n_sources, *t.shape) for k, t in momentum.items()}
            ii, jj = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
            pushed_h, kept_h = [], []
            for e in range(n):
                h = times_p(_chunked(lambda v, w: hvps(params, inputs[e:e + 1], targets[e:e + 1], v, w), [u, sel],
                                     tangents_per_call))                                     # [S, ...]
                pushed_h.append(push_all({k: t[None] for k, t in h.items()})[0])
                kept_h.append({k: t.detach() for k, t in h.items()} if keep_parameter_space else None)
            pushed_h = torch.stack(pushed_h)                                                   # [N, S, batch, outputs]
            moved = pushed_h[jj] - pushed_h[ii]                                                # [pairs, S, batch, outputs]
            if keep_parameter_space:
                h = stack_fields(kept_h)
                kept_moved = {k: t[jj] - t[ii] for k, t in h.items()}

    def stacked(rows):
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]} if rows else None

    return SourceBrackets(n=n, sources=names, pushforward=torch.cat(pushed) if source_part else None,
                          first_order=first_order,
                          self_pushforward=torch.cat(self_pushed) if self_part else None,
                          parameter_space=stacked(kept) if keep_parameter_space and source_part else None,
                          self_parameter_space=stacked(self_kept) if keep_parameter_space and self_part else None,
                          pairs=pairs, momentum_pushforward=moved,
                          momentum_parameter_space=kept_moved if keep_parameter_space else None)


def adam_source_brackets(model, loss_fn, inputs, targets, batch, state, **kw) -> SourceBrackets:
    """Adam's split (module docstring) at the frozen state `state` (engine.adam.AdamState, t ≥ 1): self_pushforward
    J·D^A_s, momentum_pushforward J·M_s, first_order −J·P g_{e,s}; with source_part=True also pushforward, the
    preconditioned source parts P(H_j P g_{i,s} − H_i P g_{j,s}). Adam's bracket of the source-s fields is
    adam_self_part(r, state); other arguments as source_brackets'. Cost: the SGD self parts' products plus N·S."""
    p = state.preconditioner()
    return source_brackets(model, loss_fn, inputs, targets, batch, self_part=True, precondition=p,
                           momentum={k: p[k] * m for k, m in state.m.items()}, **{"source_part": False, **kw})


def adam_self_part(r: SourceBrackets, state) -> torch.Tensor:
    """[pairs, sources, batch, outputs]: J·𝔅_s = (1−β1)·J·D^A_s + β1·J·M_s, Adam's bracket of each source's fields."""
    beta1 = state.betas[0]
    return (1 - beta1) * r.self_pushforward + beta1 * r.momentum_pushforward


# ----------------------------------------------------------------------------- readouts


def source_magnitude(parts: torch.Tensor, outputs=None) -> torch.Tensor:
    """[pairs or examples, sources, batch, outputs] -> [sources]: RMS over the batch and the chosen `outputs`
    (all by default), then the median over pairs (examples).

    Both steps are positively homogeneous, so a part scaled by c has its magnitude scaled by exactly c:
    the dose's known answers carry over to this readout unchanged.
    """
    parts = parts if outputs is None else parts[..., list(outputs)]
    return parts.double().pow(2).mean(dim=(2, 3)).sqrt().median(dim=0).values
