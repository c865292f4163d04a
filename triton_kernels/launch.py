"""Launch wrappers: ``(tensor lists, scalars) -> None``, one launch per (tile config) of a bucket.

Each wrapper takes the tensors of one bucket (same device, same parameter dtype, same
per-tensor counters) and the scalars of their param group, groups the tensors by tile
configuration and launches :func:`.step.step_kernel` once per configuration with pointer tables.
Unregularized tensors (biases, norm weights, …) all share one configuration: one launch.

``ONCHIP_LIMIT`` is the largest group (in elements) held on chip as one register tile; larger
groups take the chunked two-phase path. ``TILE`` is the number of elements a program of the
on-chip path handles (``TILE // group size`` groups at a time). Both are module constants read at
call time, so tests can lower them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backends.overlap import check_writable
from .lbi_step import count_kernel, dessilbi_kernel
from .step import (
    ALG_PROXGEN,
    ALG_PROXSGD,
    ALG_PROXSSI,
    ALG_RAMDA,
    ALG_RMDA,
    REG_NONE,
    SOLVER_NEWTON,
    SOLVER_PG,
    SOLVER_PROX,
    step_kernel,
)

ONCHIP_LIMIT = 2048
TILE = 1024

_TL_DTYPE = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}

_ALG_NAMES = {
    ALG_RMDA: "rmda_step",
    ALG_RAMDA: "ramda_step",
    ALG_PROXSGD: "proxsgd_step",
    ALG_PROXGEN: "proxgen_step",
    ALG_PROXSSI: "proxssi_step",
}

SOLVERS = {"prox": SOLVER_PROX, "exact": SOLVER_NEWTON, "pg": SOLVER_PG}

#: the algorithms' scalar arguments of :func:`.step.step_kernel`, by name (:func:`.step._pre`)
ALG_SCALARS = (
    "grad_scale",
    "sqrt_t",
    "eps",
    "c_mom",
    "lr",
    "beta1",
    "beta2",
    "decay",
    "lin_scale",
    "sqrt_bc2",
    "ssi_step",
)


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def tile_config(view: tuple[int, int, int]) -> tuple[bool, int, int]:
    """``(fit, R, BK)`` of a tensor viewed as ``[A, G, B]``."""
    a, _, b = view
    n = a * b
    if n <= ONCHIP_LIMIT:
        bk = triton.next_power_of_2(n)
        return True, max(1, TILE // bk), bk
    return False, 1, _pow2_floor(ONCHIP_LIMIT)


_TABLES: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor, int]] = {}


def _tables(device, ptrs, views, fit: bool, r: int, strides) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Pointer, ``[A, G, B]``, program-offset and stride tables of one launch, cached by their
    contents (the same parameters step after step reuse the device copies: no host→device copy).
    ``strides`` is ``()`` when every tensor is contiguous, else the ``[3·ND, T]`` table rows."""
    key = (device, ptrs, views, fit, r, strides)
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    counts = [triton.cdiv(v[1], r) if fit else v[1] for v in views]
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    dims = torch.tensor([[v[d] for v in views] for d in range(3)], dtype=torch.int64, device=device)
    out = (
        torch.tensor(ptrs, dtype=torch.int64, device=device),
        dims,
        torch.tensor(starts, dtype=torch.int64, device=device),
        torch.tensor(strides, dtype=torch.int64, device=device) if strides else dims,
        starts[-1],
    )
    if len(_TABLES) >= 256:
        _TABLES.clear()
    _TABLES[key] = out
    return out


