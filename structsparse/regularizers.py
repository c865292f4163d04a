"""Regularizers ψ and their proximal operators (docs/math.md §2).

A regularizer is a *grouping* (how a tensor is viewed as ``[A, G, B]`` groups, see
:mod:`structsparse.grouping`) composed with a per-group *prox map*. The weight λ lives in the
regularizer. Every regularizer has

- ``value(W)``: ψ(W), a 0-dim tensor;
- ``prox(W, tau)``: ``argmin_x ½‖x − W‖² + tau·ψ(x)``;
- ``group_values(x3)`` and ``prox_groups(x3, tau)`` on the ``[A, G, B]`` view, with ``tau`` a
  scalar or a per-group tensor of shape ``[G]`` (used by the subproblem solvers).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .distributed import global_shape, group_sum
from .grouping import Grouping, check_grouping, group_view

__all__ = [
    "Regularizer",
    "GroupLasso",
    "L1",
    "SparseGroupLasso",
    "GroupMCP",
    "MCP",
    "NuclearNorm",
    "regularizer_from_dict",
]


def _check_nonneg(name: str, value: float, *, positive: bool = False) -> float:
    """A finite real number >= 0 (> 0 with ``positive``); ValueError naming ``name`` otherwise."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_meta:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: must be a finite number {bound}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name}: must be a finite number {bound}, got {value}")
    return value


def _as_group_tau(tau: Tensor | float, x3: Tensor) -> Tensor:
    """tau as a [1, G, 1] (or broadcastable) tensor of x3's dtype."""
    if isinstance(tau, Tensor):
        t = tau.to(dtype=x3.dtype, device=x3.device)
    else:  # scalar_tensor: torch.compile keeps a symbolic tau symbolic (as_tensor specializes it)
        t = torch.scalar_tensor(tau, dtype=x3.dtype, device=x3.device)
    if t.dim() == 1:
        t = t.view(1, -1, 1)
    return t


# float64 elements above _BIG have their squares summed scaled by _BIG_SCALE² apart (below it a
# square is at most 2^960: no sum of up to 2^63 of them overflows).
_BIG = 2.0**480
_BIG_SCALE = 2.0**-600


def _group_norms(x3: Tensor) -> Tensor:
    """Euclidean norm of every group of an [A, G, B] view, shape [1, G, 1] (global when sharded),
    with no overflow of the sum of squares for any finite input (it made finite weights NaN).

    float32/half: the squares are taken and summed in float64 (they cannot overflow there) and the
    norm is the float64 sqrt rounded once. float64: the squares of elements above 2^480 are summed
    scaled by 2^-1200 in a second sum (the same collective); without such elements the norm is the
    plain ``sqrt(Σ x²)``, bit for bit. No branch on the data: every rank reduces the same sums."""
    if x3.dtype != torch.float64:
        return group_sum(x3.double().pow(2), keepdim=True).sqrt().to(x3.dtype)
    big = x3.abs() > _BIG
    small_sq = torch.where(big, 0.0, x3).pow(2)
    big_sq = torch.where(big, x3 * _BIG_SCALE, 0.0).pow(2)
    s, b = group_sum(small_sq, big_sq, keepdim=True)
    has_big = b > 0
    # each branch is evaluated where it is not taken too: there on a safe 1 (a finite gradient)
    scaled = torch.where(has_big, b + s * (_BIG_SCALE * _BIG_SCALE), 1.0).sqrt() / _BIG_SCALE
    return torch.where(has_big, scaled, torch.where(has_big, 1.0, s).sqrt())


def _shrink(x3: Tensor, norms: Tensor, thr: Tensor) -> Tensor:
    """Group shrink ``x · max(0, 1 − thr/‖x‖)`` written as ``x · n/(n + thr)``, n = max(‖x‖ − thr, 0).
    A norm beyond the dtype's range (float32 groups above 3.4e38) takes the limit, 1."""
    n = (norms - thr).clamp_min(0)
    denom = n + thr
    scale = torch.where(denom > 0, n / torch.where(denom > 0, denom, 1), 0)
    scale = torch.where((denom > 0) & (norms == math.inf), 1, scale)
    return x3 * scale


