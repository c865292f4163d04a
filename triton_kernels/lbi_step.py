"""DessiLBI step kernel (docs/math.md §6; the math of ``reference.dessilbi_step``), one pass per tensor.

Per element (all right-hand sides use the values before the step)::

    d ← μ·d + g
    paired (a regularizer Ω_λ: L1 or group LASSO, as an [A, G, B] group view):
        R = W − Γ
        W ← W − lr·κ·d − lr·κ·wd·W − (lr·κ/ν)·R
        Z ← Z + (lr/ν)·β_j·R
        Γ ← κ·ε_j·prox_{Ω_λ}(Z)         prox: group shrink of Z_j at λ·sqrt(|g|) (L1: |g| = 1)
    unpaired: W ← W − lr·κ·d − lr·κ·wd·W

``β = ε = 1`` unless ``MS`` (magnitude scaling, paper eq. 14–15): ``ε_j = ‖W_j‖`` and
``β_j = max(floor, min(1, 1/‖W_j‖)·(1 − nnz(Γ)/nnz(W)))`` with the support counts over the whole
tensor, computed by :func:`count_kernel` first (integer atomics: exact and order-independent).

The prox needs the group norm of the *new* ``Z``: a group of at most ``BK`` elements (``FIT``) is
held on chip as one ``[R, BK]`` tile (one read and one write of every tensor); a larger group is
walked in ``BK`` chunks by one program: (``MS`` only: ‖W_j‖), then update ``d, W, Z`` and
accumulate ‖Z_j‖², then write ``Γ``. Tables, strides and the program → tensor search are those of
:mod:`.step` (``ptab`` rows: param, grad, d, Z, Γ).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .step import _offs, _row_norm, _shrink_scale


@triton.jit
def _locate(starts, T, NSEARCH: tl.constexpr):
    """(tensor index, program index within the tensor) of this program."""
    pid = tl.program_id(0).to(tl.int64)
    lo = pid * 0
    hi = lo + T
    for _ in tl.static_range(NSEARCH):
        mid = (lo + hi) // 2
        right = tl.load(starts + mid) <= pid
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    return lo, pid - tl.load(starts + lo)


@triton.jit
def count_kernel(
    ptab,
    dims,
    starts,
    strd,
    T,
    cnt,
    FIT: tl.constexpr,
    R: tl.constexpr,
    BK: tl.constexpr,
    NSEARCH: tl.constexpr,
    PDT: tl.constexpr,
    SDT: tl.constexpr,
    ND: tl.constexpr,
):
    """``cnt[ti] += nnz(W)``, ``cnt[T + ti] += nnz(Γ)`` over this program's groups."""
    ti, lp = _locate(starts, T, NSEARCH)
    pp = tl.load(ptab + ti).to(tl.pointer_type(PDT))
    gmp = tl.load(ptab + 4 * T + ti).to(tl.pointer_type(SDT))
    A = tl.load(dims + ti)
    G = tl.load(dims + T + ti)
    B = tl.load(dims + 2 * T + ti)
    n = A * B
    rows = lp * R + tl.arange(0, R).to(tl.int64)
    cols = tl.arange(0, BK).to(tl.int64)
    nw = tl.zeros([R], dtype=tl.int64)
    ng = tl.zeros([R], dtype=tl.int64)
    for c0 in range(0, n, BK):
        k = c0 + cols[None, :]
        msk = (rows < G)[:, None] & (k < n)
        off, poff, goff = _offs(k, rows, B, G * B, strd, ti, T, ND)
        w = tl.load(pp + poff, mask=msk, other=0.0)
        gam = tl.load(gmp + off, mask=msk, other=0.0)
        nw += tl.sum((w != 0).to(tl.int64), axis=1)
        ng += tl.sum((gam != 0).to(tl.int64), axis=1)
    tl.atomic_add(cnt + ti, tl.sum(nw, axis=0))
    tl.atomic_add(cnt + T + ti, tl.sum(ng, axis=0))


@triton.jit
def _update(w, g, d, gam, mom, lrk, lrk_wd, lrk_nu, lr_nu, beta, PAIRED: tl.constexpr):
    """(new d, new W, new Z increment) of one tile; ``beta`` is a [R] vector."""
    d = mom * d + g
    wn = w - lrk * d
    wn = wn - lrk_wd * w
    if PAIRED:
        resid = w - gam
        wn = wn - lrk_nu * resid
        dz = lr_nu * (resid * beta[:, None])
    else:
        dz = d * 0.0
    return d, wn, dz


@triton.jit
def _beta(wsq, nw, ng, floor):
    """β_j and ε_j of magnitude scaling from ‖W_j‖² and the tensor's support counts."""
    nrm = tl.sqrt(wsq)
    ratio = tl.where(nw > 0, ng.to(tl.float32) / tl.where(nw > 0, nw, 1).to(tl.float32), 0.0)
    beta = tl.maximum((1.0 / tl.maximum(nrm, 1.0)) * (1.0 - ratio), floor)
    return beta, nrm


