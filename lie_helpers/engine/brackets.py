"""The bracket engine: per-example gradient fields, their Lie brackets, and swap differences.

Every training example x is a vector field on parameter space, v(x)(θ) = −∇θ L(x; θ).
The Lie bracket of two such fields is

    [v(x), v(y)] = (v(x)·∇) v(y) − (v(y)·∇) v(x) = H_y g_x − H_x g_y,

with g = ∇L and H = ∇²L of one example. It is the leading term of how much the order of
two SGD steps matters: swap_difference(x, y, lr) = θ_xy − θ_yx = lr² [v(x), v(y)] + O(lr³).

Conventions (docs/design.md §2):
- an example is (inputs, targets) with a leading batch dimension of 1, and its loss is
  loss_fn(model(inputs), targets), a scalar;
- fields and brackets are dicts name -> tensor keyed like model.named_parameters(), over the
  trainable parameters only: a parameter with requires_grad=False is held fixed, as an
  optimizer would, so it is no coordinate of the fields (no entry in a gradient, a bracket or
  a swap difference, and swap_difference never moves it);
- BatchNorm uses running statistics (bn_mode="eval") unless bn_mode="train", which gives
  each example its own batch statistics; TF32 is off; the model's parameters, buffers and
  train/eval mode are never changed.

Two implementations on purpose: `lie_bracket` is the plain double-backward formula (one
pair at a time, easy to audit, "the naive way"); `bracket_matrix` computes all pairs of N
examples with N gradients and the N(N−1) Hessian-vector products in one vmapped call, and
is verified against `lie_bracket` in the tests.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from .numerics import tf32

# PyTorch's first forward-mode AD call scripts its jvp decompositions with the deprecated
# torch.jit.script and warns about it; that is PyTorch's business, not the caller's.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

Example = tuple  # (inputs, targets), each with a leading batch dimension of 1
Params = dict  # name -> tensor, keyed like model.named_parameters()

BN_MODES = ("eval", "train")


# ----------------------------------------------------------------------------- set-up


@contextlib.contextmanager
def bracket_mode(model: nn.Module, bn_mode: str = "eval"):
    """Put `model` in the mode the fields are defined in, TF32 off; restore everything on exit.

    "eval": every module in eval mode, BatchNorm uses its running statistics.
    "train": BatchNorm normalises with the statistics of the example itself and its running
    statistics are detached for the duration, so they are neither used nor updated; every
    other module stays in eval mode (no dropout noise in a field).
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}.")
    modes = {m: m.training for m in model.modules()}
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_stats = [(m.running_mean, m.running_var, m.track_running_stats) for m in batch_norms]
    try:
        model.eval()
        if bn_mode == "train":
            for m in batch_norms:
                m.train()
                m.running_mean, m.running_var, m.track_running_stats = None, None, False
        with tf32(False):
            yield
    finally:
        for m, (mean, var, track) in zip(batch_norms, saved_stats):
            m.running_mean, m.running_var, m.track_running_stats = mean, var, track
        for m, was_training in modes.items():
            m.training = was_training


