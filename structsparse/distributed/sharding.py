"""Sharded parameters: which FSDP2 layouts are stepped exactly, the local views of a bucket
(:func:`sharded_bucket`), the redistribution of split groups to whole-group owners
(:func:`owned_groups`, :func:`owned_bucket`) and the global metrics of sharded tensors."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .comm import _all_reduce, _all_to_all
from .hook import ReductionContext, ShardInfo, active, shard_info

try:  # DTensor is public from torch 2.5
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]
    Shard = None  # type: ignore[assignment,misc]


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
    from ..grouping import group_view

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
    reg: Any,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    ctx: ReductionContext | None = None,
) -> Iterator[tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]]:
    """Local views of a bucket for the backend, each sharded parameter's shard registered in
    ``ctx`` (the step's :class:`~structsparse.distributed.hook.ReductionContext`; a new one when
    None), which is the active context of the reductions while inside. Scalar state (``step``,
    ``alpha``) advanced on the views is written back on exit. A bucket without DTensors is yielded
    unchanged (and ``ctx`` is not touched)."""
    if not any(is_sharded(p) for p in params):
        yield params, grads, states
        return
    if ctx is None:
        ctx = ReductionContext()
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
        ctx.register(loc, ShardInfo(p.shape, _group_of(p), splits_groups(reg, p.shape)))
    try:
        with active(ctx):
            yield lp, lg, ls
    finally:
        for st, lst in zip(states, ls):
            if lst is not st:
                for k, v in lst.items():
                    if not isinstance(v, Tensor):
                        st[k] = v
        for loc in lp:
            ctx.unregister(loc)


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


def all_finite(grads: Sequence[Tensor], local_check: Callable[[list[Tensor]], bool]) -> bool:
    """``local_check`` on the local shards, agreed by every rank holding a sharded gradient."""
    ok = local_check([local(g) for g in grads])
    groups = {id(_group_of(g)): _group_of(g) for g in grads if is_sharded(g)}
    for grp in groups.values():
        flag = _all_reduce(torch.tensor([0.0 if ok else 1.0]), "max", grp, "finite")
        ok = bool(flag.item() == 0)
    return ok
