"""Triton backend: fused GPU kernels (:mod:`structsparse.triton_kernels`), same signatures as
:mod:`.reference`.

Each step function splits its bucket by per-tensor counters (``t``, ``α``; normally all equal,
so one split) and calls one launch wrapper per split, which launches once per tile configuration
(all unregularized tensors of a bucket share one launch). Runs on CUDA tensors, and on CPU tensors
under ``TRITON_INTERPRET=1`` (how CI tests it).

Math and stopping rules are the reference's: per-group PG stop (``(Q_prev − Q)/(|Q| + 1) < rtol``
after ≥ 2 iterations), PG never returns a group worse than its warm start, exact screening for
group LASSO / L1. The exact solves (RAMDA/ProxGen ``"exact"``, ProxSSI) cover GroupLasso, L1,
SparseGroupLasso (group LASSO's Newton on the soft-thresholded ``pz``), MCP (the closed form per
element, both regimes) and GroupMCP (Newton on ``s``, the comparison of 0, ``X(s)`` and Z for
nonconvex groups; docs/solvers.md), on chip and on the two-phase path of large groups. Newton
follows the C++ kernels' rule (csrc/include/structsparse/math.h): the
larger of two lower bounds of the root as the start, a stop after a step below ``NEWTON_ULPS`` ulps
of r or once an a-priori bound of the error left is below that (``NEWTON_MAX_ITERS`` max): the
reference's root within rounding, in fewer passes. Scalars are passed as fp32 kernel arguments,
so float64 tensors match the reference to ~1e-7 relative, not to float64 precision.

Group norms are summed in the state dtype; a group whose sum of squares overflows (float32
elements above ~1.8e19) has its norm recomputed max-scaled on the on-chip path, and takes the
limit of an infinite norm (scale 1) on the two-phase path of large groups: exact to rounding there
unless the threshold exceeds ~6e-8 of the norm. Parameters of any rank may be strided (their
offsets are computed from the strides); a parameter or state tensor that may hold two elements at
one memory location (expanded, overlapping as_strided) is refused with a ValueError.

Declined by :func:`supports` (the optimizers step those buckets on :mod:`.reference`):
:class:`~structsparse.NuclearNorm` (needs an SVD) and any regularizer class this module does not
know.

``dessilbi_step`` (docs/math.md §6) runs L1 and GroupLasso (any grouping), with and without the
magnitude-scaling option, in the kernels of ``triton_kernels/lbi_step.py``.

The same kernels are registered as the CUDA kernels of the ``structsparse::*_step`` ops when no
compiled CUDA kernel is (see :func:`register_cuda_ops` at the end of this module).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..regularizers import GroupLasso, Regularizer
from .encoding import REG_KINDS, encode, unsupported
from .reference import NEWTON_MAX_ITERS, NEWTON_ULPS

_kernels: ModuleType | None = None


def kernels() -> ModuleType:
    """The :mod:`structsparse.triton_kernels` package (imports triton on first use)."""
    global _kernels
    if _kernels is None:
        _kernels = importlib.import_module("structsparse.triton_kernels")
    return _kernels


def available(op: str | None = None) -> tuple[bool, str]:
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


def _kernel_reg(kind: str, reg_params: list[float]) -> dict[str, Any]:
    """The Triton kernels' regularizer code and scalars from the encoding of
    :mod:`.encoding` (``kind``, ``[lam, lam2, omega]``)."""
    lam, lam2, omega = (float(x) for x in reg_params)
    code = REG_KINDS.index(kind)
    if code == 0:
        return {"reg_code": 0}
    if code == 1:
        return {"reg_code": 1, "lam": lam}
    if code == 2:  # lam = λ1 (elementwise), lam2 = λ2 (group)
        return {"reg_code": 2, "lam": lam2, "lam1": lam}
    return {"reg_code": 3, "lam": lam, "omega": omega}


def supports(
    algorithm: str,
    reg: Regularizer | None,
    *,
    solver: str | None = None,
    magnitude_scaling: bool = False,
    device: torch.device | None = None,
) -> bool:
    """Whether the Triton kernels run a bucket of ``algorithm`` with ``reg`` (see
    :func:`structsparse.backends.cpu.supports` for the arguments); the optimizers step the others
    on the reference backend. Accepted: every algorithm with no regularizer, GroupLasso, L1,
    SparseGroupLasso, GroupMCP or MCP, with either solver (``"exact"``: screening and Newton or the
    closed forms of docs/solvers.md; ``"pg"``), on any grouping. Declined: NuclearNorm (an SVD),
    regularizer classes the kernels do not know, DessiLBI with a regularizer other than
    L1/GroupLasso."""
    if algorithm == "dessilbi":
        return reg is None or isinstance(reg, GroupLasso)
    return encode(reg) is not None


def _reg_args(reg: Regularizer | None) -> dict[str, Any] | None:
    """Kernel code and scalars of ``reg``; None when this backend delegates it to reference."""
    enc = encode(reg)
    return None if enc is None else _kernel_reg(*enc)


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
        raise unsupported("triton", "rmda", reg)
    _rmda(params, grads, anchors, grad_sums, _views(reg, params), steps, alphas, lr, c, ra)


def _rmda(params, grads, anchors, grad_sums, views, steps, alphas, lr, c, ra) -> None:
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
        raise unsupported("triton", "ramda", reg)
    _ramda(
        params,
        grads,
        anchors,
        grad_sums,
        sq_grad_sums,
        _views(reg, params),
        steps,
        alphas,
        dict(lr=lr, c=c, eps=eps, solver=solver, max_iters=max_iters, rtol=rtol),
        ra,
    )


def _ramda(params, grads, anchors, grad_sums, sq_grad_sums, views, steps, alphas, kw, ra) -> None:
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
            **kw,
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
        raise unsupported("triton", "proxsgd", reg)
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
        raise unsupported("triton", "proxgen", reg)
    kw.update(solver=solver, max_iters=max_iters, rtol=rtol)
    _proxgen(params, grads, exp_avgs, exp_avg_sqs, _views(reg, params), steps, kw, ra)


def _proxgen(params, grads, exp_avgs, exp_avg_sqs, views, steps, kw, ra) -> None:
    for t, idx in _splits(list(steps)).items():
        kernels().proxgen(
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
        raise unsupported("triton", "proxssi", reg)
    _proxssi(params, grads, exp_avgs, exp_avg_sqs, _views(reg, params), steps, kw, ra)


def _proxssi(params, grads, exp_avgs, exp_avg_sqs, views, steps, kw, ra) -> None:
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


def dessilbi_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    zs: Sequence[Tensor],
    gammas: Sequence[Tensor],
    *,
    lr: float,
    kappa: float,
    nu: float,
    momentum: float,
    weight_decay: float,
    reg: Regularizer | None,
    magnitude_scaling: bool = False,
    scaling_floor: float = 0.0,
) -> None:
    """DessiLBI (docs/math.md §6): one pass per tensor, Γ's group norm on chip or two-phase; L1 and
    GroupLasso on any grouping, with or without magnitude scaling (which adds one counting
    launch for the tensors' support sizes). Other regularizers go to :mod:`.reference`."""
    paired = reg is not None
    if paired and not (len(zs) == len(gammas) == len(params)):
        raise ValueError("dessilbi_step: zs and gammas must match params when reg is given")
    if not paired and (len(zs) or len(gammas)):
        raise ValueError("dessilbi_step: zs and gammas must be empty when reg is None")
    if paired and not isinstance(reg, GroupLasso):
        raise unsupported("triton", "dessilbi", reg)
    if not len(params):
        return
    kernels().dessilbi(
        list(params),
        list(grads),
        list(momentum_buffers),
        list(zs),
        list(gammas),
        _views(reg, params),
        lr=lr,
        kappa=kappa,
        nu=nu,
        momentum=momentum,
        weight_decay=weight_decay,
        lam=reg.lam if paired else 0.0,
        magnitude_scaling=magnitude_scaling,
        scaling_floor=scaling_floor,
    )


# -- torch.library: the Triton kernels as CUDA implementations of the structsparse ops ---------
#
# The op schemas are defined in C++ (csrc/library.cpp) and their fake kernels in
# structsparse/ops.py. When CUDA and triton are available and the extension did not register a
# compiled CUDA kernel for an op (a CPU-only build of structsparse._C), the functions below are
# registered as that op's CUDA kernel, so ``torch.ops.structsparse.<op>`` runs on CUDA tensors
# (and torch.compile traces it through the fake). A compiled CUDA kernel always wins: an op that
# already has one is left alone, so nothing is registered twice. The translation functions take
# the op's arguments (flat ``views``, ``reg`` string, ``reg_params = [lam, lam2, omega]``) and call
# the same launch wrappers as the step functions above; they also run on CPU tensors under
# TRITON_INTERPRET=1, which is how they are tested without a GPU.


def _op_reg_args(op: str, reg: str, reg_params: Sequence[float]) -> dict[str, Any]:
    """Kernel code and scalars from an op's ``reg`` and ``reg_params = [lam, lam2, omega]``."""
    if reg not in REG_KINDS:
        raise ValueError(f"structsparse::{op}: reg must be one of {REG_KINDS}, got {reg!r}")
    if len(reg_params) != 3:
        raise ValueError(f"structsparse::{op}: reg_params must be [lam, lam2, omega], got {list(reg_params)}")
    return _kernel_reg(reg, list(reg_params))


def _op_views(op: str, views: Sequence[int], params: Sequence[Tensor]) -> list[tuple[int, int, int]]:
    if len(views) != 3 * len(params):
        raise ValueError(f"structsparse::{op}: views must hold 3 sizes [A, G, B] per tensor")
    out = [tuple(int(x) for x in views[3 * i : 3 * i + 3]) for i in range(len(params))]
    for i, (v, p) in enumerate(zip(out, params)):
        if v[0] * v[1] * v[2] != p.numel():
            raise ValueError(
                f"structsparse::{op}: views[{i}] = {list(v)} does not fit params[{i}] ({p.numel()})"
            )
    return out  # type: ignore[return-value]


def _op_check_lists(op: str, params: Sequence[Tensor], *lists: Sequence[Any]) -> None:
    for lst in lists:
        if len(lst) != len(params):
            raise ValueError(f"structsparse::{op}: got {len(params)} params but a list of length {len(lst)}")


def _op_check_solver(op: str, solver: str) -> None:
    if solver not in ("pg", "exact"):
        raise ValueError(f"structsparse::{op}: solver must be 'pg' or 'exact', got {solver!r}")


def op_rmda_step(params, grads, anchors, grad_sums, steps, alphas, views, lr, c, reg, reg_params) -> None:
    """``structsparse::rmda_step`` on the Triton kernels."""
    _op_check_lists("rmda_step", params, grads, anchors, grad_sums, steps, alphas)
    ra = _op_reg_args("rmda_step", reg, reg_params)
    vw = _op_views("rmda_step", views, params)
    _rmda(params, grads, anchors, grad_sums, vw, list(steps), list(alphas), float(lr), float(c), ra)


def op_ramda_step(
    params,
    grads,
    anchors,
    grad_sums,
    sq_grad_sums,
    steps,
    alphas,
    views,
    lr,
    c,
    eps,
    reg,
    reg_params,
    solver,
    max_iters,
    rtol,
) -> None:
    """``structsparse::ramda_step`` on the Triton kernels."""
    _op_check_lists("ramda_step", params, grads, anchors, grad_sums, sq_grad_sums, steps, alphas)
    ra = _op_reg_args("ramda_step", reg, reg_params)
    _op_check_solver("ramda_step", solver)
    kw = dict(
        lr=float(lr), c=float(c), eps=float(eps), solver=solver, max_iters=int(max_iters), rtol=float(rtol)
    )
    vw = _op_views("ramda_step", views, params)
    _ramda(params, grads, anchors, grad_sums, sq_grad_sums, vw, list(steps), list(alphas), kw, ra)


def op_proxsgd_step(params, grads, momentum_buffers, views, lr, c, reg, reg_params) -> None:
    """``structsparse::proxsgd_step`` on the Triton kernels."""
    _op_check_lists("proxsgd_step", params, grads, momentum_buffers)
    ra = _op_reg_args("proxsgd_step", reg, reg_params)
    vw = _op_views("proxsgd_step", views, params)
    if len(params):
        kernels().proxsgd(
            list(params), list(grads), list(momentum_buffers), vw, lr=float(lr), c=float(c), **ra
        )


def op_proxgen_step(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    steps,
    views,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    reg,
    reg_params,
    solver,
    max_iters,
    rtol,
) -> None:
    """``structsparse::proxgen_step`` on the Triton kernels."""
    _op_check_lists("proxgen_step", params, grads, exp_avgs, exp_avg_sqs, steps)
    ra = _op_reg_args("proxgen_step", reg, reg_params)
    _op_check_solver("proxgen_step", solver)
    kw = dict(
        lr=float(lr),
        beta1=float(beta1),
        beta2=float(beta2),
        eps=float(eps),
        weight_decay=float(weight_decay),
        solver=solver,
        max_iters=int(max_iters),
        rtol=float(rtol),
    )
    vw = _op_views("proxgen_step", views, params)
    _proxgen(params, grads, exp_avgs, exp_avg_sqs, vw, list(steps), kw, ra)


def op_proxssi_step(
    params, grads, exp_avgs, exp_avg_sqs, steps, views, lr, beta1, beta2, eps, weight_decay, reg, reg_params
) -> None:
    """``structsparse::proxssi_step`` on the Triton kernels."""
    _op_check_lists("proxssi_step", params, grads, exp_avgs, exp_avg_sqs, steps)
    ra = _op_reg_args("proxssi_step", reg, reg_params)
    kw = dict(
        lr=float(lr), beta1=float(beta1), beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay)
    )
    vw = _op_views("proxssi_step", views, params)
    _proxssi(params, grads, exp_avgs, exp_avg_sqs, vw, list(steps), kw, ra)


