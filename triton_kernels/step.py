"""One Triton kernel family for every structsparse step (docs/math.md §3–§5).

Each algorithm is written as a *preamble* (update the state, then describe the per-group
subproblem ``min_X ⟨lin, X − center⟩ + ½ Σ P (X − center)² + a·ψ(X)``) followed by a *solver*:

- ``SOLVER_PROX``: closed form ``prox_{a·ψ}(center − lin/P)`` (RMDA and ProxSGD have P ≡ 1,
  lin ≡ 0; every algorithm without a regularizer is elementwise ``center − lin/P``);
- ``SOLVER_NEWTON``: the exact solves of docs/solvers.md. Group LASSO / L1: exact screening then
  Newton on the group norm (docs/math.md §4), by the rule of the C++ kernels
  (csrc/include/structsparse/math.h: start at the larger of two lower bounds of the root, stop on a
  small step or on an a-priori bound of the error left); sparse group LASSO: the same on the
  elementwise soft-thresholded ``pz`` (:func:`_exact_pz`); MCP (one-element groups): the closed
  form :func:`_mcp_weighted`; group MCP: Newton on ``s`` and, for nonconvex groups, the best of
  0, ``X(s)`` and Z (:func:`_gmcp_rows`; the rule of reference.py exact_group_mcp);
- ``SOLVER_PG``: screened proximal gradient with the per-group stopping rule of the reference
  backend and its "never worse than the warm start" guard.

Every grouping is an ``[A, G, B]`` view: group ``j`` holds ``x[a, j, b]``. A program owns whole
groups. When a group has at most ``BK`` elements (``FIT``), a program holds ``R`` groups as an
``[R, BK]`` register tile through all iterations (one read and one write of every tensor). A larger
group is owned by one program that walks it in ``BK`` chunks: phase 1 updates the state and
accumulates the group's partial sums, later phases apply (Newton/PG iterations re-read the group;
PG keeps its iterate in a scratch buffer; a nonconvex group-MCP group takes one more pass for the
objective of ``X(s)``). Each pass over a chunk reads it through :func:`_tile`.

Many tensors go in one launch: ``ptab`` is a ``[6, T]`` table of base addresses (param, grad,
state 1–3, scratch), ``dims`` a ``[3, T]`` table of ``A, G, B`` and ``starts`` the ``[T + 1]``
cumulative program counts; a program finds its tensor by binary search. Offsets are int64.
Parameters and gradients may be strided (e.g. channels_last): then ``ND > 0`` and ``strd`` is a
``[3·ND, T]`` table of sizes, parameter strides and gradient strides, and their offsets are
computed from the row-major ones (:func:`_remap`); state tensors are contiguous.
Scalars are runtime arguments (fp32); math runs in the state dtype ``SDT`` (fp32 for fp16/bf16
parameters). Reductions are plain ``tl.sum``/``tl.max`` inside one program: deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl

ALG_RMDA = 0
ALG_RAMDA = 1
ALG_PROXSGD = 2
ALG_PROXGEN = 3
ALG_PROXSSI = 4

REG_NONE = 0
REG_GROUP_LASSO = 1
REG_SPARSE_GROUP_LASSO = 2
REG_GROUP_MCP = 3

SOLVER_PROX = 0
SOLVER_NEWTON = 1
SOLVER_PG = 2


@triton.jit
def _newton_start(pzn, thr, pmax, sy, sc):
    """math.h newton_start: the larger of max((‖pz‖ − T)/max P, 0) and R − c̄ (sy = Σ y², sc =
    Σ y²/P, y = pz/P)."""
    r0 = tl.maximum((pzn - thr) / pmax, 0.0)
    pos = sy > 0
    sys_ = tl.where(pos, sy, 1.0)
    r1 = tl.where(pos, tl.sqrt(sys_) - thr * sc / sys_, 0.0)
    return tl.where((r1 > r0) & (r1 < float("inf")), r1, r0)


@triton.jit
def _newton_terms(pz, p, r, thr, msk):
    """math.h newton_terms per element (0 where masked): q², q²·P/(P r + T), q²·(T/(P r + T))²."""
    inv = 1.0 / tl.where(msk, p * r + thr, 1.0)
    q = tl.where(msk, pz * inv, 0.0)
    q2 = q * q
    ti = thr * inv
    return q2, q2 * p * inv, q2 * ti * ti


@triton.jit
def _newton_start_terms(pz, p, msk):
    """math.h newton_start_add's terms per element (0 where masked): y², y²/P with y = pz/P."""
    ip = 1.0 / tl.where(msk, p, 1.0)
    y = tl.where(msk, pz * ip, 0.0)
    ty = y * y
    return ty, ty * ip


@triton.jit
def _newton_next(r, s1, s2, s3, active, tol):
    """math.h newton_next for the active groups, given S, D, H at r: (next r, still active). A
    negative step is taken (never below 0); after a positive one the group stops once the a-priori
    error bound 2Kδ² (Kδ ≤ 1/8) is below tol·r, after a negative one once 2·K_R·δ² is (|δ| ≤ r/8)."""
    delta = s1 * (tl.sqrt(s1) - 1.0) / tl.where(active, s2, 1.0)
    move = active & (tl.abs(delta) > tol * r)
    neg = delta < 0.0
    rn = tl.where(move, tl.where(neg, tl.maximum(r + delta, 0.0), r + delta), r)
    bounded = move & (r > 0.0)
    den = tl.where(bounded, r * r * s2, 1.0)
    k = 1.5 * s3 * s1 * tl.sqrt(s1) / den
    done_pos = (k * delta <= 0.125) & (2.0 * k * delta * delta <= tol * rn)
    near = neg & (-delta <= 0.125 * r)
    c = r / tl.where(near, r + delta, 1.0)
    c2 = c * c
    k_r = 1.5 * s3 / den * (c2 * c2 * c2)
    done_neg = near & (2.0 * k_r * delta * delta <= tol * rn)
    done = bounded & tl.where(neg, done_neg, done_pos)
    return rn, move & ~done


