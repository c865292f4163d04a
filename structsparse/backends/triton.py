"""Triton backend: fused GPU kernels (:mod:`structsparse.triton_kernels`), same signatures as
:mod:`.reference`.

Each step function splits its bucket by per-tensor counters (``t``, ``α``; normally all equal,
so one split) and calls one launch wrapper per split, which launches once per tile configuration
(all unregularized tensors of a bucket share one launch). Runs on CUDA tensors, and on CPU tensors
under ``TRITON_INTERPRET=1`` (how CI tests it).

Math and stopping rules are the reference's: per-group PG stop (``(Q_prev − Q)/(|Q| + 1) < rtol``
after ≥ 2 iterations), Newton stop after a step below ``NEWTON_ULPS`` ulps of r or
``NEWTON_MAX_ITERS`` iterations, PG never returns a group worse than its warm start, exact
screening for group LASSO / L1. Scalars are passed as fp32 kernel arguments, so float64 tensors
match the reference to ~1e-7 relative, not to float64 precision.

Delegated to :mod:`.reference` (documented): :class:`~structsparse.NuclearNorm` (needs an SVD)
and any regularizer class this module does not know.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..regularizers import GroupLasso, GroupMCP, Regularizer, SparseGroupLasso
from . import reference
from .reference import NEWTON_MAX_ITERS, NEWTON_ULPS

_kernels: ModuleType | None = None


def kernels() -> ModuleType:
    """The :mod:`structsparse.triton_kernels` package (imports triton on first use)."""
    global _kernels
    if _kernels is None:
        _kernels = importlib.import_module("structsparse.triton_kernels")
    return _kernels


def available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton is a dependency of CUDA torch builds
        return False, f"triton is not importable ({e})"
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return False, "needs CUDA tensors or TRITON_INTERPRET=1"
    try:
        kernels()
    except Exception as e:  # pragma: no cover
        return False, f"structsparse.triton_kernels failed to import ({e})"
    return True, ""


# -- regularizer → kernel code and scalars ----------------------------------------------------


def _reg_args(reg: Regularizer | None) -> dict[str, Any] | None:
    """Kernel code and scalars of ``reg``; None when this backend delegates it to reference."""
    if reg is None:
        return {"reg_code": 0}
    if type(reg) in (GroupLasso,) or isinstance(reg, GroupLasso):
        return {"reg_code": 1, "lam": reg.lam}
    if isinstance(reg, SparseGroupLasso):
        return {"reg_code": 2, "lam": reg.lam_group, "lam1": reg.lam_l1}
    if isinstance(reg, GroupMCP):
        return {"reg_code": 3, "lam": reg.lam, "omega": reg.omega}
    return None


def _views(reg: Regularizer | None, params: Sequence[Tensor]) -> list[tuple[int, int, int]]:
    if reg is None:
        return [(1, p.numel(), 1) for p in params]
    return [reg.view_shape(p.shape) for p in params]


def _splits(keys: Sequence[Any]) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return out


def _pick(xs: Sequence[Any], idx: list[int]) -> list[Any]:
    return [xs[i] for i in idx]


def _newton_args(state: Sequence[Tensor]) -> dict[str, Any]:
    eps = torch.finfo(state[0].dtype).eps if len(state) else 0.0
    return {"newton_tol": NEWTON_ULPS * eps, "newton_max": NEWTON_MAX_ITERS}


# -- step functions (signatures of reference.py) ----------------------------------------------


def rmda_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    anchors: Sequence[Tensor],
    grad_sums: Sequence[Tensor],
    *,
    steps: Sequence[int],
    alphas: Sequence[float],
    lr: float,
    c: float,
    reg: Regularizer | None,
) -> None:
    ra = _reg_args(reg)
    if ra is None:
        return reference.rmda_step(
            params, grads, anchors, grad_sums, steps=steps, alphas=alphas, lr=lr, c=c, reg=reg
        )
    views = _views(reg, params)
    for (t, alpha), idx in _splits(list(zip(steps, alphas))).items():
        kernels().rmda(
            _pick(params, idx),
            _pick(grads, idx),
            _pick(anchors, idx),
            _pick(grad_sums, idx),
            _pick(views, idx),
            t=t,
            alpha=alpha,
            lr=lr,
            c=c,
            **ra,
        )


def ramda_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    anchors: Sequence[Tensor],
    grad_sums: Sequence[Tensor],
    sq_grad_sums: Sequence[Tensor],
    *,
    steps: Sequence[int],
    alphas: Sequence[float],
    lr: float,
    c: float,
    eps: float,
    reg: Regularizer | None,
    solver: str,
    max_iters: int,
    rtol: float,
) -> None:
    ra = _reg_args(reg)
    if ra is None:
        return reference.ramda_step(
            params,
            grads,
            anchors,
            grad_sums,
            sq_grad_sums,
            steps=steps,
            alphas=alphas,
            lr=lr,
            c=c,
            eps=eps,
            reg=reg,
            solver=solver,
            max_iters=max_iters,
            rtol=rtol,
        )
    views = _views(reg, params)
    for (t, alpha), idx in _splits(list(zip(steps, alphas))).items():
        kernels().ramda(
            _pick(params, idx),
            _pick(grads, idx),
            _pick(anchors, idx),
            _pick(grad_sums, idx),
            _pick(sq_grad_sums, idx),
            _pick(views, idx),
            t=t,
            alpha=alpha,
            lr=lr,
            c=c,
            eps=eps,
            solver=solver,
            max_iters=max_iters,
            rtol=rtol,
            **ra,
            **_newton_args(grad_sums),
        )


def proxsgd_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float,
    c: float,
    reg: Regularizer | None,
) -> None:
    ra = _reg_args(reg)
    if ra is None:
        return reference.proxsgd_step(params, grads, momentum_buffers, lr=lr, c=c, reg=reg)
    kernels().proxsgd(
        list(params), list(grads), list(momentum_buffers), _views(reg, params), lr=lr, c=c, **ra
    )


def proxgen_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    *,
    steps: Sequence[int],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    reg: Regularizer | None,
    solver: str,
    max_iters: int,
    rtol: float,
) -> None:
    ra = _reg_args(reg)
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    if ra is None:
        return reference.proxgen_step(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps=steps,
            reg=reg,
            solver=solver,
            max_iters=max_iters,
            rtol=rtol,
            **kw,
        )
    views = _views(reg, params)
    for t, idx in _splits(list(steps)).items():
        kernels().proxgen(
            _pick(params, idx),
            _pick(grads, idx),
            _pick(exp_avgs, idx),
            _pick(exp_avg_sqs, idx),
            _pick(views, idx),
            t=t,
            solver=solver,
            max_iters=max_iters,
            rtol=rtol,
            **kw,
            **ra,
            **_newton_args(exp_avgs),
        )


def proxssi_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    *,
    steps: Sequence[int],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    reg: Regularizer | None,
) -> None:
    ra = _reg_args(reg)
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    if ra is None:
        return reference.proxssi_step(params, grads, exp_avgs, exp_avg_sqs, steps=steps, reg=reg, **kw)
    views = _views(reg, params)
    for t, idx in _splits(list(steps)).items():
        kernels().proxssi(
            _pick(params, idx),
            _pick(grads, idx),
            _pick(exp_avgs, idx),
            _pick(exp_avg_sqs, idx),
            _pick(views, idx),
            t=t,
            **kw,
            **ra,
            **_newton_args(exp_avgs),
        )