OP_IMPLS = {
    "rmda_step": op_rmda_step,
    "ramda_step": op_ramda_step,
    "proxsgd_step": op_proxsgd_step,
    "proxgen_step": op_proxgen_step,
    "proxssi_step": op_proxssi_step,
}


def _on_device(fn):
    """Launch on the parameters' CUDA device (the dispatcher sets no device guard for Python kernels)."""

    def kernel(params, *args):
        if len(params) and params[0].is_cuda:
            with torch.cuda.device(params[0].device):
                return fn(params, *args)
        return fn(params, *args)

    kernel.__name__ = fn.__name__
    kernel.__doc__ = fn.__doc__
    return kernel


_LIB: torch.library.Library | None = None


def register_cuda_ops(*, require_cuda: bool = True) -> tuple[tuple[str, ...], str]:
    """Register the Triton kernels as the CUDA kernels of the ``structsparse::*_step`` ops that
    have none. Returns ``(names registered now, reason when none was)``.

    Skipped (nothing registered) when the op schemas are not loaded (no ``structsparse._C``), when
    ``require_cuda`` and no CUDA device is available, or when triton is not installed. An op whose
    CUDA key already has a kernel (the compiled CUDA build of the extension, or an earlier call of
    this function) is skipped, so a compiled kernel is never overridden and nothing is registered
    twice. triton itself is imported only when a registered op first runs.
    """
    global _LIB
    import importlib.util

    if not any(_has_schema(n) for n in OP_IMPLS):
        return (), "the structsparse op schemas are not loaded (structsparse._C)"
    if require_cuda and not torch.cuda.is_available():
        return (), "no CUDA device is available"
    if importlib.util.find_spec("triton") is None:
        return (), "triton is not installed"
    names = [
        n
        for n in OP_IMPLS
        if _has_schema(n) and not torch._C._dispatch_has_kernel_for_dispatch_key(f"structsparse::{n}", "CUDA")
    ]
    if not names:
        return (), "every step op already has a CUDA kernel"
    if _LIB is None:
        _LIB = torch.library.Library("structsparse", "IMPL")
    for n in names:
        _LIB.impl(n, _on_device(OP_IMPLS[n]), "CUDA")
    return tuple(names), ""


def _has_schema(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"structsparse::{name}", "")
    except RuntimeError:
        return False
    return True


def unregister_cuda_ops() -> None:
    """Remove the registrations of :func:`register_cuda_ops` (tests)."""
    global _LIB
    if _LIB is not None:
        _LIB._destroy()
        _LIB = None