def parameters_of(model: nn.Module) -> Params:
    """The model's trainable parameters (requires_grad) as a dict of detached tensors: the point θ the fields
    are taken at. Frozen parameters stay in the model, held fixed (functional_call uses them as they are)."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (requires_grad=True): "
                         "there is no field to take a bracket of.")
    return params


def check_example(example, name: str = "example", params: Params | None = None, *, batch: bool = False) -> Example:
    """Validate an (inputs, targets) pair with a leading batch dimension of 1 (any size with `batch`)."""
    if not (isinstance(example, (tuple, list)) and len(example) == 2
            and all(isinstance(t, torch.Tensor) for t in example)):
        raise TypeError(f"{name} must be a pair (inputs, targets) of tensors.")
    for part, tensor in zip(("inputs", "targets"), example):
        if tensor.dim() == 0 or (tensor.shape[0] != 1 and not batch):
            raise ValueError(
                f"{name} {part} has shape {tuple(tensor.shape)}: an example needs a leading batch "
                f"dimension of 1 (use t[None] or t[i:i+1]).")
    if example[0].shape[0] != example[1].shape[0]:
        raise ValueError(f"{name} has {example[0].shape[0]} inputs but {example[1].shape[0]} targets.")
    if params is not None:
        dtype = next(iter(params.values())).dtype
        if example[0].is_floating_point() and example[0].dtype != dtype:
            raise ValueError(f"{name} inputs are {example[0].dtype} but the model is {dtype}: convert one.")
    return tuple(example)


def check_pair(example_x, example_y, params: Params, *, batch: bool = False) -> tuple[Example, Example]:
    x = check_example(example_x, "example_x", params, batch=batch)
    y = check_example(example_y, "example_y", params, batch=batch)
    for part, a, b in zip(("inputs", "targets"), x, y):
        if a.shape[1:] != b.shape[1:] or (a.shape != b.shape and not batch):
            raise ValueError(f"example_x and example_y {part} have different shapes: "
                             f"{tuple(a.shape)} and {tuple(b.shape)}.")
    return x, y


def example_loss(model: nn.Module, loss_fn: Callable) -> Callable:
    """θ, inputs, targets -> the scalar loss at parameters θ (a pure function for torch.func)."""
    def loss_at(params: Params, inputs, targets):
        loss = loss_fn(functional_call(model, params, (inputs,)), targets)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss_fn must return a tensor (a scalar that depends on the outputs), got "
                            f"{type(loss).__name__}: do not call .item() or float() on the loss.")
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)} "
                             "(use reduction='mean' or 'sum').")
        return loss
    return loss_at


# ----------------------------------------------------------------------------- dict arithmetic


def axpy(a: float, x: Params, y: Params) -> Params:
    """a·x + y, name by name."""
    return {n: a * x[n] + y[n] for n in y}


def detached(field_: Params) -> Params:
    return {n: t.detach() for n, t in field_.items()}


def stack(fields: list[Params]) -> Params:
    return {n: torch.stack([f[n] for f in fields]) for n in fields[0]}


def field_norm(field_: Params) -> float:
    """Euclidean norm of a field, as if its tensors were one flat vector."""
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in field_.values()))


def relative_error(approx: Params, exact: Params) -> float:
    """‖approx − exact‖ / ‖exact‖ over all tensors of two fields.

    Against a zero `exact` there is no scale: 0.0 when `approx` is zero too, else inf (never a
    division by zero, never NaN).
    """
    difference = field_norm({n: approx[n] - exact[n] for n in exact})
    scale = field_norm(exact)
    if scale == 0:
        return 0.0 if difference == 0 else math.inf
    return difference / scale


def rms_per_tensor(field_: Params) -> dict[str, float]:
    """Root-mean-square of each tensor of a field: the write-up's per-tensor summary."""
    return {n: t.detach().double().pow(2).mean().sqrt().item() for n, t in field_.items()}


# ----------------------------------------------------------------------------- fields


def gradient(model: nn.Module, loss_fn: Callable, example: Example, *, bn_mode: str = "eval",
             batch: bool = False) -> Params:
    """g = ∇θ L(example); the example's field is v = −g (batch: a minibatch's loss, see lie_bracket)."""
    params = parameters_of(model)
    inputs, targets = check_example(example, params=params, batch=batch)
    with bracket_mode(model, bn_mode):
        return grad(example_loss(model, loss_fn))(params, inputs, targets)