_SCRATCH: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def scratch(device: torch.device, dtype: torch.dtype, numel: int) -> Tensor:
    """A cached buffer of at least ``numel`` elements per (device, dtype), grown when too small
    (the two-phase PG iterate). Launches on one device are stream-ordered, so consecutive launches
    share it; it is reallocated only when a larger bucket appears."""
    key = (torch.device(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
        _SCRATCH[key] = buf
    return buf


def _stride_rows(rows: list[list[Tensor | None]]) -> tuple:
    """``()`` when every parameter and gradient is contiguous, else the rows of the ``[3·ND, T]``
    table: sizes, parameter strides, gradient strides (each tensor's dims right-aligned, padded
    with size 1, stride 0)."""
    if all(row[0].is_contiguous() and row[1].is_contiguous() for row in rows):
        return ()
    nd = max(max(1, row[0].dim()) for row in rows)
    sizes, pstr, gstr = [], [], []
    for row in rows:
        sz = [1] * (nd - row[0].dim()) + list(row[0].shape)
        sizes.append(sz)
        pstr.append([0] * (nd - row[0].dim()) + list(row[0].stride()))
        gstr.append([0] * (nd - row[1].dim()) + list(row[1].stride()))
    return tuple(tuple(t[i][d] for i in range(len(rows))) for t in (sizes, pstr, gstr) for d in range(nd))


def _contig(t: Tensor | None) -> Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def launch(
    alg: int,
    reg_code: int,
    solver: str,
    tensors: Sequence[Sequence[Tensor | None]],
    views: Sequence[tuple[int, int, int]],
    *,
    scalars: Mapping[str, float] | None = None,
    c_mix: float = 1.0,
    a_reg: float = 0.0,
    lam: float = 0.0,
    lam1: float = 0.0,
    omega: float = 1.0,
    max_iters: int = 0,
    rtol: float = 0.0,
    newton_tol: float = 0.0,
    newton_max: int = 0,
) -> None:
    """Run one step of algorithm ``alg`` on every tensor row ``(param, grad, s1, s2, s3)``.

    ``views[i]`` is the ``[A, G, B]`` view of row ``i`` (``(1, numel, 1)`` when unregularized);
    ``scalars`` the algorithm's named scalars (``ALG_SCALARS``; see :func:`.step._pre` for which
    algorithm reads which; the others are 0). Parameters are updated in place, and
    so is the state. Strided (e.g. channels_last) parameters and gradients are addressed through
    their strides, with no copy; state tensors are expected contiguous (the optimizers create them
    so) and a non-contiguous one is stepped through a contiguous copy. The two-phase PG path keeps
    its iterate in a cached scratch buffer (:func:`scratch`), not a per-step allocation.
    """
    check_writable(f"triton {_ALG_NAMES[alg]}", tensors)
    scalars = dict(scalars or {})
    unknown = set(scalars) - set(ALG_SCALARS)
    if unknown:
        raise ValueError(
            f"launch: unknown algorithm scalars {sorted(unknown)}; expected some of {ALG_SCALARS}"
        )
    ks = {name: float(scalars.get(name, 0.0)) for name in ALG_SCALARS}
    if reg_code == REG_NONE:
        solver = "prox"
    solver_code = SOLVERS[solver]
    configs: dict[tuple[bool, int, int], list[int]] = {}
    for i, (row, view) in enumerate(zip(tensors, views)):
        if row[0].numel() == 0:
            continue
        configs.setdefault(tile_config(view), []).append(i)
    for (fit, r, bk), idx in configs.items():
        rows = []
        copies = []
        for i in idx:
            row = list(tensors[i]) + [None] * (5 - len(tensors[i]))
            crow = row[:2] + [_contig(t) for t in row[2:]]
            copies.extend((t, ct) for t, ct in zip(row[2:], crow[2:]) if t is not None and ct is not t)
            rows.append(crow)
        p0 = rows[0][0]
        sdt = rows[0][2].dtype
        nt = len(rows)
        if not fit and solver_code == SOLVER_PG:
            sizes = [row[2].numel() for row in rows]
            buf = scratch(p0.device, sdt, sum(sizes))
            base, esz, acc = buf.data_ptr(), buf.element_size(), 0
            for row, n in zip(rows, sizes):
                row.append(base + acc * esz)
                acc += n
        else:
            for row in rows:
                row.append(None)
        ptrs = tuple(
            tuple(
                row[j] if isinstance(row[j], int) else (row[j] if row[j] is not None else row[0]).data_ptr()
                for row in rows
            )
            for j in range(6)
        )
        strides = _stride_rows(rows)
        ptab, dims, starts_t, strd, nprog = _tables(
            p0.device, ptrs, tuple(views[i] for i in idx), fit, r, strides
        )
        step_kernel[(nprog,)](
            ptab,
            dims,
            starts_t,
            strd,
            nt,
            **ks,
            c_mix=float(c_mix),
            a_reg=float(a_reg),
            lam=float(lam),
            lam1=float(lam1),
            omega=float(omega),
            max_iters=int(max_iters),
            rtol=float(rtol),
            newton_tol=float(newton_tol),
            newton_max=int(newton_max),
            ALG=alg,
            REG=reg_code,
            SOLVER=solver_code,
            FIT=fit,
            R=r,
            BK=bk,
            NSEARCH=max(1, nt.bit_length()),
            PDT=_TL_DTYPE[p0.dtype],
            SDT=_TL_DTYPE[sdt],
            ND=len(strides) // 3,
            num_warps=4 if r * bk <= 1024 else 8,
        )
        for t, ct in copies:
            t.copy_(ct)


# -- per-algorithm wrappers: (tensor lists, scalars) -> None --------------------------------------


def rmda(
    params,
    grads,
    anchors,
    grad_sums,
    views,
    *,
    t: int,
    alpha: float,
    lr: float,
    c: float,
    reg_code: int,
    **reg_scalars,
) -> None:
    """RMDA step of tensors sharing the counters ``t`` and ``alpha`` (docs/math.md §3)."""
    sqrt_t = math.sqrt(t)
    launch(
        ALG_RMDA,
        reg_code,
        "prox",
        list(zip(params, grads, anchors, grad_sums)),
        views,
        scalars=dict(grad_scale=lr * sqrt_t, sqrt_t=sqrt_t),
        c_mix=c,
        a_reg=alpha / sqrt_t,
        **reg_scalars,
    )


def ramda(
    params,
    grads,
    anchors,
    grad_sums,
    sq_grad_sums,
    views,
    *,
    t: int,
    alpha: float,
    lr: float,
    c: float,
    eps: float,
    reg_code: int,
    solver: str,
    **solver_scalars,
) -> None:
    """RAMDA step (docs/math.md §4): screening, then ``solver`` ("pg" or "exact") per group."""
    launch(
        ALG_RAMDA,
        reg_code,
        solver,
        list(zip(params, grads, anchors, grad_sums, sq_grad_sums)),
        views,
        scalars=dict(grad_scale=lr * math.sqrt(t), eps=eps),
        c_mix=c,
        a_reg=alpha,
        **solver_scalars,
    )


def proxsgd(
    params, grads, momentum_buffers, views, *, lr: float, c: float, reg_code: int, **reg_scalars
) -> None:
    """ProxSGD step (docs/math.md §5)."""
    launch(
        ALG_PROXSGD,
        reg_code,
        "prox",
        list(zip(params, grads, momentum_buffers)),
        views,
        scalars=dict(c_mom=c, lr=lr),
        a_reg=lr,
        **reg_scalars,
    )


def proxgen(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    views,
    *,
    t: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    reg_code: int,
    solver: str,
    **solver_scalars,
) -> None:
    """ProxGen step (docs/math.md §5): AdamW moments, weighted subproblem with weights D."""
    bc1 = 1 - beta1**t
    bc2 = 1 - beta2**t
    launch(
        ALG_PROXGEN,
        reg_code,
        solver,
        list(zip(params, grads, exp_avgs, exp_avg_sqs)),
        views,
        scalars=dict(
            decay=1 - lr * weight_decay,
            beta1=beta1,
            beta2=beta2,
            lin_scale=lr / bc1,
            sqrt_bc2=math.sqrt(bc2),
            eps=eps,
        ),
        a_reg=lr,
        **solver_scalars,
    )


def proxssi(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    views,
    *,
    t: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    reg_code: int,
    **solver_scalars,
) -> None:
    """ProxSSI step (docs/math.md §5): HF-style AdamW step, then the weighted group prox by Newton."""
    bc1 = 1 - beta1**t
    bc2 = 1 - beta2**t
    launch(
        ALG_PROXSSI,
        reg_code,
        "exact",
        list(zip(params, grads, exp_avgs, exp_avg_sqs)),
        views,
        scalars=dict(
            decay=-lr * weight_decay,
            beta1=beta1,
            beta2=beta2,
            ssi_step=-lr * math.sqrt(bc2) / bc1,
            eps=eps,
        ),
        a_reg=lr,
        **solver_scalars,
    )


def dessilbi(
    params,
    grads,
    momentum_buffers,
    zs,
    gammas,
    views,
    *,
    lr: float,
    kappa: float,
    nu: float,
    momentum: float,
    weight_decay: float,
    lam: float,
    magnitude_scaling: bool,
    scaling_floor: float,
) -> None:
    """DessiLBI step (docs/math.md §6, :mod:`.lbi_step`). ``zs``/``gammas`` empty: unpaired tensors
    (heavy-ball SGD scaled by κ); else each tensor's Z and Γ with its ``[A, G, B]`` group view of
    Ω_λ (L1: ``(1, numel, 1)``). ``magnitude_scaling`` runs a support-count launch first."""
    paired = len(zs) > 0
    rows_all = [[params[i], grads[i], momentum_buffers[i]] for i in range(len(params))]
    if paired:
        rows_all = [row + [zs[i], gammas[i]] for i, row in enumerate(rows_all)]
    check_writable("triton dessilbi_step", rows_all)
    lrk = lr * kappa
    configs: dict[tuple[bool, int, int], list[int]] = {}
    for i, (p, view) in enumerate(zip(params, views)):
        if p.numel():
            configs.setdefault(tile_config(view), []).append(i)
    for (fit, r, bk), idx in configs.items():
        rows, copies = [], []
        for i in idx:
            row = [params[i], grads[i], momentum_buffers[i]]
            row += [zs[i], gammas[i]] if paired else [None, None]
            crow = row[:2] + [_contig(t) for t in row[2:]]
            copies.extend((t, ct) for t, ct in zip(row[2:], crow[2:]) if t is not None and ct is not t)
            rows.append(crow)
        p0, sdt, nt = rows[0][0], rows[0][2].dtype, len(rows)
        ptrs = tuple(
            tuple((row[j] if row[j] is not None else row[0]).data_ptr() for row in rows) for j in range(5)
        )
        strides = _stride_rows(rows)
        ptab, dims, starts_t, strd, nprog = _tables(
            p0.device, ptrs, tuple(views[i] for i in idx), fit, r, strides
        )
        meta = dict(
            FIT=fit,
            R=r,
            BK=bk,
            NSEARCH=max(1, nt.bit_length()),
            PDT=_TL_DTYPE[p0.dtype],
            SDT=_TL_DTYPE[sdt],
            ND=len(strides) // 3,
            num_warps=4 if r * bk <= 1024 else 8,
        )
        ms = paired and magnitude_scaling
        cnt = counts(p0.device, 2 * nt) if ms else dims
        if ms:
            count_kernel[(nprog,)](ptab, dims, starts_t, strd, nt, cnt, **meta)
        dessilbi_kernel[(nprog,)](
            ptab,
            dims,
            starts_t,
            strd,
            nt,
            cnt,
            float(momentum),
            float(lrk),
            float(lrk * weight_decay),
            float(lrk / nu),
            float(lr / nu),
            float(kappa),
            float(lam),
            float(scaling_floor),
            PAIRED=paired,
            MS=ms,
            **meta,
        )
        for t, ct in copies:
            t.copy_(ct)


_COUNTS: dict[torch.device, Tensor] = {}


def counts(device: torch.device, numel: int) -> Tensor:
    """A zeroed int64 buffer of ``numel`` support counters, cached per device (grown on demand)."""
    key = torch.device(device)
    buf = _COUNTS.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.int64, device=device)
        _COUNTS[key] = buf
    out = buf[:numel]
    out.zero_()
    return out
