"""The collectives structsparse issues for sharded parameters, counted by purpose
(:func:`comm_stats`)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor

_stats: dict[str, dict[str, int]] = {}


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


def all_reduce_sums(sums: Tensor, group: Any) -> Tensor:
    """All-reduce (SUM) of a backend's per-group partial sums over ``group`` (counted under
    ``"groups"`` in :func:`comm_stats`, like the reference backend's reductions)."""
    return _all_reduce(sums, "sum", group, "groups")


def _all_to_all(send: Tensor, send_sizes: list[int], recv: Tensor, recv_sizes: list[int], group: Any) -> None:
    """``all_to_all_single`` of byte buffers, counted in :func:`comm_stats` under
    ``"redistribute"`` (bytes: what this rank sends to the *other* ranks)."""
    me = dist.get_rank(group)
    st = _stats.setdefault("redistribute", {"calls": 0, "bytes": 0})
    st["calls"] += 1
    st["bytes"] += sum(n for r, n in enumerate(send_sizes) if r != me)
    dist.all_to_all_single(recv, send, recv_sizes, send_sizes, group=group)