def hessian_vector_products(loss_at: Callable, bn_mode: str) -> Callable:
    """(θ, inputs, targets, v) -> H_k(θ)·v_k for K examples and K tangents at once.

    inputs, targets and every tensor of v have a leading dimension K; inputs[k] and
    targets[k] are the k-th example (with its own batch dimension of 1).
    bn_mode "eval": reverse-over-forward, the gradient of the directional derivative
    ⟨∇L, v⟩, vmapped over examples and tangents together. On the CPU it was the fastest
    way for MXResNet (0.6-0.85x the time of reverse-over-reverse): it needs no double
    backward of convolutions (slow kernels on the CPU), and unlike forward-over-reverse it
    works for every loss (forward AD of mse_loss's backward fails in PyTorch 2.14).
    bn_mode "train": reverse-over-reverse (a vector-Jacobian product of the gradient; H is
    symmetric), one example at a time: forward AD through train-mode BatchNorm gives wrong
    second derivatives in PyTorch 2.14 (27% off in tests/test_brackets.py), and its double
    backward cannot be vmapped over examples.
    """
    if bn_mode == "train":
        def one(params, inputs, targets, v):
            return vjp(lambda p: grad(loss_at)(p, inputs, targets), params)[1](v)[0]

        def each(params, inputs, targets, v):
            return stack([one(params, inputs[k], targets[k], {n: t[k] for n, t in v.items()})
                          for k in range(inputs.shape[0])])
        return each

    def directional_derivative(params, inputs, targets, v):
        return jvp(lambda p: loss_at(p, inputs, targets), (params,), (v,))[1]
    return vmap(grad(directional_derivative), in_dims=(None, 0, 0, 0))


def hvp(model: nn.Module, loss_fn: Callable, example: Example, vector: Params, *,
        bn_mode: str = "eval", batch: bool = False) -> Params:
    """H·vector, the Hessian of the example's loss (batch: a minibatch's loss) times `vector`."""
    params = parameters_of(model)
    inputs, targets = check_example(example, params=params, batch=batch)
    if vector.keys() != params.keys():
        raise ValueError("vector must have the same keys as the model's trainable parameters (parameters_of).")
    with bracket_mode(model, bn_mode):
        products = hessian_vector_products(example_loss(model, loss_fn), bn_mode)
        product = products(params, inputs[None], targets[None], {k: t[None] for k, t in vector.items()})
    return {k: t[0].detach() for k, t in product.items()}  # train-mode BatchNorm leaves a graph


def lie_bracket(model: nn.Module, loss_fn: Callable, example_x: Example, example_y: Example, *,
                bn_mode: str = "eval", batch: bool = False) -> Params:
    """[v(x), v(y)] = H_y g_x − H_x g_y, by plain double backward.

    One backward pass through both gradient graphs: H_y g_x − H_x g_y is the gradient of
    ⟨g_y(θ), g_x⟩ − ⟨g_x(θ), g_y⟩ with the right-hand factors held constant.
    batch: x and y are minibatches (any leading size) whose fields are those of their batch
    losses, as an SGD step on the minibatch sees them.
    """
    params = parameters_of(model)
    (xi, xt), (yi, yt) = check_pair(example_x, example_y, params, batch=batch)
    loss_at = example_loss(model, loss_fn)
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    names, tensors = list(leaves), list(leaves.values())
    with bracket_mode(model, bn_mode), torch.enable_grad():
        gx = torch.autograd.grad(loss_at(leaves, xi, xt), tensors, create_graph=True, allow_unused=True,
                                 materialize_grads=True)
        gy = torch.autograd.grad(loss_at(leaves, yi, yt), tensors, create_graph=True, allow_unused=True,
                                 materialize_grads=True)
        pairing = sum((b * a.detach()).sum() - (a * b.detach()).sum() for a, b in zip(gx, gy))
        bracket = torch.autograd.grad(pairing, tensors, allow_unused=True, materialize_grads=True)
    return detached(dict(zip(names, bracket)))


