"""Rejection of parameters and state tensors that overlap themselves.

A step writes the parameter and its state in place; through an expanded or overlapping view (two
elements at one memory location) it would write an element several times and change the aliased
base. The backends reject such tensors before anything of the bucket is modified: the CPU and CUDA
ops in C++ (csrc/include/structsparse/overlap.h), the Triton and reference backends here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def may_overlap(t: Tensor) -> bool:
    """Whether ``t`` may hold two elements at one memory location (an expanded or overlapping
    as_strided view): the dims of size > 1 sorted by stride, each stride must exceed the extent
    the smaller ones span (csrc/include/structsparse/overlap.h). O(1) for a contiguous tensor."""
    if t.is_contiguous():
        return False
    extent = 0
    for stride, size in sorted((abs(st), sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride <= extent:
            return True
        extent += stride * (size - 1)
    return False


def check_writable(op: str, rows: Sequence[Sequence[Tensor | None]]) -> None:
    """Raise ValueError naming the first parameter or state tensor of ``rows`` (``(param, grad,
    state...)``) that may overlap itself: a step writes them in place, so through such an alias it
    would write an element several times. Called before anything of the bucket is modified."""
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            if j == 1 or t is None or not may_overlap(t):
                continue
            what = f"params[{i}]" if j == 0 else f"state tensor {j - 2} of params[{i}]"
            raise ValueError(
                f"{op}: {what} (shape {list(t.shape)}, strides {list(t.stride())}) may hold several "
                "elements at one memory location (an expanded or overlapping view): the step writes it "
                "in place; pass a tensor that owns its memory (e.g. .clone())"
            )