class Regularizer:
    """Base class. Subclasses set ``name`` and implement the per-group maps."""

    name: ClassVar[str] = "regularizer"
    #: exact screening ``W̃_g = 0 iff ‖P⊙Z‖_g ≤ T_g`` and the Newton solve apply (group LASSO family)
    screenable: ClassVar[bool] = False
    #: PG solvers halve their step for a nonconvex ψ (RAMDA Alg. 2)
    nonconvex: ClassVar[bool] = False
    #: the weighted subproblem has an exact solve (``solver="exact"``; ``"auto"`` picks it)
    exact_solve: ClassVar[bool] = False
    grouping: Grouping

    # -- shape handling ---------------------------------------------------------------------
    def view_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        return group_view(self.grouping, shape)

    def check(self, param: Tensor, where: str = "param") -> None:
        """Raise ValueError naming the grouping when it does not fit ``param``."""
        try:
            self.view_shape(param.shape)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__} on {where} of shape {tuple(param.shape)}: {e}") from None

    def group_weight(self, shape: tuple[int, ...] | torch.Size) -> float:
        """``w_g = sqrt(|g|) = sqrt(A·B)``; the same for every group of a tensor (of the global
        tensor when ``shape`` is a shard's, see :mod:`structsparse.distributed`)."""
        a, _, b = self.view_shape(global_shape(shape))
        return math.sqrt(a * b)

    def as_groups(self, w: Tensor) -> Tensor:
        return w.contiguous().view(self.view_shape(w.shape))

    # -- public maps ---------------------------------------------------------------------------
    def value(self, w: Tensor) -> Tensor:
        """ψ(W)."""
        return self.group_values(self.as_groups(w), w.shape).sum()

    def prox(self, w: Tensor, tau: float | Tensor) -> Tensor:
        """``prox_{tau·ψ}(W)``; returns a new tensor of W's shape."""
        return self.prox_groups(self.as_groups(w), tau, w.shape).reshape(w.shape)

    # -- per-group maps (override) -----------------------------------------------------------
    def group_values(self, x3: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        raise NotImplementedError

    def prox_groups(self, x3: Tensor, tau: float | Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        raise NotImplementedError

    # -- serialization (state_dict holds plain data, loadable with weights_only=True) ---------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": type(self).__name__}
        for k in self._fields():
            v = getattr(self, k)
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def _fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if f.init)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GroupLasso(Regularizer):
    """``ψ(W) = λ Σ_g w_g ‖W_g‖₂`` with ``w_g = sqrt(|g|)``."""

    lam: float
    grouping: Grouping = "input"
    name: ClassVar[str] = "group_lasso"
    exact_solve: ClassVar[bool] = True
    screenable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _check_nonneg("lam", self.lam))
        object.__setattr__(self, "grouping", check_grouping(self.grouping))

    def group_values(self, x3, shape):
        return self.lam * self.group_weight(shape) * _group_norms(x3).view(-1)

    def prox_groups(self, x3, tau, shape):
        thr = _as_group_tau(tau, x3) * (self.lam * self.group_weight(shape))
        return _shrink(x3, _group_norms(x3), thr)


@dataclass(frozen=True)
class L1(GroupLasso):
    """``ψ(W) = λ‖W‖₁``: group LASSO with one group per element (soft threshold)."""

    lam: float
    grouping: Grouping = field(default="element", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "L1", "lam": self.lam}


@dataclass(frozen=True)
class SparseGroupLasso(Regularizer):
    """``ψ(W) = λ₁‖W‖₁ + λ₂ Σ_g w_g‖W_g‖``; prox = soft threshold by τλ₁, then group shrink by τλ₂w_g."""

    lam_l1: float
    lam_group: float
    grouping: Grouping = "input"
    name: ClassVar[str] = "sparse_group_lasso"
    exact_solve: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam_l1", _check_nonneg("lam_l1", self.lam_l1))
        object.__setattr__(self, "lam_group", _check_nonneg("lam_group", self.lam_group))
        object.__setattr__(self, "grouping", check_grouping(self.grouping))

    def group_values(self, x3, shape):
        l1 = group_sum(x3.abs())
        return self.lam_l1 * l1 + self.lam_group * self.group_weight(shape) * _group_norms(x3).view(-1)

    def prox_groups(self, x3, tau, shape):
        t = _as_group_tau(tau, x3)
        y = torch.sign(x3) * (x3.abs() - t * self.lam_l1).clamp_min(0)
        return _shrink(y, _group_norms(y), t * (self.lam_group * self.group_weight(shape)))


def _mcp_value(rho: Tensor, lam: float, omega: float) -> Tensor:
    inner = lam * rho - rho * rho / (2 * omega)
    return torch.where(rho <= omega * lam, inner, torch.full_like(rho, omega * lam * lam / 2))