def swap_difference(model: nn.Module, loss_fn: Callable, example_x: Example, example_y: Example,
                    lr: float, *, bn_mode: str = "eval", batch: bool = False) -> Params:
    """θ_xy − θ_yx: plain SGD steps (θ ← θ − lr·∇L) on x then y, minus on y then x.

    Equals lr²·lie_bracket(x, y) + O(lr³); exactly so for quadratic losses. Use float64:
    the difference of two nearly equal parameter vectors loses the float32 digits.
    batch: x and y are minibatches (see lie_bracket).
    """
    params = parameters_of(model)
    x, y = check_pair(example_x, example_y, params, batch=batch)
    grad_at = grad(example_loss(model, loss_fn))

    def step(displacement, example):
        # Track θ + δ through δ alone: subtracting two whole parameter vectors would cost
        # ‖θ‖/‖δ‖ in relative round-off.
        at = {n: params[n] + displacement[n] for n in params}
        return axpy(-lr, grad_at(at, *example), displacement)

    zero = {n: torch.zeros_like(p) for n, p in params.items()}
    with bracket_mode(model, bn_mode):
        delta_xy = step(step(zero, x), y)
        delta_yx = step(step(zero, y), x)
    return {n: delta_xy[n] - delta_yx[n] for n in params}


def pushforward(model: nn.Module, inputs: torch.Tensor, direction: Params, *,
                bn_mode: str = "eval") -> torch.Tensor:
    """The change of model(inputs) when θ moves along `direction` (a Jacobian-vector product).

    Pushing a bracket forward shows its effect on every output of a fixed batch.
    """
    params = parameters_of(model)
    with bracket_mode(model, bn_mode):
        return jvp(lambda p: functional_call(model, p, (inputs,)), (params,), (direction,))[1]


# ----------------------------------------------------------------------------- all pairs at once


@dataclass
class BracketMatrix:
    """All pairwise brackets among N examples, each reduced as soon as it was complete.

    brackets[(i, j)] for i < j is reduce([v_i, v_j]) (the bracket dict itself by default);
    [v_j, v_i] = −[v_i, v_j]. gradients[i] is reduce_gradient(∇L_i).
    """
    n: int
    brackets: dict = field(default_factory=dict)
    gradients: list = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.n) for j in range(i + 1, self.n)]


# Parameter count above which, on the CPU, `bracket_matrix` computes row by row with plain
# autograd: vmapping over examples and tangents turns the tangent convolutions into grouped
# convolutions, slow on the CPU for wide layers (measured on MXResNet18, 2-core CPU:
# width 0.25 / 32 px, 0.7 M parameters: vmap 0.30x the naive time, rows 0.78x;
# width 1 / 64 px, 11.2 M parameters: vmap 6.6x, rows 0.85x).
ROWS_ABOVE_PARAMETERS_ON_CPU = 2_000_000


# Pairs in one vmapped call of `bracket_matrix` unless the caller says otherwise: the memory
# bound (see bracket_matrix). 32 keeps the default 6 examples (15 pairs) in one call, as before,
# and N = 64 (2,016 pairs) in 63 calls.
PAIRS_PER_CALL = 32


def pair_chunks(pairs: list[tuple[int, int]], pairs_per_call: int) -> list[list[tuple[int, int]]]:
    """`pairs` in consecutive chunks of `pairs_per_call`: the vmapped calls of `bracket_matrix`, in order.

    Processes that share the pairs of one checkpoint take whole chunks of BracketMatrix(n).pairs,
    so each makes exactly the calls one process makes (lie_helpers.distributed).
    """
    return [pairs[start:start + pairs_per_call] for start in range(0, len(pairs), pairs_per_call)]


def brackets_vmapped(loss_at, params, inputs, targets, bn_mode, pairs, pairs_per_call, tangents_of=None, scale=None):
    """Gradients, then (pair, bracket) as each chunk of vmapped Hessian-vector products returns.

    SGD's bracket is H_j g_i − H_i g_j. Another optimizer's differs by the tangents (`tangents_of` maps the stacked
    gradients to them, as Adam's w_i) and a diagonal factor on the result (`scale`, as Adam's P): scale·(H_j w_i − H_i w_j).
    """
    products = hessian_vector_products(loss_at, bn_mode)
    gradients = vmap(grad(loss_at), in_dims=(None, 0, 0))(params, inputs[:, None], targets[:, None])
    yield [{k: t[i] for k, t in gradients.items()} for i in range(inputs.shape[0])]
    tangents = tangents_of(gradients) if tangents_of else gradients
    for chunk in pair_chunks(pairs, pairs_per_call):
        # Products 2k and 2k+1 are H_j g_i and H_i g_j (or H_j w_i and H_i w_j) for the k-th pair (i, j).
        example = torch.tensor([e for i, j in chunk for e in (j, i)], device=inputs.device)
        tangent = torch.tensor([t for i, j in chunk for t in (i, j)], device=inputs.device)
        hvps = detached(products(params, inputs[example][:, None], targets[example][:, None],
                                 {k: t[tangent] for k, t in tangents.items()}))
        for k, pair in enumerate(chunk):
            yield pair, {name: (scale[name] if scale else 1) * (t[2 * k] - t[2 * k + 1]) for name, t in hvps.items()}