@triton.jit
def _cbrt(u):
    """Cube root of u >= 0: exp2/log2 guess, one Newton step (cbrt(u) = 0 for u <= 0).

    Subnormal u is scaled by 2^24 first and the root by 2^-8 after, so the guess never meets a
    subnormal: a log2 that flushes it to zero would give y = 0 and an infinite or NaN Newton step
    (math.h's cbrt_nonneg scales u < 2^-96 by 2^96 instead: its CPU variant avoids all
    subnormal arithmetic, which Intel cores run as microcode assists). Under the interpreter: within 1 ulp of the correctly rounded cube
    root (tests/test_triton_backend.py test_cbrt_accuracy)."""
    pos = u > 0
    sub = u < 1.17549435e-38
    us = tl.where(pos, u * tl.where(sub, 16777216.0, 1.0), 1.0)
    y = tl.exp2(tl.log2(us) * (1.0 / 3.0))
    y = y - (y - us / (y * y)) * (1.0 / 3.0)
    return tl.where(pos, y * tl.where(sub, 0.00390625, 1.0), 0.0)


@triton.jit
def _pre(
    ALG: tl.constexpr,
    UPDATE: tl.constexpr,
    off,
    poff,
    goff,
    msk,
    pp,
    gp,
    s1,
    s2,
    s3,
    grad_scale,
    sqrt_t,
    eps,
    c_mom,
    lr,
    beta1,
    beta2,
    decay,
    lin_scale,
    sqrt_bc2,
    ssi_step,
    SDT: tl.constexpr,
):
    """Load one tile, update the state (``UPDATE``: the first pass over it), return the
    subproblem ``(lin, P, center, w)`` with ``w`` the current parameter in the state dtype.
    ``off``: element offsets in the (contiguous) state; ``poff``/``goff``: in the parameter and
    the gradient (equal to ``off`` unless they are strided). The scalars each algorithm reads are
    named in its branch (see the launch wrappers of launch.py); the others are unused."""
    w = tl.load(pp + poff, mask=msk, other=0.0).to(SDT)
    if UPDATE:
        g = tl.load(gp + goff, mask=msk, other=0.0).to(SDT)
    if ALG == 0:
        # RMDA: grad_scale = s = lr·sqrt(t), sqrt_t. s1 = W0, s2 = V.
        w0 = tl.load(s1 + off, mask=msk, other=0.0)
        v = tl.load(s2 + off, mask=msk, other=0.0)
        if UPDATE:
            v = v + grad_scale * g
            tl.store(s2 + off, v, mask=msk)
        center = w0 - v / sqrt_t
        lin = tl.zeros_like(w)
        p = lin + 1.0
    elif ALG == 1:
        # RAMDA: grad_scale = s, eps. s1 = W0, s2 = V, s3 = U.
        w0 = tl.load(s1 + off, mask=msk, other=0.0)
        v = tl.load(s2 + off, mask=msk, other=0.0)
        u = tl.load(s3 + off, mask=msk, other=0.0)
        if UPDATE:
            v = v + grad_scale * g
            u = u + (grad_scale * g) * g  # not s·(g·g): g·g overflows float from |g| = 1.8e19 on
            tl.store(s2 + off, v, mask=msk)
            tl.store(s3 + off, u, mask=msk)
        p = _cbrt(u) + eps
        lin = v
        center = w0
    elif ALG == 2:
        # ProxSGD: c_mom = c, lr. s1 = momentum buffer b.
        b = tl.load(s1 + off, mask=msk, other=0.0)
        if UPDATE:
            b = b * (1.0 - c_mom) + c_mom * g
            tl.store(s1 + off, b, mask=msk)
        center = w - lr * b
        lin = tl.zeros_like(w)
        p = lin + 1.0
    elif ALG == 3:
        # ProxGen: decay = 1 − lr·wd, beta1, beta2, lin_scale = lr/bc1, sqrt_bc2, eps.
        m = tl.load(s1 + off, mask=msk, other=0.0)
        v = tl.load(s2 + off, mask=msk, other=0.0)
        if UPDATE:
            m = m * beta1 + (1.0 - beta1) * g
            v = v * beta2 + ((1.0 - beta2) * g) * g  # not (1 − β2)·(g·g), which overflows first
            tl.store(s1 + off, m, mask=msk)
            tl.store(s2 + off, v, mask=msk)
        p = tl.sqrt(v) / sqrt_bc2 + eps
        lin = m * lin_scale
        center = w * decay
    else:
        # ProxSSI: decay = −lr·wd, beta1, beta2, ssi_step = −lr·sqrt(bc2)/bc1, eps.
        m = tl.load(s1 + off, mask=msk, other=0.0)
        v = tl.load(s2 + off, mask=msk, other=0.0)
        if UPDATE:
            m = m * beta1 + (1.0 - beta1) * g
            v = v * beta2 + ((1.0 - beta2) * g) * g  # not (1 − β2)·(g·g), which overflows first
            tl.store(s1 + off, m, mask=msk)
            tl.store(s2 + off, v, mask=msk)
        p = tl.sqrt(v) + eps
        w1 = w + ssi_step * (m / p)
        center = w1 + decay * w1
        lin = tl.zeros_like(w)
    p = tl.where(msk, p, 1.0)
    return lin, p, center, w


@triton.jit
def _remap(off, strd, ti, T, ND: tl.constexpr, WHICH: tl.constexpr):
    """Memory offsets of a strided tensor from its row-major (contiguous) offsets ``off``:
    unravel over the ``ND`` sizes of table ``strd`` (rows ``0..ND-1``) and dot with the strides in
    rows ``WHICH·ND .. WHICH·ND + ND − 1`` (1: parameter, 2: gradient)."""
    rem = off
    mem = off * 0
    for d in tl.static_range(ND):
        size = tl.load(strd + (ND - 1 - d) * T + ti)
        stride = tl.load(strd + (WHICH * ND + ND - 1 - d) * T + ti)
        mem += (rem % size) * stride
        rem = rem // size
    return mem


