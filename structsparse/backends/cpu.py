"""CPU backend: the fused C++ kernels of ``structsparse._C`` (csrc/cpu), one op call per bucket.

Same signatures as :mod:`.reference`. What the kernels do:

- every algorithm (RMDA, RAMDA ``"pg"``/``"exact"``, ProxSGD, ProxGen ``"pg"``/``"exact"``,
  ProxSSI) with no regularizer, GroupLasso on any grouping, L1, SparseGroupLasso, GroupMCP/MCP
  (the exact solves of the last three, the reference's rules, docs/solvers.md: SparseGroupLasso
  through GroupLasso's fused Newton on the soft-thresholded ``pz``, GroupMCP/MCP solve_rows.h
  ``row_exact_gmcp``);
- **NuclearNorm is declined** (:func:`supports`; its prox needs an SVD): the optimizers step its
  buckets on the reference backend;
- the PG solver stops **per group** (the reference's rule: ``(Q_prev − Q)/(|Q| + 1) < rtol`` after
  ≥ 2 iterations, or ``max_iters``; Q in float64 for every dtype; a group worse than its warm
  start gets the warm start back);
  Newton (in the Moré–Sorensen form; the rule, shared with the CUDA kernels, and its derivation
  are in csrc/include/structsparse/math.h) starts at the larger of two lower bounds of the root
  and stops per group after a step below ``NEWTON_ULPS`` ulps of r, or once an
  a-priori bound of the error left after its step is below that (``NEWTON_MAX_ITERS`` max): the
  same root as the reference's within rounding, often one pass fewer;
- float32/float64 parameters, and fp16/bf16 parameters with fp32 state (math in fp32, one
  rounding into the parameter per step); non-contiguous (e.g. channels_last) parameters and
  gradients of any rank are gathered per tile, not copied whole; a parameter that may hold two
  elements at one memory location (expanded, overlapping as_strided) is refused (ValueError);
- group norms: float32 squares are summed in float64 (no overflow for any finite weight); a
  float64 group whose sum of squares overflows (elements above ~1e154) takes the limit of an
  infinite norm (scale 1: exact to rounding unless the threshold is above ~1e138);
- FSDP2 shards (``supports_shards``): tensors whose groups are whole on the rank run unchanged;
  RMDA/ProxSGD/DessiLBI buckets with groups split across ranks run the ``*_step_sharded`` ops in
  two phases (state update + per-group partial sums; one all-reduce of ``G`` float64 per bucket;
  the prox); the solver steps (RAMDA, ProxGen, ProxSSI) of such buckets are redistributed to
  whole-group owners (``distributed.owned_groups``: one all_to_all there, the plain kernels on
  whole groups, one back — bitwise the single-process result); magnitude-scaled DessiLBI is
  declined (the reference backend steps it);
- multi-threaded with ``at::parallel_for`` (OpenMP, the extension is built with ``-fopenmp``) over
  tiles of whole groups whose size does not depend on the thread count, handed out dynamically:
  results are bit-identical for any ``torch.set_num_threads``;
- strided groups (``"input"`` grouping: a column of the ``[A, G, B]`` view) are never gathered:
  RMDA/ProxSGD/DessiLBI stream rows in memory order in two passes (state update + per-group
  partial sums, then the prox) over chunks of about 2^17 elements, so pass 2 reads from cache;
  the solvers (Newton, PG) iterate over a tile in row layout with per-group scalars, PG packing the
  groups still iterating;
- tile kernels compiled for baseline x86-64, AVX2+FMA and AVX-512; the best one the CPU supports is
  chosen at load (``torch.ops.structsparse.cpu_isa()``; override with
  ``STRUCTSPARSE_CPU_ISA=default|avx2|avx512``). No FMA contraction: all variants round alike;
  the solvers' state updates and Newton's terms write their multiply-adds as explicit fmas (math.h
  ``ss_fma``), the same rounding on every variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .. import distributed, ops
from ..regularizers import GroupLasso, Regularizer
from .encoding import encode, unsupported

#: FSDP2 shards (structsparse.distributed): tensors whose groups are whole on this rank run the
#: kernels unchanged; RMDA/ProxSGD/DessiLBI buckets with split groups run in two phases around one
#: all-reduce (:func:`_call`); the solver steps of such buckets run on whole-group owners
#: (distributed.owned_groups).
supports_shards = True


def available(op: str | None = None) -> tuple[bool, str]:
    """Every step op has its CPU kernel when the extension is loaded (``op`` is not needed)."""
    return ops.loaded()


def _has_split(params: Sequence[Tensor], reg: Regularizer | None) -> bool:
    """Whether some tensor of the bucket is a shard whose groups span ranks."""
    if reg is None:
        return False
    return any((i := distributed.shard_info(p)) is not None and i.split for p in params)


def _split_plan(
    params: Sequence[Tensor], reg: Regularizer | None
) -> tuple[list[int], list[float], Any] | None:
    """For a bucket with FSDP2 shards whose groups span ranks: (split flag per tensor, w_g of each
    tensor's *global* view, the process group); None when every group is whole on this rank."""
    if not _has_split(params, reg):
        return None
    infos = [distributed.shard_info(p) for p in params]
    group = distributed.split_group(infos)
    split, weights = [], []
    for p, i in zip(params, infos):
        a, _, b = reg.view_shape(i.global_shape if i is not None else p.shape)
        split.append(int(i is not None and i.split))
        weights.append(math.sqrt(max(a * b, 1)))
    return split, weights, group


def _call(name: str, params: Sequence[Tensor], reg: Regularizer | None, views: list[int], *args: Any) -> None:
    """``torch.ops.structsparse.<name>(*args)``; for a bucket with split shards, its ``_sharded``
    twin in two phases around one all-reduce of the per-group partial sums (float64, ``G`` per
    split tensor)."""
    plan = _split_plan(params, reg)
    if plan is None:
        getattr(torch.ops.structsparse, name)(*args)
        return
    split, weights, group = plan
    n = sum(views[3 * i + 1] for i, s in enumerate(split) if s)
    sums = torch.empty(n, dtype=torch.float64)
    op = getattr(torch.ops.structsparse, name + "_sharded")
    op(*args, split, weights, 1, sums)
    sums = distributed.all_reduce_sums(sums, group)
    op(*args, split, weights, 2, sums)


def supports(
    algorithm: str,
    reg: Regularizer | None,
    *,
    solver: str | None = None,
    magnitude_scaling: bool = False,
    device: torch.device | None = None,
) -> bool:
    """Whether this backend's kernels run a bucket of ``algorithm`` (``"rmda"``, ..., ``"dessilbi"``)
    with ``reg``: ``solver`` is the subproblem solver the step runs (``"exact"`` for ProxSSI),
    ``device`` the bucket's. The optimizers step the others on the reference backend.

    The same on CPU and CUDA (the CUDA kernels share these step functions and have every exact
    solve). Declined: NuclearNorm (an SVD); DessiLBI with magnitude scaling (its β needs the whole
    tensor's support counts first) or with a regularizer other than L1/GroupLasso."""
    enc = encode(reg)
    if enc is None:
        return False
    if algorithm == "dessilbi":
        return not magnitude_scaling and enc[0] in ("none", "group_lasso")
    return True


def _reg_args(reg: Regularizer | None) -> tuple[str, list[float]] | None:
    """(kind, [lam, lam2, omega]) for the op (:func:`.encoding.encode`), or None when the bucket
    goes to the reference."""
    return encode(reg)


def _views(params: Sequence[Tensor], reg: Regularizer | None) -> list[int]:
    out: list[int] = []
    for p in params:
        if reg is None:
            out += [1, p.numel(), 1]
        else:
            out += list(reg.view_shape(p.shape))
    return out


def _counts(steps: Sequence[Any]) -> list[Any]:
    """The step counters t for an op's ``SymInt[] steps``: under torch.compile they stay symbolic
    (``int()`` would specialize the graph on t and recompile it at every step)."""
    return [t if isinstance(t, torch.SymInt) else int(t) for t in steps]


def _flat(views: Sequence[Sequence[int]]) -> list[int]:
    return [int(x) for v in views for x in v]


def rmda_step(params, grads, anchors, grad_sums, *, steps, alphas, lr, c, reg) -> None:
    ra = _reg_args(reg)
    if ra is None:
        raise unsupported("cpu", "rmda", reg)
    views = _views(params, reg)
    _call(
        "rmda_step",
        params,
        reg,
        views,
        list(params),
        list(grads),
        list(anchors),
        list(grad_sums),
        _counts(steps),
        [float(a) for a in alphas],
        views,
        float(lr),
        float(c),
        ra[0],
        ra[1],
    )


def ramda_step(
    params,
    grads,
    anchors,
    grad_sums,
    sq_grad_sums,
    *,
    steps,
    alphas,
    lr,
    c,
    eps,
    reg,
    solver,
    max_iters,
    rtol,
) -> None:
    ra = _reg_args(reg)
    if ra is None:
        raise unsupported("cpu", "ramda", reg)
    lists = [params, grads, anchors, grad_sums, sq_grad_sums]
    with distributed.owned_groups(reg, lists, written=(0, 3, 4)) as (ls, views):
        torch.ops.structsparse.ramda_step(
            *ls,
            _counts(steps),
            [float(a) for a in alphas],
            _flat(views),
            float(lr),
            float(c),
            float(eps),
            ra[0],
            ra[1],
            str(solver),
            int(max_iters),
            float(rtol),
        )


def proxsgd_step(params, grads, momentum_buffers, *, lr, c, reg) -> None:
    ra = _reg_args(reg)
    if ra is None:
        raise unsupported("cpu", "proxsgd", reg)
    views = _views(params, reg)
    _call(
        "proxsgd_step",
        params,
        reg,
        views,
        list(params),
        list(grads),
        list(momentum_buffers),
        views,
        float(lr),
        float(c),
        ra[0],
        ra[1],
    )


def proxgen_step(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    steps,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    reg,
    solver,
    max_iters,
    rtol,
) -> None:
    ra = _reg_args(reg)
    if ra is None:
        raise unsupported("cpu", "proxgen", reg)
    with distributed.owned_groups(reg, [params, grads, exp_avgs, exp_avg_sqs], written=(0, 2, 3)) as (
        ls,
        views,
    ):
        torch.ops.structsparse.proxgen_step(
            *ls,
            _counts(steps),
            _flat(views),
            float(lr),
            float(beta1),
            float(beta2),
            float(eps),
            float(weight_decay),
            ra[0],
            ra[1],
            str(solver),
            int(max_iters),
            float(rtol),
        )


def proxssi_step(
    params, grads, exp_avgs, exp_avg_sqs, *, steps, lr, beta1, beta2, eps, weight_decay, reg
) -> None:
    ra = _reg_args(reg)
    if ra is None:
        raise unsupported("cpu", "proxssi", reg)
    with distributed.owned_groups(reg, [params, grads, exp_avgs, exp_avg_sqs], written=(0, 2, 3)) as (
        ls,
        views,
    ):
        torch.ops.structsparse.proxssi_step(
            *ls,
            _counts(steps),
            _flat(views),
            float(lr),
            float(beta1),
            float(beta2),
            float(eps),
            float(weight_decay),
            ra[0],
            ra[1],
        )


def dessilbi_step(
    params,
    grads,
    momentum_buffers,
    zs,
    gammas,
    *,
    lr,
    kappa,
    nu,
    momentum,
    weight_decay,
    reg,
    magnitude_scaling=False,
    scaling_floor=0.0,
) -> None:
    """DessiLBI (docs/math.md §6): one fused pass per tensor for L1 and GroupLasso on any grouping and for
    unpaired tensors (``reg=None``). **magnitude_scaling=True is declined** (:func:`supports`; its β
    needs the whole tensor's support counts before the Z update): the optimizers step it on reference."""
    if magnitude_scaling or not (reg is None or isinstance(reg, GroupLasso)):
        raise unsupported("cpu", "dessilbi", reg, " (or magnitude_scaling=True)" if magnitude_scaling else "")
    ra = _reg_args(reg)
    views = _views(params, reg)
    _call(
        "dessilbi_step",
        params,
        reg,
        views,
        list(params),
        list(grads),
        list(momentum_buffers),
        list(zs),
        list(gammas),
        views,
        float(lr),
        float(kappa),
        float(nu),
        float(momentum),
        float(weight_decay),
        ra[0],
        ra[1],
    )