def brackets_by_rows(loss_at, params, inputs, targets, pairs):
    """Gradients, then (pair, bracket) in the order of `pairs`: one double-backward graph per example.

    N graph builds and N(N−1) backward sweeps, against 2 builds and 2 sweeps per pair for
    the naive way. Both products of a pair come from the two examples' graphs at once, so
    beside the graphs only one bracket is held at a time (holding H_i g_j until H_j g_i
    came would hold up to N²/4 parameter-sized products); a graph is built only for an example
    of `pairs` and freed after its last pair.
    """
    n = inputs.shape[0]
    last_pair = {e: k for k, pair in enumerate(pairs) for e in pair}
    leaves = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    names, tensors = list(leaves), list(leaves.values())
    with torch.enable_grad():
        graphs = [torch.autograd.grad(loss_at(leaves, inputs[j:j + 1], targets[j:j + 1]), tensors,
                                      create_graph=True, materialize_grads=True) for j in range(n)]
        gradients = [[g.detach() for g in graph] for graph in graphs]
        graphs = [graph if j in last_pair else None for j, graph in enumerate(graphs)]
        yield [dict(zip(names, g)) for g in gradients]

        def product(j, i):  # H_j g_i
            return torch.autograd.grad(graphs[j], tensors, grad_outputs=gradients[i], retain_graph=True,
                                       allow_unused=True, materialize_grads=True)
        for k, (i, j) in enumerate(pairs):
            yield (i, j), {name: a - b for name, a, b in zip(names, product(j, i), product(i, j))}
            for e in (i, j):
                if last_pair[e] == k:
                    graphs[e] = None  # example e's last pair is done


def bracket_matrix(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor, *,
                   reduce: Callable | None = None, reduce_gradient: Callable | None = None,
                   bn_mode: str = "eval", method: str = "auto",
                   pairs_per_call: int | None = None, pairs: list | None = None) -> BracketMatrix:
    """All N(N−1)/2 brackets among the examples (inputs[i:i+1], targets[i:i+1]), with the least work.

    method "vmap": N per-example gradients (one vmapped call), then the N(N−1)
    Hessian-vector products H_j g_i (i ≠ j), vmapped over examples and tangents together,
    c = `pairs_per_call` pairs per call (default PAIRS_PER_CALL), so memory is bounded whatever N:
    bytes ≈ s·P·(N + 4c) + 2c·A, with s bytes per number, P parameters, N gradients, the 2c
    tangents and 2c products of one call, and A one example's working memory of a
    reverse-over-forward product (its activations and their tangents). Default model
    (P = 0.71 M, float32), c = 32: 0.36 GB of products and tangents, 0.18 GB of gradients at
    N = 64; measured peak growth on the CPU 0.9-1.1 GiB for N = 16-64, against 2 GiB for N = 16's
    120 pairs in one call (benchmarks/bench_many_examples.py).
    method "rows": plain autograd, one double-backward graph per example (brackets_by_rows):
    memory holds N graphs and one bracket, whatever `pairs_per_call`.
    method "auto": "rows" on the CPU for models above ROWS_ABOVE_PARAMETERS_ON_CPU
    parameters, else "vmap" (see that constant for the measurements).
    Each bracket [v_i, v_j] = H_j g_i − H_i g_j is handed to `reduce` (e.g. per-tensor RMS,
    a pushforward onto logits) as soon as it is complete, then dropped, so no caller needs
    all N² full brackets in memory.
    pairs: compute only these (i < j), in this order (default: every pair, BracketMatrix.pairs);
    `brackets` then holds only them. A share of whole chunks (pair_chunks of every pair) makes
    the very vmapped calls of the whole matrix, so on the CPU its brackets are those bits.
    """
    params = parameters_of(model)
    n, pairs, pairs_per_call, method = matrix_request("bracket_matrix", params, inputs, targets, pairs,
                                                      pairs_per_call, method)
    loss_at = example_loss(model, loss_fn)
    if method == "vmap":
        stream = brackets_vmapped(loss_at, params, inputs, targets, bn_mode, pairs, pairs_per_call)
    else:
        stream = brackets_by_rows(loss_at, params, inputs, targets, pairs)
    return collect_matrix(model, bn_mode, n, stream, reduce, reduce_gradient)


