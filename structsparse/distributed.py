"""Sharded training: exact *global* group reductions under FSDP2 (and plain DDP).

A split grouping (dim 0 among its norm dims) all-reduces per-group partial sums inside
:func:`tensor_scope` (:func:`group_sum`, :func:`group_max`, :func:`reduce_groups`, :func:`batched`);
aligned groupings communicate nothing; the fused solvers redistribute split buckets to whole-group
owners (:func:`owned_groups`, :func:`owned_bucket`). Never an all-gather of parameters;
:func:`comm_stats` counts calls and bytes. The layout, the communication per step, the backends'
sharded paths and the measurements: docs/distributed.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

try:  # DTensor is public from torch 2.5
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]
    Shard = None  # type: ignore[assignment,misc]

__all__ = [
    "ShardInfo",
    "is_sharded",
    "check_param",
    "sharded_bucket",
    "tensor_scope",
    "shard_info",
    "all_reduce_sums",
    "split_group",
    "owned_groups",
    "owned_bucket",
    "release_buffers",
    "global_shape",
    "group_sum",
    "group_max",
    "tensor_sum",
    "reduce_groups",
    "batched",
    "comm_stats",
    "zero_groups",
    "count_zeros",
    "reset_comm_stats",
    "init_from_env",
    "shard_model",
    "rank_slice",
    "broadcast_buffers",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ShardInfo:
    """How one local shard relates to its global tensor."""

    global_shape: torch.Size
    group: Any  # torch.distributed ProcessGroup
    #: the grouping splits groups across ranks (partial sums must be all-reduced)
    split: bool


# id(local tensor) -> ShardInfo, for the bucket being stepped
_scopes: dict[int, ShardInfo] = {}
_current: ShardInfo | None = None
# batched(): None, ("record", list) or ("replay", iterator)
_mode: tuple[str, Any] | None = None

_stats: dict[str, dict[str, int]] = {}


# -- communication ---------------------------------------------------------------------------------
def _all_reduce(t: Tensor, op: str, group: Any, purpose: str) -> Tensor:
    """The one place collectives are issued (counted in :func:`comm_stats`)."""
    st = _stats.setdefault(purpose, {"calls": 0, "bytes": 0})
    st["calls"] += 1
    st["bytes"] += t.numel() * t.element_size()
    t = t.contiguous()
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)
    return t


def comm_stats() -> dict[str, dict[str, int]]:
    """Collectives issued by structsparse since :func:`reset_comm_stats`, by purpose
    (``"groups"``: group reductions of the steps; ``"finite"``: the non-finite check; ``"metrics"``)."""
    return {k: dict(v) for k, v in _stats.items()}


def reset_comm_stats() -> None:
    _stats.clear()


# -- parameters ------------------------------------------------------------------------------------
def is_sharded(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor, the tensor itself otherwise."""
    return t.to_local() if is_sharded(t) else t


def _splits(view_shape: Callable[[Sequence[int]], tuple[int, int, int]], shape: Sequence[int]) -> bool:
    shape = tuple(shape)
    probe = (2, *shape[1:])  # dim 0 in the norm dims  <=>  the view's A or B takes dim 0
    a, _, b = view_shape(probe)
    return a > 1 or b > math.prod(shape[1:])


def splits_groups(reg: Any, shape: Sequence[int]) -> bool:
    """Whether ``reg``'s grouping puts elements of one group on several dim-0 shards."""
    return reg is not None and _splits(reg.view_shape, shape)


