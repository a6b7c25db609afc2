"""All sources at the cost of the outputs read: the adjoint formulation of source_brackets (issue 19, part 1).

The forward formulation (lie_helpers.analysis.source_brackets) costs two Hessian-vector products and a batch
pushforward per (pair, source). A readout that looks at few batch logits can have every source at once by the
adjoint: H is symmetric, so for a direction u over the batch's logits,

    ⟨u, J_B S_k⟩ = ⟨H_j w_u, g_{i,k}⟩ − ⟨H_i w_u, g_{j,k}⟩,   w_u = J_Bᵀ u,   and ⟨u, J_B v_{x,k}⟩ = −⟨w_u, g_{x,k}⟩.

One Hessian-vector product per (example, direction), shared by every pair and source; the rest are inner
products with the stored per-source gradients. With u the unit vectors of some logits (`outputs`, every
batch image) the result is exact; with random Gaussian u it estimates the magnitude over all logits
(E (u·a)² = ‖a‖²). Self parts need the Hessian of each term: they are not available this way. Costs: the
source_brackets module docstring.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..engine.brackets import bracket_mode, check_example, check_pairs, parameters_of
from .source_brackets import (PUSH_PER_CALL, TANGENTS_PER_CALL, SourceBrackets, _chunked, per_call, source_layout,
                              source_terms)


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