@triton.jit
def dessilbi_kernel(
    ptab,
    dims,
    starts,
    strd,
    T,
    cnt,
    mom,
    lrk,
    lrk_wd,
    lrk_nu,
    lr_nu,
    kappa,
    lam,
    floor,
    PAIRED: tl.constexpr,
    MS: tl.constexpr,
    FIT: tl.constexpr,
    R: tl.constexpr,
    BK: tl.constexpr,
    NSEARCH: tl.constexpr,
    PDT: tl.constexpr,
    SDT: tl.constexpr,
    ND: tl.constexpr,
):
    ti, lp = _locate(starts, T, NSEARCH)
    pp = tl.load(ptab + ti).to(tl.pointer_type(PDT))
    gp = tl.load(ptab + T + ti).to(tl.pointer_type(PDT))
    dp = tl.load(ptab + 2 * T + ti).to(tl.pointer_type(SDT))
    zp = tl.load(ptab + 3 * T + ti).to(tl.pointer_type(SDT))
    gmp = tl.load(ptab + 4 * T + ti).to(tl.pointer_type(SDT))
    A = tl.load(dims + ti)
    G = tl.load(dims + T + ti)
    B = tl.load(dims + 2 * T + ti)
    n = A * B
    GB = G * B
    thr = lam * tl.sqrt(n.to(tl.float32))  # λ·w_g
    rows = lp * R + tl.arange(0, R).to(tl.int64)
    rvalid = rows < G
    cols = tl.arange(0, BK).to(tl.int64)
    ones = tl.zeros([R], dtype=SDT) + 1.0
    if MS:
        nw = tl.load(cnt + ti)
        ng = tl.load(cnt + T + ti)
    if FIT:
        k = cols[None, :]
        msk = rvalid[:, None] & (k < n)
        off, poff, goff = _offs(k, rows, B, GB, strd, ti, T, ND)
        w = tl.load(pp + poff, mask=msk, other=0.0).to(SDT)
        g = tl.load(gp + goff, mask=msk, other=0.0).to(SDT)
        d = tl.load(dp + off, mask=msk, other=0.0)
        if PAIRED:
            gam = tl.load(gmp + off, mask=msk, other=0.0)
            z = tl.load(zp + off, mask=msk, other=0.0)
            if MS:
                beta, eps = _beta(tl.sum(w * w, axis=1), nw, ng, floor)
            else:
                beta = ones
                eps = ones
        else:
            gam = w
            beta = ones
        d, wn, dz = _update(w, g, d, gam, mom, lrk, lrk_wd, lrk_nu, lr_nu, beta, PAIRED)
        tl.store(dp + off, d, mask=msk)
        tl.store(pp + poff, wn.to(PDT), mask=msk)
        if PAIRED:
            z = z + dz
            tl.store(zp + off, z, mask=msk)
            scale = _shrink_scale(_row_norm(z, tl.sum(z * z, axis=1)), thr)
            gam = (z * scale[:, None]) * eps[:, None]
            tl.store(gmp + off, gam * kappa, mask=msk)
    else:
        # One program per group (R == 1), walked in BK chunks.
        beta = ones
        eps = ones
        if PAIRED and MS:
            wsq = tl.zeros([R], dtype=SDT)
            for c0 in range(0, n, BK):
                k = c0 + cols[None, :]
                msk = rvalid[:, None] & (k < n)
                off, poff, goff = _offs(k, rows, B, GB, strd, ti, T, ND)
                w = tl.load(pp + poff, mask=msk, other=0.0).to(SDT)
                wsq += tl.sum(w * w, axis=1)
            beta, eps = _beta(wsq, nw, ng, floor)
        zsq = tl.zeros([R], dtype=SDT)
        for c0 in range(0, n, BK):
            k = c0 + cols[None, :]
            msk = rvalid[:, None] & (k < n)
            off, poff, goff = _offs(k, rows, B, GB, strd, ti, T, ND)
            w = tl.load(pp + poff, mask=msk, other=0.0).to(SDT)
            g = tl.load(gp + goff, mask=msk, other=0.0).to(SDT)
            d = tl.load(dp + off, mask=msk, other=0.0)
            if PAIRED:
                gam = tl.load(gmp + off, mask=msk, other=0.0)
            else:
                gam = w
            d, wn, dz = _update(w, g, d, gam, mom, lrk, lrk_wd, lrk_nu, lr_nu, beta, PAIRED)
            tl.store(dp + off, d, mask=msk)
            tl.store(pp + poff, wn.to(PDT), mask=msk)
            if PAIRED:
                z = tl.load(zp + off, mask=msk, other=0.0) + dz
                tl.store(zp + off, z, mask=msk)
                zsq += tl.sum(z * z, axis=1)
        if PAIRED:
            scale = _shrink_scale(tl.sqrt(zsq), thr)
            for c0 in range(0, n, BK):
                k = c0 + cols[None, :]
                msk = rvalid[:, None] & (k < n)
                off, poff, goff = _offs(k, rows, B, GB, strd, ti, T, ND)
                z = tl.load(zp + off, mask=msk, other=0.0)
                gam = (z * scale[:, None]) * eps[:, None]
                tl.store(gmp + off, gam * kappa, mask=msk)