def _row_offset(p: Tensor) -> int:
    """First global row (dim 0) of this rank's shard."""
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        return int(compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)[1][0])
    except ImportError:  # pragma: no cover - torch.chunk's rule, as DTensor's Shard(0)
        n, w, r = p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank()
        return min(r * -(-n // w), n)


def zero_groups(w: Tensor, grouping: Any) -> Tensor:
    """Boolean ``[G]`` of the *global* tensor ``w`` (a dim-0 sharded DTensor): which groups are
    entirely zero. One all-reduce of ``G`` int32 (a collective: every rank must call it)."""
    from .grouping import group_view

    check_param(w, None, "metric")
    loc = w.to_local().detach()
    _, g, _ = group_view(grouping, w.shape)
    lv = group_view(grouping, loc.shape)
    x3 = loc.reshape(lv)
    nz = (x3 != 0).any(dim=2).any(dim=0) if x3.numel() else torch.zeros(lv[1], dtype=torch.bool)
    if _splits(lambda s: group_view(grouping, s), w.shape):
        counts = nz.to(torch.int32)
    else:  # whole groups are local: place them at their global offset
        per_row = g // w.shape[0] if w.shape[0] else 0
        off = _row_offset(w) * per_row
        counts = torch.zeros(g, dtype=torch.int32, device=loc.device)
        counts[off : off + nz.numel()] = nz.to(torch.int32)
    return _all_reduce(counts, "sum", _group_of(w), "metrics") == 0


def count_zeros(t: Tensor) -> int:
    """Exact zeros of a tensor; global (one all-reduce) for a sharded DTensor."""
    n = (local(t).detach() == 0).sum()
    if is_sharded(t):
        n = _all_reduce(n.reshape(1).to(torch.int64), "sum", _group_of(t), "metrics")
    return int(n.sum())


def _group_of(p: Tensor) -> Any:
    mesh = p.device_mesh
    return mesh.get_group() if mesh.ndim == 1 else None


def check_param(p: Tensor, reg: Any, where: str) -> None:
    """Raise ValueError for a sharded parameter this package cannot step exactly."""
    if not is_sharded(p):
        return
    if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
        raise ValueError(
            f"{where}: sharded parameter with placements {tuple(p.placements)} on a "
            f"{p.device_mesh.ndim}-D mesh; structsparse supports DTensor parameters sharded on dim 0 "
            "over a 1-D mesh (FSDP2's default fully_shard), or replicated parameters (DDP)"
        )
    if reg is not None and getattr(reg, "name", "") == "nuclear":
        raise ValueError(
            f"{where}: NuclearNorm needs the SVD of the whole matrix and cannot be applied to a "
            "dim-0 sharded parameter without gathering it; leave this module out of fully_shard "
            "(or use a group regularizer)"
        )


@contextmanager
def sharded_bucket(
    reg: Any, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
) -> Iterator[tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]]:
    """Local views of a bucket for the backend, with a :func:`tensor_scope` registered per sharded
    parameter. Scalar state (``step``, ``alpha``) advanced on the views is written back on exit.
    A bucket without DTensors is yielded unchanged."""
    if not any(is_sharded(p) for p in params):
        yield params, grads, states
        return
    lp, lg, ls = [], [], []
    for p, g, st in zip(params, grads, states):
        if not is_sharded(p):
            lp.append(p), lg.append(g), ls.append(st)
            continue
        check_param(p, reg, "param")
        if not is_sharded(g) or tuple(g.placements) != tuple(p.placements):
            raise ValueError(
                f"gradient of a sharded parameter must be a DTensor with its placements "
                f"{tuple(p.placements)}, got {type(g).__name__}"
            )
        loc = p.to_local()
        lp.append(loc)
        lg.append(g.to_local())
        ls.append({k: (v.to_local() if is_sharded(v) else v) for k, v in st.items()})
        _scopes[id(loc)] = ShardInfo(p.shape, _group_of(p), splits_groups(reg, p.shape))
    try:
        yield lp, lg, ls
    finally:
        for st, lst in zip(states, ls):
            if lst is not st:
                for k, v in lst.items():
                    if not isinstance(v, Tensor):
                        st[k] = v
        for loc in lp:
            _scopes.pop(id(loc), None)


def shard_info(t: Tensor) -> ShardInfo | None:
    """The :class:`ShardInfo` of a local shard of the bucket being stepped (registered by
    :func:`sharded_bucket`); None for any other tensor."""
    return _scopes.get(id(t))


def all_reduce_sums(sums: Tensor, group: Any) -> Tensor:
    """All-reduce (SUM) of a backend's per-group partial sums over ``group`` (counted under
    ``"groups"`` in :func:`comm_stats`, like the reference backend's reductions)."""
    return _all_reduce(sums, "sum", group, "groups")


def split_group(infos: Sequence[ShardInfo | None]) -> Any:
    """The one process group of a bucket's split shards (``infos``: :func:`shard_info` of each
    tensor); ValueError when they span several (a fused path would need one collective per group)."""
    groups = {id(i.group): i.group for i in infos if i is not None and i.split}
    if len(groups) > 1:
        raise ValueError(
            "a bucket's sharded parameters span several process groups; put them in separate param "
            "groups (or use backend='reference')"
        )
    return next(iter(groups.values()), None)


def _all_to_all(send: Tensor, send_sizes: list[int], recv: Tensor, recv_sizes: list[int], group: Any) -> None:
    """``all_to_all_single`` of byte buffers, counted in :func:`comm_stats` under
    ``"redistribute"`` (bytes: what this rank sends to the *other* ranks)."""
    me = dist.get_rank(group)
    st = _stats.setdefault("redistribute", {"calls": 0, "bytes": 0})
    st["calls"] += 1
    st["bytes"] += sum(n for r, n in enumerate(send_sizes) if r != me)
    dist.all_to_all_single(recv, send, recv_sizes, send_sizes, group=group)


# communication and work buffers of owned_groups(), kept across steps (grown to the largest bucket):
# a fused path allocates nothing proportional to the model per step
_buffers: dict[tuple[str, torch.device], Tensor] = {}


def release_buffers() -> None:
    """Free the redistribution buffers of :func:`owned_groups` (they are kept across steps, about
    twice the bytes one split bucket exchanges plus its work tensors; the next step reallocates)."""
    _buffers.clear()


def _buffer(name: str, nbytes: int, device: torch.device) -> Tensor:
    buf = _buffers.get((name, device))
    if buf is None or buf.numel() < nbytes:
        buf = _buffers[(name, device)] = torch.empty(max(nbytes, 8), dtype=torch.uint8, device=device)
    return buf


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


def _chunk_rows(rows: int, world: int) -> list[int]:
    """Rows of each rank under ``Shard(0)`` (torch.chunk's rule, FSDP2's layout: ⌈rows/world⌉ per
    rank, the last ones shorter or empty)."""
    c = -(-rows // world) if world else 0
    return [max(0, min(c, rows - r * c)) for r in range(world)]


@dataclass
class _Owned:
    """One split tensor of a bucket under :func:`owned_groups`."""

    index: int  # position in the bucket
    rows: list[int]  # R of each rank's local [R, G, K] view
    share: list[tuple[int, int]]  # groups [g0, g1) owned by each rank
    g: int
    k: int
    view: tuple[int, int, int]  # the op's [A, G_own, B] view of the owned tensors


@contextmanager
def owned_groups(
    reg: Any, lists: Sequence[Sequence[Tensor]], written: Sequence[int]
) -> Iterator[tuple[list[list[Tensor]], list[tuple[int, int, int]]]]:
    """Redistribution to whole-group owners, for solvers that iterate per group (RAMDA/ProxGen
    ``"pg"``/``"exact"``, ProxSSI on the ``cpu`` backend).

    ``lists`` are a bucket's per-element tensor lists (``lists[0]``: the local parameter shards of a
    :func:`sharded_bucket`, then gradients and state, in the same order). For every tensor whose
    groups are split across ranks, rank ``s`` becomes the owner of the groups
    :func:`rank_slice` ``(G, s, world)``: one ``all_to_all`` sends each owner the rows of its groups
    held here, of every list, and yields them as contiguous ``[A, G_s, B]`` tensors (all rows, the
    global view) with their views — the single-process kernel then runs on whole groups and computes
    bitwise what it computes on the full tensor. On exit a second ``all_to_all`` returns the
    ``written`` lists' updated rows to the ranks holding them. Aligned and plain tensors are yielded
    unchanged with ``reg.view_shape`` of their local shape.

    Bytes sent per rank and step, over the split tensors' local elements ``n``: ``n·(w−1)/w`` (groups
    spread evenly) times the summed element sizes of all lists (there) plus of the written lists
    (back) — e.g. 32 B·n·(w−1)/w for float32 RAMDA (5 lists there, 3 back). Never an all-gather. The
    send/receive/work buffers are kept across steps (:data:`_buffers`)."""
    params = lists[0]
    infos = [shard_info(p) for p in params]
    split = [
        i for i, info in enumerate(infos) if info is not None and info.split and info.global_shape.numel()
    ]
    views = [tuple(reg.view_shape(p.shape)) if reg is not None else (1, p.numel(), 1) for p in params]
    if not split:
        yield [list(x) for x in lists], views
        return
    group = split_group(infos)
    world, me = dist.get_world_size(group), dist.get_rank(group)
    device = params[split[0]].device
    owned: list[_Owned] = []
    for i in split:
        shape = infos[i].global_shape
        a, g, b = reg.view_shape(shape)
        rows = _chunk_rows(shape[0], world)
        if params[i].shape[0] != rows[me]:
            raise ValueError(
                f"param: local shard of {tuple(params[i].shape)} has {params[i].shape[0]} rows, expected "
                f"{rows[me]} of {shape[0]} (Shard(0) over {world} ranks, torch.chunk's layout)"
            )
        if a > 1:  # dim 0 is the view's A: R = rows·(A/rows), K = B
            r, k = [n * (a // shape[0]) for n in rows], b
        else:  # the whole tensor is one group (dim 0 in B): R = rows, K = B/rows
            r, k = rows, b // shape[0]
        share = [(s * g // world, (s + 1) * g // world) for s in range(world)]
        g_own = share[me][1] - share[me][0]
        owned.append(_Owned(i, r, share, g, k, (a, g_own, b)))
    dtypes = [[lst[o.index].dtype for o in owned] for lst in lists]
    # each list's local tensors as [R_me, G, K] (a view; a logical-order copy if non-contiguous)
    local3 = [[lst[o.index].contiguous().view(o.rows[me], o.g, o.k) for o in owned] for lst in lists]

    def nbytes(o: _Owned, src: int, dst: int, dt: torch.dtype) -> int:
        """Padded bytes of the rows held by rank src of the groups owned by rank dst."""
        g0, g1 = o.share[dst]
        return _pad8(o.rows[src] * (g1 - g0) * o.k * dt.itemsize)

    def exchange(which: Sequence[int], pieces: Callable[[int], Iterator[Tensor]], there: bool) -> Tensor:
        """One all_to_all: ``pieces(s)`` are the tensors for rank s (in (tensor, list) order);
        returns the receive buffer (by source rank, same order, 8-byte aligned pieces). This
        rank's own piece does not go through the buffers (see ``direct``)."""

        def total(src: int, dst: int) -> int:
            if src == dst:
                return 0
            return sum(nbytes(o, src, dst, dtypes[l][j]) for j, o in enumerate(owned) for l in which)

        send_sizes = [total(me, s) if there else total(s, me) for s in range(world)]
        recv_sizes = [total(s, me) if there else total(me, s) for s in range(world)]
        send = _buffer("send", sum(send_sizes), device)
        recv = _buffer("recv", sum(recv_sizes), device)
        pos = 0
        for s in range(world):
            if s == me:
                continue
            end = pos + send_sizes[s]
            for x in pieces(s):
                nb = x.numel() * x.element_size()
                send[pos : pos + nb].view(x.dtype).view(x.shape).copy_(x)
                pos += _pad8(nb)
            assert pos == end
        _all_to_all(send[:pos], send_sizes, recv[: sum(recv_sizes)], recv_sizes, group)
        return recv

    def unpack(recv: Tensor, targets: Callable[[int], Iterator[Tensor]]) -> None:
        pos = 0
        for s in range(world):
            if s == me:
                continue
            for x in targets(s):
                nb = x.numel() * x.element_size()
                x.copy_(recv[pos : pos + nb].view(x.dtype).view(x.shape))
                pos += _pad8(nb)

    # work tensors [R, G_own, K] (all rows of the owned groups) per list, carved from one buffer
    every = range(len(lists))
    spans = [
        [sum(o.rows) * o.view[1] * o.k * dtypes[l][j].itemsize for j, o in enumerate(owned)] for l in every
    ]
    wbuf = _buffer("work", sum(_pad8(n) for row in spans for n in row), device)
    work: list[list[Tensor]] = []
    pos = 0
    for l in every:
        row = []
        for j, o in enumerate(owned):
            n = spans[l][j]
            row.append(wbuf[pos : pos + n].view(dtypes[l][j]).view(sum(o.rows), o.view[1], o.k))
            pos += _pad8(n)
        work.append(row)

    def local_piece(s: int, ls: Sequence[int]) -> Iterator[Tensor]:  # my rows of s's groups
        for j, o in enumerate(owned):
            g0, g1 = o.share[s]
            for l in ls:
                yield local3[l][j][:, g0:g1]

    def owned_piece(s: int, ls: Sequence[int]) -> Iterator[Tensor]:  # rank s's rows of my groups
        for j, o in enumerate(owned):
            r0 = sum(o.rows[:s])
            for l in ls:
                yield work[l][j][r0 : r0 + o.rows[s]]

    def direct(ls: Sequence[int], there: bool) -> None:  # my rows of my groups: one copy
        for x, y in zip(local_piece(me, ls), owned_piece(me, ls)):
            (y if there else x).copy_(x if there else y)

    recv = exchange(every, lambda s: local_piece(s, every), there=True)
    direct(every, there=True)
    unpack(recv, lambda s: owned_piece(s, every))
    out = [list(x) for x in lists]
    for j, o in enumerate(owned):
        views[o.index] = o.view
        for l in every:
            out[l][o.index] = work[l][j]
    yield out, views
    recv = exchange(written, lambda s: owned_piece(s, written), there=False)
    direct(written, there=False)
    unpack(recv, lambda s: local_piece(s, written))
    for l in written:  # non-contiguous tensors were updated through a copy
        for j, o in enumerate(owned):
            t = lists[l][o.index]
            if not t.is_contiguous():
                t.copy_(local3[l][j].view(t.shape))


@contextmanager
def owned_bucket(
    reg: Any, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
) -> Iterator[tuple[Any, list[Tensor], list[Tensor], list[dict[str, Any]]]]:
    """A :func:`sharded_bucket`'s local views for a backend without shard support: the tensors whose
    groups span ranks are redistributed to whole-group owners (:func:`owned_groups`; the
    parameter, its gradient and every state tensor of its shape; all of them are sent back) and
    every tensor of the bucket is yielded as its ``[A, G, B]`` view with ``reg`` regrouped as
    ``"input"`` (the same groups), so that any backend steps whole groups with global group
    weights. Scalar state advanced on the yielded dicts is written back on exit. A bucket without
    split tensors is yielded unchanged."""
    split = [i for i, p in enumerate(params) if (f := shard_info(p)) is not None and f.split]
    if not split:
        yield reg, params, grads, states
        return
    keys = [
        k for k, v in states[split[0]].items() if isinstance(v, Tensor) and v.shape == params[split[0]].shape
    ]
    for i in range(len(params)):
        mine = [k for k, v in states[i].items() if isinstance(v, Tensor) and v.shape == params[i].shape]
        if mine != keys:
            raise ValueError(
                f"state: the bucket's tensors hold different per-element state ({mine} vs {keys}); "
                "cannot redistribute it to group owners"
            )
    lists = [params, grads] + [[st[k] for st in states] for k in keys]
    written = [0] + list(range(2, len(lists)))
    copies: list[tuple[Tensor, Tensor]] = []  # (non-contiguous written tensor, its contiguous copy)

    def view3(t: Tensor, v: tuple[int, int, int], write: bool = True) -> Tensor:
        c = t.contiguous()  # t itself when contiguous (owned tensors always are)
        if write and c is not t:
            copies.append((t, c))
        return c.view(v)

    with owned_groups(reg, lists, written) as (ls, views):
        out_p = [view3(t, v) for t, v in zip(ls[0], views)]
        out_g = [view3(t, v, write=False) for t, v in zip(ls[1], views)]
        out_s = []
        for i, st in enumerate(states):
            d = dict(st)
            for m, k in enumerate(keys):
                d[k] = view3(ls[2 + m][i], views[i])
            out_s.append(d)
        yield dataclasses.replace(reg, grouping="input"), out_p, out_g, out_s
        for t, c in copies:  # before owned_groups sends the owned tensors back
            t.copy_(c.view(t.shape))
    for st, d in zip(states, out_s):
        for k, v in d.items():
            if not isinstance(v, Tensor):
                st[k] = v


@contextmanager
def tensor_scope(param: Tensor) -> Iterator[None]:
    """Reductions inside refer to the groups of ``param`` (a local shard registered by
    :func:`sharded_bucket`); a no-op for an unregistered tensor."""
    global _current
    prev, _current = _current, _scopes.get(id(param))
    try:
        yield
    finally:
        _current = prev


def all_finite(grads: Sequence[Tensor], local_check: Callable[[list[Tensor]], bool]) -> bool:
    """``local_check`` on the local shards, agreed by every rank holding a sharded gradient."""
    ok = local_check([local(g) for g in grads])
    groups = {id(_group_of(g)): _group_of(g) for g in grads if is_sharded(g)}
    for grp in groups.values():
        flag = _all_reduce(torch.tensor([0.0 if ok else 1.0]), "max", grp, "finite")
        ok = bool(flag.item() == 0)
    return ok


# -- the hook --------------------------------------------------------------------------------------
def global_shape(shape: Sequence[int]) -> Sequence[int]:
    """The global shape of the tensor in scope (``shape`` itself outside a scope)."""
    return _current.global_shape if _current is not None else shape


def reduce_groups(partial: Tensor, op: str = "sum", *, whole: bool = False) -> Tensor:
    """Identity in a single process or for an aligned grouping; otherwise the all-reduce
    (``op`` ``"sum"`` or ``"max"``) of per-group partials over the shard's process group.
    ``whole=True``: ``partial`` reduces over *all* rows of the tensor (a layer-wise count, e.g.
    DessiLBI's support sizes), so it is all-reduced for every sharded tensor, aligned or not."""
    info = _current
    if info is None or not (info.split or whole):
        return partial
    if _mode is not None:
        kind, buf = _mode
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
    global _mode
    if not _scopes:
        return fn()
    rec: list[tuple[Tensor, str, Any]] = []
    _mode = ("record", rec)
    try:
        first = fn()
    finally:
        _mode = None
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
    _mode = ("replay", iter(reduced))
    try:
        return fn()
    finally:
        _mode = None


# -- data-parallel training helpers (examples/fsdp_train.py, ``structsparse train`` under torchrun) --
def init_from_env(backend: str = "gloo") -> tuple[int, int]:
    """``(rank, world size)``: of the default process group when one is initialized; else, when
    launched by ``torchrun`` with ``WORLD_SIZE > 1``, initialize it from torchrun's environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) with ``backend``; else ``(0, 1)``."""
    import os

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def exit_process() -> NoReturn:
    """End a data-parallel process that finished without error: a barrier (every rank done before
    gloo is torn down), ``destroy_process_group``, then ``os._exit(0)`` without finalizing the
    interpreter.

    The gloo process group outlives ``destroy_process_group`` while FSDP2 modules and DTensors
    still refer to it, and its worker thread may drop the last reference to a finished collective
    (the barrier's work, which holds FSDP2's all-gathers) only after the main thread has reached
    ``Py_Finalize``: the tensors' decref then takes the GIL from a finalizing interpreter, the
    thread is cancelled and the process aborts ("terminate called without an active exception",
    in a small fraction of runs). Files must be closed by the caller; stdout and stderr are
    flushed here."""
    import os
    import sys

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def shard_model(model: torch.nn.Module, device_type: str = "cpu") -> Any:
    """FSDP2 data parallelism over the default process group: ``fully_shard`` on every submodule
    that owns parameters directly (a Linear, a Conv2d, a BatchNorm: one all-gather per layer), then
    on the root. Every weight becomes a DTensor sharded on dim 0 (the layout this package steps
    exactly). Returns the 1-D device mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for m in model.modules():
        if m is not model and any(True for _ in m.parameters(recurse=False)):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous share ``[r·n//w, (r+1)·n//w)`` of ``n`` items (a global batch, a
    validation set); the shares of all ranks partition ``range(n)`` and differ by at most 1."""
    return slice(rank * n // world, (rank + 1) * n // world)


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Copy the buffers (BatchNorm running statistics: computed on each rank's slice of the batch)
    from rank ``src`` to every rank, as DDP does, so every rank holds the same model."""
    for b in model.buffers():
        dist.broadcast(b.data, src=src)
