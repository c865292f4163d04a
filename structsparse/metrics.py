"""Structure metrics (docs/math.md §8).

Each metric takes a model (its regularizable weights, see :func:`structsparse.params.regularizable_weights`),
an optimizer (its regularized parameters, each with its own grouping), or an iterable of tensors.

FSDP2 (dim-0 sharded DTensor) parameters give the metrics of the global tensors: zero groups and
zero counts are combined with one small all-reduce per tensor (every rank must call the metric);
:func:`low_rank_level` gathers each sharded matrix for its SVD (a metric, not a training step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from .grouping import Grouping, check_grouping, fits, group_view
from .params import regularizable_weights
from .regularizers import NuclearNorm


def _tensors_with_grouping(obj: Any, grouping: Grouping) -> list[tuple[Tensor, Grouping]]:
    grouping = check_grouping(grouping)
    if isinstance(obj, nn.Module):
        return [(p, grouping) for _, p in regularizable_weights(obj) if fits(grouping, p.shape)]
    if isinstance(obj, torch.optim.Optimizer):
        out = []
        for g in obj.param_groups:
            reg = g.get("regularizer")
            if reg is None or isinstance(reg, NuclearNorm):
                continue
            out.extend((p, reg.grouping) for p in g["params"])
        return out
    if isinstance(obj, Tensor):
        obj = [obj]
    out = []
    for t in obj:
        if isinstance(t, dict):  # a param group: its regularizer's grouping; unregularized skipped
            reg = t.get("regularizer")
            if reg is not None and not isinstance(reg, NuclearNorm):
                out.extend((p, reg.grouping) for p in t["params"])
        else:
            out.append((t, grouping))
    return out


def zero_groups(w: Tensor, grouping: Grouping) -> Tensor:
    """Boolean ``[G]``: which groups of ``w`` are entirely zero (of the global tensor for an FSDP2
    shard; then a collective every rank must call)."""
    if distributed.is_sharded(w):
        return distributed.zero_groups(w, grouping)
    x3 = w.detach().reshape(group_view(grouping, w.shape))
    return (x3 == 0).all(dim=2).all(dim=0) if x3.numel() else torch.zeros(x3.shape[1], dtype=torch.bool)


def group_sparsity(obj: Any, weighted: bool = False, grouping: Grouping = "input") -> float:
    """Fraction of groups that are entirely zero (``weighted=True``: fraction of the regularized
    parameters that lie in zero groups). ``grouping`` applies to models and tensors; an
    optimizer's groups use their regularizer's grouping."""
    zero = total = 0
    for w, gr in _tensors_with_grouping(obj, grouping):
        z = zero_groups(w, gr)
        if weighted:
            a, g, b = group_view(gr, w.shape)
            zero += int(z.sum()) * a * b
            total += w.numel()
        else:
            zero += int(z.sum())
            total += z.numel()
    return zero / total if total else 0.0


def kernel_sparsity(obj: Any) -> float:
    """Fraction of zero ``(o, i)`` kernels over conv weights (RMDA paper's evaluation)."""
    pairs = [(w, gr) for w, gr in _tensors_with_grouping(obj, "element") if w.dim() >= 3]
    zero = total = 0
    for w, _ in pairs:
        z = zero_groups(w, "kernel")
        zero += int(z.sum())
        total += z.numel()
    return zero / total if total else 0.0


def _all_tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, nn.Module):
        return list(obj.parameters())
    if isinstance(obj, torch.optim.Optimizer):
        return [p for g in obj.param_groups for p in g["params"]]
    if isinstance(obj, Tensor):
        return [obj]
    out: list[Tensor] = []
    for t in obj:
        out.extend(t["params"] if isinstance(t, dict) else [t])
    return out


def unstructured_sparsity(obj: Any) -> float:
    """Fraction of exact zeros over all parameters (a model's, an optimizer's, or the tensors given)."""
    ts = _all_tensors(obj)
    total = sum(t.numel() for t in ts)
    return sum(distributed.count_zeros(t) for t in ts) / total if total else 0.0


def low_rank_level(obj: Any, rtol: float | None = None) -> float:
    """Fraction of zero singular values over the 2-D views ``(out, -1)`` of the weights.

    A singular value counts as zero when ``s ≤ rtol·s_max`` (default ``rtol = max(m, n)·eps``, as
    ``torch.linalg.matrix_rank``); an all-zero matrix has all its singular values zero.
    For an optimizer, the NuclearNorm-regularized parameters; for a model, its regularizable weights.
    """
    if isinstance(obj, torch.optim.Optimizer):
        ws = [
            p for g in obj.param_groups if isinstance(g.get("regularizer"), NuclearNorm) for p in g["params"]
        ]
    elif isinstance(obj, nn.Module):
        ws = [p for _, p in regularizable_weights(obj)]
    else:
        ws = [t for t in _all_tensors(obj) if t.dim() >= 2]
    zero = total = 0
    for w in ws:
        if distributed.is_sharded(w):  # the SVD needs the whole matrix (metric only, not a step)
            w = w.full_tensor()
        m = w.detach().reshape(w.shape[0], -1)
        if m.numel() == 0:
            continue
        s = torch.linalg.svdvals(m.double() if m.dtype in (torch.float16, torch.bfloat16) else m)
        tol = (rtol if rtol is not None else max(m.shape) * torch.finfo(s.dtype).eps) * s.max()
        zero += int((s <= tol).sum())
        total += s.numel()
    return zero / total if total else 0.0


class StructureTracker:
    """Records the zero-group pattern after each epoch and reports when it last changed
    (the papers' structure-stability claim).

    ``update()`` returns whether the pattern changed since the previous call; ``last_change`` is the
    1-based index of the last update whose pattern differed from the one before (0 if never).
    """

    def __init__(self, obj: Any, grouping: Grouping = "input") -> None:
        self.obj = obj
        self.grouping = grouping
        self.updates = 0
        self.last_change = 0
        self._pattern: list[Tensor] | None = None

    def pattern(self) -> list[Tensor]:
        return [zero_groups(w, gr).cpu() for w, gr in _tensors_with_grouping(self.obj, self.grouping)]

    def update(self) -> bool:
        pat = self.pattern()
        self.updates += 1
        changed = self._pattern is None or any(not torch.equal(a, b) for a, b in zip(pat, self._pattern))
        if changed and self._pattern is not None:
            self.last_change = self.updates
        self._pattern = pat
        return changed