def matrix_request(name: str, params: Params, inputs, targets, pairs, pairs_per_call, method: str):
    """(N, pairs, pairs_per_call, method) of a matrix of brackets among N examples, checked, with method "auto"
    resolved ("rows" for a large model on the CPU, else "vmap"): bracket_matrix and engine.adam's matrix share it."""
    pairs_per_call = checked_pairs_per_call(pairs_per_call)
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs and targets hold different numbers of examples: "
                         f"{inputs.shape[0]} and {targets.shape[0]}.")
    n = inputs.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs at least 2 examples, got {n}.")
    check_example((inputs[:1], targets[:1]), "inputs[0]", params)
    pairs = check_pairs(n, pairs)
    if method == "auto":
        large = sum(p.numel() for p in params.values()) > ROWS_ABOVE_PARAMETERS_ON_CPU
        method = "rows" if inputs.device.type == "cpu" and large else "vmap"
    if method not in ("vmap", "rows"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'rows', got {method!r}.")
    return n, pairs, pairs_per_call, method


def collect_matrix(model: nn.Module, bn_mode: str, n: int, stream, reduce=None, reduce_gradient=None) -> BracketMatrix:
    """A BracketMatrix from a stream of brackets (first the N gradients, then (pair, bracket) as each is complete),
    run in bracket_mode and reduced as it comes, so no full bracket outlives its reduction."""
    reduce = reduce or (lambda b: b)
    result = BracketMatrix(n)
    with bracket_mode(model, bn_mode):
        result.gradients = [(reduce_gradient or (lambda g: g))(g) for g in next(stream)]
        for pair, bracket in stream:
            result.brackets[pair] = reduce(bracket)
    return result


def checked_pairs_per_call(pairs_per_call) -> int:
    """`pairs_per_call` if it is a positive integer; None: PAIRS_PER_CALL."""
    if pairs_per_call is None:
        return PAIRS_PER_CALL
    if isinstance(pairs_per_call, bool) or not isinstance(pairs_per_call, int) or pairs_per_call < 1:
        raise ValueError(f"pairs_per_call must be a positive integer (or None: PAIRS_PER_CALL = {PAIRS_PER_CALL}), "
                         f"got {pairs_per_call!r}.")
    return pairs_per_call


def check_pairs(n: int, pairs) -> list[tuple[int, int]]:
    """`pairs` as a list of distinct (i, j) with 0 <= i < j < n; None: every pair of n examples."""
    if pairs is None:
        return BracketMatrix(n).pairs
    checked = [tuple(p) for p in pairs]
    bad = [p for p in checked if len(p) != 2 or not all(isinstance(e, int) for e in p) or not 0 <= p[0] < p[1] < n]
    if bad or len(set(checked)) != len(checked) or not checked:
        problem = f"{bad[0]!r} is not (i, j) with 0 <= i < j < {n}" if bad else "it is empty or repeats a pair"
        raise ValueError(f"pairs must be distinct pairs (i, j) of example indices with i < j: {problem}.")
    return checked
