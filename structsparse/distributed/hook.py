"""The reduction hook: per-group sums and maxima that are global over the shards of a parameter.

The reference backend and the regularizers reduce over a group's elements through
:func:`group_sum`, :func:`group_max`, :func:`tensor_sum` and :func:`batched`. In a single process
these are plain reductions. While a step of sharded buckets runs, a :class:`ReductionContext` —
created by the optimizer and handed to :func:`~structsparse.distributed.sharded_bucket`, which
registers each local shard in it and makes it the active context for the bucket — tells them which
tensor is being processed (:func:`tensor_scope`) and how its groups lie across ranks, and they
all-reduce the partial results. The regularizers' methods keep their signatures, so the hook
finds the active context rather than receiving it as an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from .comm import _all_reduce

T = TypeVar("T")


@dataclass(frozen=True)
class ShardInfo:
    """How one local shard relates to its global tensor."""

    global_shape: torch.Size
    group: Any  # torch.distributed ProcessGroup
    #: the grouping splits groups across ranks (partial sums must be all-reduced)
    split: bool


class ReductionContext:
    """The shards of the buckets being stepped and the reduction state of a step.

    ``scopes``: id(local shard) -> :class:`ShardInfo`, registered by ``sharded_bucket``;
    ``current``: the :class:`ShardInfo` of the tensor in :func:`tensor_scope` (None outside one);
    ``mode``: inside :func:`batched`, ``("record", list)`` or ``("replay", iterator)``."""

    __slots__ = ("scopes", "current", "mode")

    def __init__(self) -> None:
        self.scopes: dict[int, ShardInfo] = {}
        self.current: ShardInfo | None = None
        self.mode: tuple[str, Any] | None = None

    def register(self, local: Tensor, info: ShardInfo) -> None:
        """Make ``local`` (a shard's local tensor) known to the reductions of this context."""
        self.scopes[id(local)] = info

    def unregister(self, local: Tensor) -> None:
        self.scopes.pop(id(local), None)

    def clear(self) -> None:
        self.scopes.clear()
        self.current = None
        self.mode = None


# the context of the bucket being stepped (set by :func:`active`), None outside a sharded step
_active: ReductionContext | None = None


@contextmanager
def active(ctx: ReductionContext) -> Iterator[ReductionContext]:
    """Make ``ctx`` the context the reductions use while inside (restores the previous one)."""
    global _active
    prev, _active = _active, ctx
    try:
        yield ctx
    finally:
        _active = prev


def shard_info(t: Tensor) -> ShardInfo | None:
    """The :class:`ShardInfo` of a local shard of the bucket being stepped (registered by
    ``sharded_bucket``); None for any other tensor."""
    ctx = _active
    return ctx.scopes.get(id(t)) if ctx is not None else None


@contextmanager
def tensor_scope(param: Tensor) -> Iterator[None]:
    """Reductions inside refer to the groups of ``param`` (a local shard registered by
    ``sharded_bucket``); a no-op for an unregistered tensor."""
    ctx = _active
    if ctx is None:
        yield
        return
    prev, ctx.current = ctx.current, ctx.scopes.get(id(param))
    try:
        yield
    finally:
        ctx.current = prev


def _current() -> ShardInfo | None:
    ctx = _active
    return ctx.current if ctx is not None else None


def global_shape(shape: Sequence[int]) -> Sequence[int]:
    """The global shape of the tensor in scope (``shape`` itself outside a scope)."""
    info = _current()
    return info.global_shape if info is not None else shape


def reduce_groups(partial: Tensor, op: str = "sum", *, whole: bool = False) -> Tensor:
    """Identity in a single process or for an aligned grouping; otherwise the all-reduce
    (``op`` ``"sum"`` or ``"max"``) of per-group partials over the shard's process group.
    ``whole=True``: ``partial`` reduces over *all* rows of the tensor (a layer-wise count, e.g.
    DessiLBI's support sizes), so it is all-reduced for every sharded tensor, aligned or not."""
    ctx = _active
    info = ctx.current if ctx is not None else None
    if info is None or not (info.split or whole):
        return partial
    if ctx.mode is not None:
        kind, buf = ctx.mode
        if kind == "record":
            buf.append((partial, op, info.group))
            return partial
        return next(buf)
    return _all_reduce(partial, op, info.group, "groups")


def group_sum(*t3s: Tensor, keepdim: bool = False) -> Any:
    """Per-group sums over dims 0 and 2 of ``[A, G, B]`` views (global under sharding). Several
    tensors are reduced in one collective; returns one tensor or a tuple.

    float32/half inputs are accumulated (and all-reduced) in float64 and rounded once: the result
    is then (almost always) the correctly rounded sum whatever the order, so a sharded run takes
    the same screening/threshold/stopping decisions as the single-process one."""
    dt = t3s[0].dtype
    acc = torch.float64 if dt in (torch.float32, torch.float16, torch.bfloat16) else dt
    sums = [t.sum(dim=(0, 2), keepdim=keepdim, dtype=acc) for t in t3s]
    if len(sums) == 1:
        return reduce_groups(sums[0]).to(dt)
    stacked = reduce_groups(torch.stack(sums)).to(dt)
    return tuple(stacked.unbind(0))


def tensor_sum(t: Tensor) -> Tensor:
    """Sum of all elements of ``t`` as a 1-element float64 tensor (exact for counts below 2⁵³),
    global over the shards of the tensor in scope whatever its grouping."""
    return reduce_groups(t.sum(dtype=torch.float64).reshape(1), whole=True)


def group_max(t3: Tensor) -> Tensor:
    """Per-group max over dims 0 and 2 (global under sharding); ``-inf`` for an empty local group."""
    if t3.shape[0] * t3.shape[2] == 0:
        m = t3.new_full((t3.shape[1],), -math.inf)
    else:
        m = t3.amax(dim=(0, 2))
    return reduce_groups(m, "max")


def batched(fn: Callable[[], T]) -> T:
    """Run ``fn`` — a pure function (no side effects) whose reductions do not steer its control
    flow, e.g. the prox of every tensor of a bucket — with all its group reductions in one
    all-reduce per (op, process group): ``fn`` runs once recording its partial sums, they are
    reduced together, and ``fn`` runs again consuming the reduced values. Outside sharding (or
    with aligned groupings only) ``fn`` just runs once."""
    ctx = _active
    if ctx is None or not ctx.scopes:
        return fn()
    rec: list[tuple[Tensor, str, Any]] = []
    ctx.mode = ("record", rec)
    try:
        first = fn()
    finally:
        ctx.mode = None
    if not rec:  # nothing to reduce (aligned groupings only): the first run is the result
        return first
    reduced: list[Tensor | None] = [None] * len(rec)
    keys: dict[tuple[str, int, torch.dtype], list[int]] = {}
    for i, (t, op, grp) in enumerate(rec):
        keys.setdefault((op, id(grp), t.dtype), []).append(i)
    for (op, _, _), idx in keys.items():
        flat = _all_reduce(torch.cat([rec[i][0].reshape(-1) for i in idx]), op, rec[idx[0]][2], "groups")
        for i, part in zip(idx, flat.split([rec[i][0].numel() for i in idx])):
            reduced[i] = part.view_as(rec[i][0])
    ctx.mode = ("replay", iter(reduced))
    try:
        return fn()
    finally:
        ctx.mode = None
