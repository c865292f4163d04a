"""Groupings: how a parameter tensor is partitioned into groups (docs/math.md §1).

Every grouping is a view of the contiguous tensor as ``[A, G, B]``: group ``j`` is
``x[a, j, b]`` for all ``a, b``; its size is ``A·B`` and its weight ``sqrt(A·B)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

Grouping = Union[str, tuple[int, ...]]

NAMED_GROUPINGS = ("input", "output", "kernel", "element")


def _prod(xs: Sequence[int]) -> int:
    return int(math.prod(xs))


def check_grouping(grouping: object) -> Grouping:
    """Validate a grouping given by name or as a tuple of norm dims; return its canonical form."""
    if isinstance(grouping, str):
        if grouping not in NAMED_GROUPINGS:
            raise ValueError(
                f"grouping: unknown grouping {grouping!r}; expected one of {NAMED_GROUPINGS} "
                "or a tuple of the dims over which each group's norm is taken"
            )
        return grouping
    if isinstance(grouping, (tuple, list)) and all(isinstance(d, int) for d in grouping):
        dims = tuple(sorted(int(d) for d in grouping))
        if len(set(dims)) != len(dims) or any(d < 0 for d in dims):
            raise ValueError(f"grouping: norm dims {tuple(grouping)} must be distinct and >= 0")
        return dims
    raise ValueError(f"grouping: expected a name or a tuple of ints, got {grouping!r}")


def group_view(grouping: Grouping, shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``(A, G, B)`` such that the contiguous tensor viewed as ``[A, G, B]`` has groups on dim 1.

    Raises ``ValueError`` naming the grouping when it does not fit ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if grouping == "element":
        return 1, _prod(shape), 1
    if grouping == "input":
        if nd < 2:
            raise ValueError(
                f"grouping 'input' needs a weight with >= 2 dims (out, in, ...), got shape {shape}"
            )
        return shape[0], shape[1], _prod(shape[2:])
    if grouping == "output":
        if nd < 2:
            raise ValueError(
                f"grouping 'output' needs a weight with >= 2 dims (out, in, ...), got shape {shape}"
            )
        return 1, shape[0], _prod(shape[1:])
    if grouping == "kernel":
        if nd < 3:
            raise ValueError(f"grouping 'kernel' is for conv weights (O, I, k...), got shape {shape}")
        return 1, shape[0] * shape[1], _prod(shape[2:])
    if isinstance(grouping, tuple):
        if any(d >= nd for d in grouping):
            raise ValueError(f"grouping: norm dims {grouping} out of range for shape {shape}")
        kept = [d for d in range(nd) if d not in grouping]
        if not kept:  # the whole tensor is one group
            return 1, 1, _prod(shape)
        lo, hi = kept[0], kept[-1] + 1
        if kept != list(range(lo, hi)):
            raise ValueError(
                f"grouping: norm dims {grouping} leave group dims {tuple(kept)} that are not "
                f"adjacent in shape {shape}; a group must be an [A, G, B] view"
            )
        return _prod(shape[:lo]), _prod(shape[lo:hi]), _prod(shape[hi:])
    raise ValueError(f"grouping: invalid grouping {grouping!r}")


def fits(grouping: Grouping, shape: Sequence[int]) -> bool:
    try:
        group_view(grouping, shape)
    except ValueError:
        return False
    return True