@triton.jit
def _offs(k, rows, B, GB, strd, ti, T, ND: tl.constexpr):
    """Offsets of elements ``k`` (index within the group) of groups ``rows`` in the ``[A, G, B]``
    view: ``(state, parameter, gradient)``. ``ND == 0``: every tensor of the launch is contiguous."""
    off = (k // B) * GB + rows[:, None] * B + (k % B)
    if ND == 0:
        poff = off
        goff = off
    else:
        poff = _remap(off, strd, ti, T, ND, 1)
        goff = _remap(off, strd, ti, T, ND, 2)
    return off, poff, goff


@triton.jit
def _tile(
    ALG: tl.constexpr,
    UPDATE: tl.constexpr,
    k,
    rows,
    rvalid,
    n,
    B,
    GB,
    strd,
    ti,
    T,
    pp,
    gp,
    s1,
    s2,
    s3,
    grad_scale,
    sqrt_t,
    eps,
    c_mom,
    lr,
    beta1,
    beta2,
    decay,
    lin_scale,
    sqrt_bc2,
    ssi_step,
    ND: tl.constexpr,
    SDT: tl.constexpr,
):
    """One pass's view of elements ``k`` of groups ``rows``: ``(off, poff, msk, lin, P, center, w)``
    (:func:`_offs`, then :func:`_pre`, which updates the state when ``UPDATE``)."""
    msk = rvalid[:, None] & (k < n)
    off, poff, goff = _offs(k, rows, B, GB, strd, ti, T, ND)
    lin, p, center, w = _pre(
        ALG, UPDATE, off, poff, goff, msk, pp, gp, s1, s2, s3,
        grad_scale, sqrt_t, eps, c_mom, lr, beta1, beta2, decay, lin_scale, sqrt_bc2, ssi_step, SDT,
    )  # fmt: skip
    return off, poff, msk, lin, p, center, w


@triton.jit
def _exact_pz(p, center, lin, t1, REG: tl.constexpr):
    """``pz = P⊙center − lin`` of the exact solves; sparse group LASSO soft-thresholds it by
    ``t1 = a·λ₁`` (its exact solve is then group LASSO's on that vector, docs/solvers.md)."""
    pz = p * center - lin
    if REG == 2:
        mag = tl.maximum(tl.abs(pz) - t1, 0.0)
        pz = tl.where(pz < 0, -mag, mag)
    return pz


@triton.jit
def _unregularized(p, center, lin, pz, REG: tl.constexpr):
    """The exact solve at a zero group threshold: ``Z = center − lin/P`` (sparse group LASSO:
    its soft-thresholded ``pz/P``)."""
    if REG == 2:
        out = pz / p
    else:
        out = center - lin / p
    return out


@triton.jit
def _gl_rows(pz, p, msk, rvalid, thr, newton_tol, newton_max):
    """Group LASSO's exact solve of R whole groups (rows) given ``pz``: 0 for a screened row
    (``‖pz‖ ≤ thr``), else ``pz·r/(P r + thr)`` with r by Newton (_newton_start, _newton_next)."""
    pzn = tl.sqrt(tl.sum(pz * pz, axis=1))
    kept = (pzn > thr) & rvalid
    pmax = tl.where(rvalid, tl.max(tl.where(msk, p, 0.0), axis=1), 1.0)
    ty, tc = _newton_start_terms(pz, p, msk)
    r = _newton_start(pzn, thr, pmax, tl.sum(ty, axis=1), tl.sum(tc, axis=1))
    active = kept & ((pzn * 0.0 + thr) > 0)
    it = tl.full([], 0, tl.int32)
    while (it < newton_max) & (tl.max(active.to(tl.int32), axis=0) > 0):
        t1, t2, t3 = _newton_terms(pz, p, r[:, None], thr, msk)
        r, active = _newton_next(
            r, tl.sum(t1, axis=1), tl.sum(t2, axis=1), tl.sum(t3, axis=1), active, newton_tol
        )
        it += 1
    xs = pz * r[:, None] / (p * r[:, None] + thr)
    return tl.where(kept[:, None], xs, 0.0)


@triton.jit
def _mcp_weighted(pz, p, a, lamg, omg):
    """math.h mcp_weighted per element: ``argmin_x ½P(x − z)² + a·MCP_{λg,ωg}(x)``, ``pz = P·z``.
    ``P > a/ωg``: the firm threshold; else the hard threshold at ``λg·sqrt(a·ωg·P)``."""
    c = a / omg
    z = pz / p
    apz = tl.abs(pz)
    al = a * lamg
    soft = tl.where(pz < 0, -(apz - al), apz - al)
    firm = tl.where(apz <= al, 0.0, tl.where(tl.abs(z) <= omg * lamg, soft / (p - c), z))
    hard = tl.where(apz > lamg * tl.sqrt(a * omg * p), z, 0.0)
    return tl.where(p > c, firm, hard)


@triton.jit
def _gmcp_start(pzn, thr, ppmax, smax):
    """Group MCP's Newton start ``s_L = (‖pz‖/T − 1)/max P'`` clamped to ``[0, 1/c]`` (1/c when
    ``max P' ≤ 0``)."""
    pos = ppmax > 0
    s = tl.where(pos, (pzn / thr - 1.0) / tl.where(pos, ppmax, 1.0), smax)
    return tl.minimum(tl.maximum(s, 0.0), smax)


@triton.jit
def _gmcp_terms(pz, pp, s, msk):
    """Per element (0 where masked): ``q² = pz²/(1 + P's)²`` and ``q²·P'/(1 + P's)`` (K and −K′/2)."""
    den = tl.where(msk, 1.0 + pp * s, 1.0)
    q2 = pz * pz / (den * den)
    return q2, q2 * pp / den


@triton.jit
def _gmcp_next(s, k, dk, thr, convex, active, tol, smax):
    """math.h gmcp_next for the active rows, given K and −K′/2 at s: convex rows step on
    ``K^(-1/2) − 1/T``, the others on ``K − T²``; a row stops when ``K′ ≥ 0``, on a step below
    ``tol·s`` or at ``1/c``. Returns (next s, still active)."""
    pos = dk > 0
    dks = tl.where(pos, dk, 1.0)
    delta = tl.where(convex, k * (tl.sqrt(k) / thr - 1.0) / dks, (k - thr * thr) / (2.0 * dks))
    going = active & pos & (tl.abs(delta) > tol * s)
    sn = tl.where(going, tl.minimum(tl.maximum(s + delta, 0.0), smax), s)
    return sn, going & (sn < smax)


@triton.jit
def _gmcp_x(pz, pp, s, kept, msk):
    """``X(s)_i = pz_i·s/(1 + P'_i s)`` of the kept rows, 0 for the screened ones."""
    den = tl.where(msk, 1.0 + pp * s, 1.0)
    return tl.where(kept[:, None], pz * s / den, 0.0)


@triton.jit
def _gmcp_zero_terms(pz, p):
    """Per element, float64: ``pz·z`` (twice the objective of 0) and ``z²`` (‖Z‖²), ``z = pz/P``."""
    pzd = pz.to(tl.float64)
    zd = pzd / p.to(tl.float64)
    return pzd * zd, zd * zd


@triton.jit
def _gmcp_x_terms(x, pz, p):
    """Per element, float64: ``P·(x − z)²`` and ``x²`` (the objective of X(s))."""
    pd = p.to(tl.float64)
    xd = x.to(tl.float64)
    d = xd - pz.to(tl.float64) / pd
    return pd * d * d, xd * xd


@triton.jit
def _mcp64(sq, lamg, omg):
    """``MCP_{λg,ωg}(sqrt(sq))`` in float64."""
    rho = tl.sqrt(sq)
    return tl.where(rho <= omg * lamg, lamg * rho - rho * rho / (2.0 * omg), omg * lamg * lamg * 0.5)


@triton.jit
def _gmcp_pick(f0, zsq, dsq, xsq, convex, n, a_reg, lam, omega):
    """The candidate of a nonconvex group MCP row with the smallest objective (float64), by the
    reference's rule and ties: X(s) when ``f(X) < f(0)``; Z when ``f(Z)`` is below the better of
    those; else 0. Sums: ``f0 = Σ pz·z``, ``zsq = ‖Z‖²``, ``dsq = Σ P(x − z)²``, ``xsq = ‖X‖²``.
    Returns ``(use Z, use 0)``; both False for convex rows."""
    wg = tl.sqrt(n.to(tl.float64))
    a = tl.cast(a_reg, tl.float64)
    lamg = tl.cast(lam, tl.float64) * wg
    omg = tl.cast(omega, tl.float64) * wg
    fzero = 0.5 * f0
    fz = a * _mcp64(zsq, lamg, omg)
    fx = 0.5 * dsq + a * _mcp64(xsq, lamg, omg)
    use_x = fx < fzero
    best = tl.where(use_x, fx, fzero)
    use_z = (~convex) & (fz < best)
    return use_z, (~convex) & (~use_x) & (~use_z)


@triton.jit
def _gmcp_rows(pz, p, msk, rvalid, n, a_reg, lam, omega, newton_tol, newton_max):
    """Group MCP's exact solve of R whole groups (rows) of ``n`` elements given ``pz``
    (docs/solvers.md, the rule of reference.py exact_group_mcp): one-element groups (MCP) in
    closed form (_mcp_weighted); else Newton on s from s_L, ``X(s)``, and for rows with
    ``min P < c`` the best of 0, ``X(s)`` and Z (_gmcp_pick)."""
    wg = tl.sqrt(n.to(tl.float32))
    lamg = lam * wg
    omg = omega * wg
    if n == 1:
        x = _mcp_weighted(pz, p, a_reg, lamg, omg)
    else:
        thr = a_reg * lamg
        c = a_reg / omg
        smax = 1.0 / c
        pp = p - c
        pzn = tl.sqrt(tl.sum(pz * pz, axis=1))
        convex = tl.min(tl.where(msk, p, float("inf")), axis=1) >= c
        s = _gmcp_start(pzn, thr, tl.max(tl.where(msk, pp, float("-inf")), axis=1), smax)
        kept = (pzn > thr) & rvalid
        active = kept & (s < smax) & ((pzn * 0.0 + thr) > 0)
        it = tl.full([], 0, tl.int32)
        while (it < newton_max) & (tl.max(active.to(tl.int32), axis=0) > 0):
            q2, dq = _gmcp_terms(pz, pp, s[:, None], msk)
            s, active = _gmcp_next(
                s, tl.sum(q2, axis=1), tl.sum(dq, axis=1), thr, convex, active, newton_tol, smax
            )
            it += 1
        x = _gmcp_x(pz, pp, s[:, None], kept, msk)
        if tl.max(tl.where(rvalid & ~convex, 1, 0), axis=0) > 0:
            a0, az = _gmcp_zero_terms(pz, p)
            ad, ax = _gmcp_x_terms(x, pz, p)
            use_z, use_0 = _gmcp_pick(
                tl.sum(a0, axis=1), tl.sum(az, axis=1), tl.sum(ad, axis=1), tl.sum(ax, axis=1),
                convex, n, a_reg, lam, omega,
            )  # fmt: skip
            x = tl.where(use_z[:, None], pz / p, x)
            x = tl.where(use_0[:, None], 0.0, x)
    return x


@triton.jit
def _soft(z, t1):
    """sign(z)·max(|z| − t1, 0) with t1 a [R] vector."""
    mag = tl.maximum(tl.abs(z) - t1[:, None], 0.0)
    return tl.where(z < 0, -mag, mag)


@triton.jit
def _prox_sq(z, tau, lam1, REG: tl.constexpr):
    """Per-row Σ y² of the vector whose norm the prox needs (y = z, or soft(z) for sparse group LASSO)."""
    if REG == 2:
        y = _soft(z, tau * lam1)
    else:
        y = z
    return tl.sum(y * y, axis=1)


@triton.jit
def _shrink_scale(nrm, thr):
    """math.h shrink_scale: an infinite norm (its sum of squares overflowed) takes the limit 1."""
    n = tl.maximum(nrm - thr, 0.0)
    den = n + thr
    s = tl.where(den > 0, n / tl.where(den > 0, den, 1.0), 0.0)
    return tl.where((den > 0) & (nrm == float("inf")), 1.0, s)


@triton.jit
def _firm_scale(rho, tau, lamg, omg):
    """Scale ``prox_{τ·MCP_{λg,ωg}}(ρ)/ρ`` of a group norm (firm threshold; hard when ωg ≤ τ)."""
    firm_ok = omg > tau
    safe = tl.where(firm_ok, 1.0 - tau / omg, 1.0)
    firm = tl.where(rho <= tau * lamg, 0.0, tl.where(rho <= omg * lamg, (rho - tau * lamg) / safe, rho))
    hard = tl.where(rho > lamg * tl.sqrt(tau * omg), rho, 0.0)
    new = tl.where(firm_ok, firm, hard)
    s = tl.where(rho > 0, new / tl.where(rho > 0, rho, 1.0), 0.0)
    return tl.where(rho == float("inf"), 1.0, s)  # an overflowed norm: the limit 1, as math.h


@triton.jit
def _row_norm(y, sq):
    """``sqrt(sq)`` per row of y (whole groups: the on-chip path) with ``sq = Σ y²``; a row whose
    sum overflowed to inf takes ``m·sqrt(Σ (y/m)²)``, m = max |y|, instead. The branch is taken
    only when some row overflowed: no cost otherwise."""
    nrm = tl.sqrt(sq)
    if tl.max(tl.where(sq == float("inf"), 1, 0), axis=0) > 0:
        m = tl.max(tl.abs(y), axis=1)
        ys = y / tl.where(m > 0, m, 1.0)[:, None]
        nrm = tl.where(sq == float("inf"), m * tl.sqrt(tl.sum(ys * ys, axis=1)), nrm)
    return nrm


@triton.jit
def _prox_apply(z, sq, tau, wg, lam, lam1, omega, REG: tl.constexpr, WHOLE: tl.constexpr):
    """prox_{τψ} of every row of z given the row's ``_prox_sq`` sum; τ is a [R] vector. ``WHOLE``:
    z holds whole groups (an overflowed sum is then recomputed scaled, ``_row_norm``); else a
    chunk, and an overflowed sum gives an infinite norm (the scales take their limit, 1)."""
    if WHOLE:
        if REG == 2:
            nrm = _row_norm(_soft(z, tau * lam1), sq)
        else:
            nrm = _row_norm(z, sq)
    else:
        nrm = tl.sqrt(sq)
    if REG == 1:
        out = z * _shrink_scale(nrm, tau * (lam * wg))[:, None]
    elif REG == 2:
        out = _soft(z, tau * lam1) * _shrink_scale(nrm, tau * (lam * wg))[:, None]
    elif REG == 3:
        out = z * _firm_scale(nrm, tau, lam * wg, omega * wg)[:, None]
    else:
        out = z
    return out


@triton.jit
def _psi(sq, ab, wg, lam, lam1, omega, REG: tl.constexpr):
    """ψ of a group from Σx² and Σ|x|."""
    rho = tl.sqrt(sq)
    if REG == 1:
        val = (lam * wg) * rho
    elif REG == 2:
        val = lam1 * ab + (lam * wg) * rho
    else:
        lamg = lam * wg
        omg = omega * wg
        inner = lamg * rho - rho * rho / (2.0 * omg)
        val = tl.where(rho <= omg * lamg, inner, omg * lamg * lamg * 0.5)
    return val


@triton.jit
def _smooth(x, lin, p, center):
    """The smooth part of the PG objective Q per row, in float64 like the whole of Q (_sq, _ab):
    the stopping rule compares consecutive Q to rtol, below float32's resolution
    (reference.py subproblem_objective)."""
    d = x.to(tl.float64) - center.to(tl.float64)
    return tl.sum(lin.to(tl.float64) * d + 0.5 * p.to(tl.float64) * d * d, axis=1)


@triton.jit
def _sq(x):
    """Σx² per row in float64 (Q's norm)."""
    xd = x.to(tl.float64)
    return tl.sum(xd * xd, axis=1)


@triton.jit
def _ab(x):
    """Σ|x| per row in float64 (Q's l1 term)."""
    return tl.sum(tl.abs(x.to(tl.float64)), axis=1)


@triton.jit
def _finish(ALG: tl.constexpr, w, x, c_mix):
    if ALG <= 1:
        out = w * (1.0 - c_mix) + c_mix * x
    else:
        out = x
    return out


@triton.jit
def _warm(ALG: tl.constexpr, w, center):
    """PG warm start: the current parameter (RAMDA) or the decayed / stepped point (ProxGen, ProxSSI)."""
    if ALG == 1:
        out = w
    else:
        out = center
    return out


@triton.jit
def step_kernel(
    ptab,
    dims,
    starts,
    strd,
    T,
    grad_scale,
    sqrt_t,
    eps,
    c_mom,
    lr,
    beta1,
    beta2,
    decay,
    lin_scale,
    sqrt_bc2,
    ssi_step,
    c_mix,
    a_reg,
    lam,
    lam1,
    omega,
    max_iters,
    rtol,
    newton_tol,
    newton_max,
    ALG: tl.constexpr,
    REG: tl.constexpr,
    SOLVER: tl.constexpr,
    FIT: tl.constexpr,
    R: tl.constexpr,
    BK: tl.constexpr,
    NSEARCH: tl.constexpr,
    PDT: tl.constexpr,
    SDT: tl.constexpr,
    ND: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    # -- which tensor: largest ti with starts[ti] <= pid -------------------------------------
    lo = pid * 0
    hi = lo + T
    for _ in tl.static_range(NSEARCH):
        mid = (lo + hi) // 2
        right = tl.load(starts + mid) <= pid
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    ti = lo
    lp = pid - tl.load(starts + ti)
    pp = tl.load(ptab + ti).to(tl.pointer_type(PDT))
    gp = tl.load(ptab + T + ti).to(tl.pointer_type(PDT))
    s1 = tl.load(ptab + 2 * T + ti).to(tl.pointer_type(SDT))
    s2 = tl.load(ptab + 3 * T + ti).to(tl.pointer_type(SDT))
    s3 = tl.load(ptab + 4 * T + ti).to(tl.pointer_type(SDT))
    sx = tl.load(ptab + 5 * T + ti).to(tl.pointer_type(SDT))
    A = tl.load(dims + ti)
    G = tl.load(dims + T + ti)
    B = tl.load(dims + 2 * T + ti)
    n = A * B
    GB = G * B
    wg = tl.sqrt(n.to(tl.float32))

    rows = lp * R + tl.arange(0, R).to(tl.int64)  # group indices [R]
    rvalid = rows < G
    cols = tl.arange(0, BK).to(tl.int64)
    tau0 = tl.zeros([R], dtype=tl.float32) + a_reg  # [R] threshold multiplier

    if FIT:
        off, poff, msk, lin, p, center, w = _tile(
            ALG,
            True,
            cols[None, :],
            rows,
            rvalid,
            n,
            B,
            GB,
            strd,
            ti,
            T,
            pp,
            gp,
            s1,
            s2,
            s3,
            grad_scale,
            sqrt_t,
            eps,
            c_mom,
            lr,
            beta1,
            beta2,
            decay,
            lin_scale,
            sqrt_bc2,
            ssi_step,
            ND,
            SDT,
        )
        if SOLVER == 0:
            z = center - lin / p
            x = _prox_apply(z, _prox_sq(z, tau0, lam1, REG), tau0, wg, lam, lam1, omega, REG, True)
        elif SOLVER == 1:
            thr = a_reg * lam * wg
            pz = _exact_pz(p, center, lin, a_reg * lam1, REG)
            if REG == 3:
                x = _gmcp_rows(pz, p, msk, rvalid, n, a_reg, lam, omega, newton_tol, newton_max)
            else:
                x = _gl_rows(pz, p, msk, rvalid, thr, newton_tol, newton_max)
            x = tl.where((p * 0.0 + thr) == 0, _unregularized(p, center, lin, pz, REG), x)
        else:
            pmax = tl.where(rvalid, tl.max(tl.where(msk, p, 0.0), axis=1), 1.0)
            eta = 1.0 / pmax
            if REG == 3:
                eta = eta * 0.5
            if REG == 1:
                pz = p * center - lin
                zero = tl.sqrt(tl.sum(pz * pz, axis=1)) <= a_reg * lam * wg
            else:
                zero = rows < 0
            warm = _warm(ALG, w, center)
            x = tl.where(zero[:, None], 0.0, warm)
            q0 = _smooth(warm, lin, p, center) + a_reg * _psi(_sq(warm), _ab(warm), wg, lam, lam1, omega, REG)
            q_prev = _smooth(x, lin, p, center) + a_reg * _psi(_sq(x), _ab(x), wg, lam, lam1, omega, REG)
            active = (~zero) & rvalid
            tau = eta * a_reg
            it = tl.full([], 0, tl.int32)
            while (it < max_iters) & (tl.max(active.to(tl.int32), axis=0) > 0):
                it += 1
                y = x - eta[:, None] * (lin + p * (x - center))
                xn = _prox_apply(y, _prox_sq(y, tau, lam1, REG), tau, wg, lam, lam1, omega, REG, True)
                q = _smooth(xn, lin, p, center) + a_reg * _psi(_sq(xn), _ab(xn), wg, lam, lam1, omega, REG)
                x = tl.where(active[:, None], xn, x)
                done = (it >= 2) & ((q_prev - q) / (tl.abs(q) + 1.0) < rtol)
                q_prev = tl.where(active, q, q_prev)
                active = active & (~done)
            worse = (~zero) & (q_prev > q0)
            x = tl.where(worse[:, None], warm, x)
        tl.store(pp + poff, _finish(ALG, w, x, c_mix).to(PDT), mask=msk)
    else:
        # One program per group (R == 1), walked in BK chunks.
        if SOLVER == 0:
            sq = tl.zeros([R], dtype=SDT)
            for c0 in range(0, n, BK):
                off, poff, msk, lin, p, center, w = _tile(
                    ALG,
                    True,
                    c0 + cols[None, :],
                    rows,
                    rvalid,
                    n,
                    B,
                    GB,
                    strd,
                    ti,
                    T,
                    pp,
                    gp,
                    s1,
                    s2,
                    s3,
                    grad_scale,
                    sqrt_t,
                    eps,
                    c_mom,
                    lr,
                    beta1,
                    beta2,
                    decay,
                    lin_scale,
                    sqrt_bc2,
                    ssi_step,
                    ND,
                    SDT,
                )
                sq += _prox_sq(center - lin / p, tau0, lam1, REG)
            for c0 in range(0, n, BK):
                off, poff, msk, lin, p, center, w = _tile(
                    ALG,
                    False,
                    c0 + cols[None, :],
                    rows,
                    rvalid,
                    n,
                    B,
                    GB,
                    strd,
                    ti,
                    T,
                    pp,
                    gp,
                    s1,
                    s2,
                    s3,
                    grad_scale,
                    sqrt_t,
                    eps,
                    c_mom,
                    lr,
                    beta1,
                    beta2,
                    decay,
                    lin_scale,
                    sqrt_bc2,
                    ssi_step,
                    ND,
                    SDT,
                )
                x = _prox_apply(center - lin / p, sq, tau0, wg, lam, lam1, omega, REG, False)
                tl.store(pp + poff, _finish(ALG, w, x, c_mix).to(PDT), mask=msk)
        elif SOLVER == 1:
            thr = a_reg * lam * wg
            t1 = a_reg * lam1
            if REG == 3:
                # group MCP: pass 1 sums ‖pz‖², max/min P and the objectives of 0 and Z; Newton
                # passes on s; for nonconvex groups one pass for the objective of X(s); the write.
                c = a_reg / (omega * wg)
                smax = 1.0 / c
                pzsq = tl.zeros([R], dtype=SDT)
                pmax = tl.zeros([R], dtype=SDT)
                pmin = tl.full([R], float("inf"), dtype=SDT)
                f0 = tl.zeros([R], dtype=tl.float64)
                zsq = tl.zeros([R], dtype=tl.float64)
                for c0 in range(0, n, BK):
                    off, poff, msk, lin, p, center, w = _tile(
                        ALG,
                        True,
                        c0 + cols[None, :],
                        rows,
                        rvalid,
                        n,
                        B,
                        GB,
                        strd,
                        ti,
                        T,
                        pp,
                        gp,
                        s1,
                        s2,
                        s3,
                        grad_scale,
                        sqrt_t,
                        eps,
                        c_mom,
                        lr,
                        beta1,
                        beta2,
                        decay,
                        lin_scale,
                        sqrt_bc2,
                        ssi_step,
                        ND,
                        SDT,
                    )
                    pz = p * center - lin
                    pzsq += tl.sum(pz * pz, axis=1)
                    pmax = tl.maximum(pmax, tl.max(tl.where(msk, p, 0.0), axis=1))
                    pmin = tl.minimum(pmin, tl.min(tl.where(msk, p, float("inf")), axis=1))
                    a0, az = _gmcp_zero_terms(pz, p)
                    f0 += tl.sum(a0, axis=1)
                    zsq += tl.sum(az, axis=1)
                pzn = tl.sqrt(pzsq)
                convex = pmin >= c
                s = _gmcp_start(pzn, thr, pmax - c, smax)
                kept = (pzn > thr) & rvalid
                active = kept & (s < smax) & ((pzn * 0.0 + thr) > 0)
                it = tl.full([], 0, tl.int32)
                while (it < newton_max) & (tl.max(active.to(tl.int32), axis=0) > 0):
                    ks = tl.zeros([R], dtype=SDT)
                    dks = tl.zeros([R], dtype=SDT)
                    for c0 in range(0, n, BK):
                        off, poff, msk, lin, p, center, w = _tile(
                            ALG,
                            False,
                            c0 + cols[None, :],
                            rows,
                            rvalid,
                            n,
                            B,
                            GB,
                            strd,
                            ti,
                            T,
                            pp,
                            gp,
                            s1,
                            s2,
                            s3,
                            grad_scale,
                            sqrt_t,
                            eps,
                            c_mom,
                            lr,
                            beta1,
                            beta2,
                            decay,
                            lin_scale,
                            sqrt_bc2,
                            ssi_step,
                            ND,
                            SDT,
                        )
                        pz = p * center - lin
                        q2, dq = _gmcp_terms(pz, p - c, s[:, None], msk)
                        ks += tl.sum(q2, axis=1)
                        dks += tl.sum(dq, axis=1)
                    s, active = _gmcp_next(s, ks, dks, thr, convex, active, newton_tol, smax)
                    it += 1
                use_z = rows < 0
                use_0 = rows < 0
                if tl.max(tl.where(rvalid & ~convex, 1, 0), axis=0) > 0:
                    dsq = tl.zeros([R], dtype=tl.float64)
                    xsq = tl.zeros([R], dtype=tl.float64)
                    for c0 in range(0, n, BK):
                        off, poff, msk, lin, p, center, w = _tile(
                            ALG,
                            False,
                            c0 + cols[None, :],
                            rows,
                            rvalid,
                            n,
                            B,
                            GB,
                            strd,
                            ti,
                            T,
                            pp,
                            gp,
                            s1,
                            s2,
                            s3,
                            grad_scale,
                            sqrt_t,
                            eps,
                            c_mom,
                            lr,
                            beta1,
                            beta2,
                            decay,
                            lin_scale,
                            sqrt_bc2,
                            ssi_step,
                            ND,
                            SDT,
                        )
                        pz = p * center - lin
                        x = _gmcp_x(pz, p - c, s[:, None], kept, msk)
                        ad, ax = _gmcp_x_terms(x, pz, p)
                        dsq += tl.sum(ad, axis=1)
                        xsq += tl.sum(ax, axis=1)
                    use_z, use_0 = _gmcp_pick(f0, zsq, dsq, xsq, convex, n, a_reg, lam, omega)
                for c0 in range(0, n, BK):
                    off, poff, msk, lin, p, center, w = _tile(
                        ALG,
                        False,
                        c0 + cols[None, :],
                        rows,
                        rvalid,
                        n,
                        B,
                        GB,
                        strd,
                        ti,
                        T,
                        pp,
                        gp,
                        s1,
                        s2,
                        s3,
                        grad_scale,
                        sqrt_t,
                        eps,
                        c_mom,
                        lr,
                        beta1,
                        beta2,
                        decay,
                        lin_scale,
                        sqrt_bc2,
                        ssi_step,
                        ND,
                        SDT,
                    )
                    pz = p * center - lin
                    x = _gmcp_x(pz, p - c, s[:, None], kept, msk)
                    x = tl.where(use_z[:, None], pz / p, x)
                    x = tl.where(use_0[:, None], 0.0, x)
                    x = tl.where((p * 0.0 + thr) == 0, center - lin / p, x)
                    tl.store(pp + poff, _finish(ALG, w, x, c_mix).to(PDT), mask=msk)
            else:
                # group LASSO, and sparse group LASSO on the soft-thresholded pz (_exact_pz)
                pzsq = tl.zeros([R], dtype=SDT)
                pmax = tl.zeros([R], dtype=SDT)
                sy = tl.zeros([R], dtype=SDT)
                sc = tl.zeros([R], dtype=SDT)
                for c0 in range(0, n, BK):
                    off, poff, msk, lin, p, center, w = _tile(
                        ALG,
                        True,
                        c0 + cols[None, :],
                        rows,
                        rvalid,
                        n,
                        B,
                        GB,
                        strd,
                        ti,
                        T,
                        pp,
                        gp,
                        s1,
                        s2,
                        s3,
                        grad_scale,
                        sqrt_t,
                        eps,
                        c_mom,
                        lr,
                        beta1,
                        beta2,
                        decay,
                        lin_scale,
                        sqrt_bc2,
                        ssi_step,
                        ND,
                        SDT,
                    )
                    pz = _exact_pz(p, center, lin, t1, REG)
                    pzsq += tl.sum(pz * pz, axis=1)
                    pmax = tl.maximum(pmax, tl.max(tl.where(msk, p, 0.0), axis=1))
                    ty, tc = _newton_start_terms(pz, p, msk)
                    sy += tl.sum(ty, axis=1)
                    sc += tl.sum(tc, axis=1)
                pzn = tl.sqrt(pzsq)
                kept = (pzn > thr) & rvalid
                r = _newton_start(pzn, thr, tl.where(rvalid, pmax, 1.0), sy, sc)
                active = kept & ((pzn * 0.0 + thr) > 0)
                it = tl.full([], 0, tl.int32)
                while (it < newton_max) & (tl.max(active.to(tl.int32), axis=0) > 0):
                    s1n = tl.zeros([R], dtype=SDT)
                    s2n = tl.zeros([R], dtype=SDT)
                    s3n = tl.zeros([R], dtype=SDT)
                    for c0 in range(0, n, BK):
                        off, poff, msk, lin, p, center, w = _tile(
                            ALG,
                            False,
                            c0 + cols[None, :],
                            rows,
                            rvalid,
                            n,
                            B,
                            GB,
                            strd,
                            ti,
                            T,
                            pp,
                            gp,
                            s1,
                            s2,
                            s3,
                            grad_scale,
                            sqrt_t,
                            eps,
                            c_mom,
                            lr,
                            beta1,
                            beta2,
                            decay,
                            lin_scale,
                            sqrt_bc2,
                            ssi_step,
                            ND,
                            SDT,
                        )
                        pz = _exact_pz(p, center, lin, t1, REG)
                        n1, n2, n3 = _newton_terms(pz, p, r[:, None], thr, msk)
                        s1n += tl.sum(n1, axis=1)
                        s2n += tl.sum(n2, axis=1)
                        s3n += tl.sum(n3, axis=1)
                    r, active = _newton_next(r, s1n, s2n, s3n, active, newton_tol)
                    it += 1
                for c0 in range(0, n, BK):
                    off, poff, msk, lin, p, center, w = _tile(
                        ALG,
                        False,
                        c0 + cols[None, :],
                        rows,
                        rvalid,
                        n,
                        B,
                        GB,
                        strd,
                        ti,
                        T,
                        pp,
                        gp,
                        s1,
                        s2,
                        s3,
                        grad_scale,
                        sqrt_t,
                        eps,
                        c_mom,
                        lr,
                        beta1,
                        beta2,
                        decay,
                        lin_scale,
                        sqrt_bc2,
                        ssi_step,
                        ND,
                        SDT,
                    )
                    pz = _exact_pz(p, center, lin, t1, REG)
                    xs = pz * r[:, None] / (p * r[:, None] + thr)
                    xs = tl.where(kept[:, None], xs, 0.0)
                    x = tl.where((p * 0.0 + thr) == 0, _unregularized(p, center, lin, pz, REG), xs)
                    tl.store(pp + poff, _finish(ALG, w, x, c_mix).to(PDT), mask=msk)
        else:
            # PG with the iterate in the scratch buffer sx.
            pzsq = tl.zeros([R], dtype=SDT)
            pmax = tl.zeros([R], dtype=SDT)
            sm_warm = tl.zeros([R], dtype=tl.float64)  # Q's sums in float64 (_smooth)
            sq_warm = tl.zeros([R], dtype=tl.float64)
            ab_warm = tl.zeros([R], dtype=tl.float64)
            sm_zero = tl.zeros([R], dtype=tl.float64)
            for c0 in range(0, n, BK):
                off, poff, msk, lin, p, center, w = _tile(
                    ALG,
                    True,
                    c0 + cols[None, :],
                    rows,
                    rvalid,
                    n,
                    B,
                    GB,
                    strd,
                    ti,
                    T,
                    pp,
                    gp,
                    s1,
                    s2,
                    s3,
                    grad_scale,
                    sqrt_t,
                    eps,
                    c_mom,
                    lr,
                    beta1,
                    beta2,
                    decay,
                    lin_scale,
                    sqrt_bc2,
                    ssi_step,
                    ND,
                    SDT,
                )
                pz = p * center - lin
                pzsq += tl.sum(pz * pz, axis=1)
                pmax = tl.maximum(pmax, tl.max(tl.where(msk, p, 0.0), axis=1))
                warm = _warm(ALG, w, center)
                sm_warm += _smooth(warm, lin, p, center)
                sq_warm += _sq(warm)
                ab_warm += _ab(warm)
                sm_zero += _smooth(warm * 0.0, lin, p, center)
                tl.store(sx + off, warm, mask=msk)
            eta = 1.0 / tl.where(rvalid, pmax, 1.0)
            if REG == 3:
                eta = eta * 0.5
            if REG == 1:
                zero = tl.sqrt(pzsq) <= a_reg * lam * wg
            else:
                zero = rows < 0
            q0 = sm_warm + a_reg * _psi(sq_warm, ab_warm, wg, lam, lam1, omega, REG)
            zq = tl.zeros([R], dtype=tl.float64)
            q_prev = tl.where(zero, sm_zero + a_reg * _psi(zq, zq, wg, lam, lam1, omega, REG), q0)
            active = (~zero) & rvalid
            tau = eta * a_reg
            it = tl.full([], 0, tl.int32)
            while (it < max_iters) & (tl.max(active.to(tl.int32), axis=0) > 0):
                it += 1
                ysq = tl.zeros([R], dtype=SDT)
                for c0 in range(0, n, BK):
                    off, poff, msk, lin, p, center, w = _tile(
                        ALG,
                        False,
                        c0 + cols[None, :],
                        rows,
                        rvalid,
                        n,
                        B,
                        GB,
                        strd,
                        ti,
                        T,
                        pp,
                        gp,
                        s1,
                        s2,
                        s3,
                        grad_scale,
                        sqrt_t,
                        eps,
                        c_mom,
                        lr,
                        beta1,
                        beta2,
                        decay,
                        lin_scale,
                        sqrt_bc2,
                        ssi_step,
                        ND,
                        SDT,
                    )
                    x = tl.load(sx + off, mask=msk, other=0.0)
                    y = x - eta[:, None] * (lin + p * (x - center))
                    ysq += _prox_sq(y, tau, lam1, REG)
                q = tl.zeros([R], dtype=tl.float64)
                xsq = tl.zeros([R], dtype=tl.float64)
                xab = tl.zeros([R], dtype=tl.float64)
                for c0 in range(0, n, BK):
                    off, poff, msk, lin, p, center, w = _tile(
                        ALG,
                        False,
                        c0 + cols[None, :],
                        rows,
                        rvalid,
                        n,
                        B,
                        GB,
                        strd,
                        ti,
                        T,
                        pp,
                        gp,
                        s1,
                        s2,
                        s3,
                        grad_scale,
                        sqrt_t,
                        eps,
                        c_mom,
                        lr,
                        beta1,
                        beta2,
                        decay,
                        lin_scale,
                        sqrt_bc2,
                        ssi_step,
                        ND,
                        SDT,
                    )
                    x = tl.load(sx + off, mask=msk, other=0.0)
                    y = x - eta[:, None] * (lin + p * (x - center))
                    xn = _prox_apply(y, ysq, tau, wg, lam, lam1, omega, REG, False)
                    tl.store(sx + off, xn, mask=msk)
                    q += _smooth(xn, lin, p, center)
                    xsq += _sq(xn)
                    xab += _ab(xn)
                q = q + a_reg * _psi(xsq, xab, wg, lam, lam1, omega, REG)
                done = (it >= 2) & ((q_prev - q) / (tl.abs(q) + 1.0) < rtol)
                q_prev = tl.where(active, q, q_prev)
                active = active & (~done)
            worse = (~zero) & (q_prev > q0)
            for c0 in range(0, n, BK):
                off, poff, msk, lin, p, center, w = _tile(
                    ALG,
                    False,
                    c0 + cols[None, :],
                    rows,
                    rvalid,
                    n,
                    B,
                    GB,
                    strd,
                    ti,
                    T,
                    pp,
                    gp,
                    s1,
                    s2,
                    s3,
                    grad_scale,
                    sqrt_t,
                    eps,
                    c_mom,
                    lr,
                    beta1,
                    beta2,
                    decay,
                    lin_scale,
                    sqrt_bc2,
                    ssi_step,
                    ND,
                    SDT,
                )
                x = tl.load(sx + off, mask=msk, other=0.0)
                x = tl.where(zero[:, None], 0.0, x)
                x = tl.where(worse[:, None], _warm(ALG, w, center), x)
                tl.store(pp + poff, _finish(ALG, w, x, c_mix).to(PDT), mask=msk)