def _firm_threshold(rho: Tensor, tau: Tensor, lam: float, omega: float) -> Tensor:
    """Prox of ``tau·MCP_{λ,ω}`` applied to a norm ``rho ≥ 0``.

    For ``ω > τ`` the firm threshold. For ``ω ≤ τ`` the scalar problem is concave on ``|x| ≤ ωλ``
    and the prox is the hard threshold at ``λ·sqrt(τω)`` (derivation: docs/math.md §2.4).
    """
    tau = tau.expand_as(rho)
    firm_ok = omega > tau
    safe = torch.where(firm_ok, 1 - tau / omega, torch.ones_like(tau))
    firm = torch.where(
        rho <= tau * lam,
        torch.zeros_like(rho),
        torch.where(rho <= omega * lam, (rho - tau * lam) / safe, rho),
    )
    hard = torch.where(rho > lam * torch.sqrt(tau * omega), rho, torch.zeros_like(rho))
    return torch.where(firm_ok, firm, hard)


@dataclass(frozen=True)
class GroupMCP(Regularizer):
    """Group minimax concave penalty: ``Σ_g MCP_{λ_g, ω_g}(‖W_g‖)`` with ``λ_g = λw_g, ω_g = ωw_g``.

    ``MCP_{λ,ω}(x) = λ|x| − x²/(2ω)`` for ``|x| ≤ ωλ``, else ``ωλ²/2``. Its prox is the firm
    threshold while ``ω_g > τ``; for ``ω_g ≤ τ`` (large steps) the exact prox is the hard threshold
    of the norm at ``λ_g·sqrt(τ·ω_g)``. Nonconvex: PG solvers halve their step.
    """

    lam: float
    omega: float
    grouping: Grouping = "input"
    name: ClassVar[str] = "group_mcp"
    exact_solve: ClassVar[bool] = True
    nonconvex: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _check_nonneg("lam", self.lam))
        omega = _check_nonneg("omega", self.omega, positive=True)
        object.__setattr__(self, "omega", omega)
        object.__setattr__(self, "grouping", check_grouping(self.grouping))

    def group_values(self, x3, shape):
        w = self.group_weight(shape)
        return _mcp_value(_group_norms(x3).view(-1), self.lam * w, self.omega * w)

    def prox_groups(self, x3, tau, shape):
        w = self.group_weight(shape)
        rho = _group_norms(x3)
        new = _firm_threshold(rho, _as_group_tau(tau, x3), self.lam * w, self.omega * w)
        scale = torch.where(rho > 0, new / torch.where(rho > 0, rho, 1), 0)
        scale = torch.where(rho == math.inf, 1, scale)  # a norm beyond the dtype's range: the limit
        return x3 * scale


@dataclass(frozen=True)
class MCP(GroupMCP):
    """Elementwise MCP (group MCP with one group per element)."""

    lam: float
    omega: float
    grouping: Grouping = field(default="element", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "MCP", "lam": self.lam, "omega": self.omega}


@dataclass(frozen=True)
class NuclearNorm(Regularizer):
    """``ψ(W) = λ‖W‖_*`` on the 2-D view ``(out, in·k…)``; prox soft-thresholds the singular values.

    The whole tensor is one group. Metric: :func:`structsparse.low_rank_level`.
    """

    lam: float
    name: ClassVar[str] = "nuclear"

    @property
    def grouping(self) -> Grouping:  # type: ignore[override]
        return tuple()  # one group: the whole tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _check_nonneg("lam", self.lam))

    def view_shape(self, shape):
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"NuclearNorm needs a weight with >= 2 dims, got shape {shape}")
        return 1, 1, int(math.prod(shape))

    def _matrix(self, x3: Tensor, shape) -> Tensor:
        return x3.reshape(shape[0], -1)

    def group_values(self, x3, shape):
        m = self._matrix(x3, shape)
        return (self.lam * torch.linalg.svdvals(m).sum()).view(1)

    def prox_groups(self, x3, tau, shape):
        m = self._matrix(x3, shape)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        t = torch.as_tensor(tau, dtype=m.dtype, device=m.device).reshape(-1)[0]
        s = (s - t * self.lam).clamp_min(0)
        return ((u * s) @ vh).reshape(x3.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "NuclearNorm", "lam": self.lam}


_TYPES: dict[str, type[Regularizer]] = {
    c.__name__: c for c in (GroupLasso, L1, SparseGroupLasso, GroupMCP, MCP, NuclearNorm)
}


def regularizer_from_dict(d: dict[str, Any] | None) -> Regularizer | None:
    """Inverse of :meth:`Regularizer.to_dict` (``None`` stays ``None``)."""
    if d is None:
        return None
    if isinstance(d, Regularizer):
        return d
    d = dict(d)
    cls = _TYPES.get(d.pop("type", None))
    if cls is None:
        raise ValueError(f"regularizer: unknown serialized regularizer {d!r}")
    if "grouping" in d and isinstance(d["grouping"], list):
        d["grouping"] = tuple(d["grouping"])
    return cls(**d)
