"""Reference backend: the mathematics of docs/math.md in plain PyTorch, one function per algorithm.

This module is the oracle every fused backend is tested against. It is written to read like
docs/math.md, not to be fast. Every step function takes one *bucket*: lists of parameters, gradients
and state tensors, plus the scalars of their param group. The optimizer classes have already
advanced the per-tensor counters (``steps``: t, ``alphas``: α) before calling.

Low-precision parameters (fp16/bf16) keep fp32 state; the math runs in the state's dtype and the
result is rounded into the parameter once per step.

Sharding: every reduction over a group's elements goes through ``group_sum``/``group_max`` and each
tensor is processed inside ``tensor_scope(param)``; in a single process these are plain sums and
no-ops, on FSDP2 shards they make the reductions global (see :mod:`structsparse.distributed`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..distributed import batched, group_max, group_sum, tensor_scope, tensor_sum
from ..regularizers import Regularizer, _group_norms
from .overlap import check_writable

# Newton on φ(r) (docs/math.md §4) stops when a step no longer increases r by more than this many ulps.
NEWTON_MAX_ITERS = 50
NEWTON_ULPS = 4.0


def _work(p: Tensor, state_dtype: torch.dtype) -> Tensor:
    """The parameter in the state's dtype (a copy for fp16/bf16, the parameter itself otherwise)."""
    return p if p.dtype == state_dtype else p.to(state_dtype)


def _store(p: Tensor, w: Tensor) -> None:
    if w is not p:
        p.copy_(w)


def cbrt(u: Tensor) -> Tensor:
    """``u^(1/3)`` of a nonnegative tensor, elementwise and independent of the element's position.

    ``pow`` in float32 is not: its vectorized body and its scalar tail round differently, so a
    shard (FSDP2's local rows) and the full tensor could get different ``P`` for the same element.
    float32/half inputs are therefore raised in float64 and rounded once — the correctly rounded
    cube root up to float64 ties (the C++ kernel's ``cbrt_nonneg`` rounds correctly in nearly all
    cases, so they agree bitwise almost always). float64 keeps ``pow`` (rare 1-ulp differences)."""
    if u.dtype == torch.float64:
        return u.pow(1.0 / 3.0)
    return u.to(torch.float64).pow_(1.0 / 3.0).to(u.dtype)


def _check(op: str, params: Sequence[Tensor], grads: Sequence[Tensor], *states: Sequence[Tensor]) -> None:
    """Reject a self-overlapping parameter or state tensor before the bucket is modified."""
    lists = [s for s in states if len(s)]
    check_writable(op, [[p, g, *st] for p, g, *st in zip(params, grads, *lists)])


def _mix(w: Tensor, w_tilde: Tensor, c: float) -> Tensor:
    """``W ← (1 − c)·W + c·W̃``."""
    return w.mul_(1 - c).add_(w_tilde, alpha=c)


# ---------------------------------------------------------------------------------------------
# Subproblem of RAMDA / ProxGen / ProxSSI (docs/math.md §4)
#
#   min_X  Q(X) = ⟨V, X − W0⟩ + ½ Σ_i P_i (X_i − W0_i)² + a·ψ(X),        P > 0
#
# i.e. the weighted prox ½‖X − Z‖²_P + a·ψ(X) with Z = W0 − V/P. Separable by group.
# ---------------------------------------------------------------------------------------------


def subproblem_objective(
    x3: Tensor, v3: Tensor, p3: Tensor, w03: Tensor, a: float, reg: Regularizer, shape
) -> Tensor:
    """Q restricted to each group, shape [G], evaluated in float64 whatever the parameters' dtype.

    The PG stopping rule compares consecutive values of Q to ``rtol`` (1e-8 by default, below
    float32's resolution): a float32 Q would let its own rounding decide when a group stops, and
    backends summing in different orders would stop at different iterations (docs/math.md §4.5)."""
    x3, v3, p3, w03 = x3.double(), v3.double(), p3.double(), w03.double()
    d = x3 - w03
    smooth = group_sum(v3 * d + 0.5 * p3 * d * d)
    return smooth + a * reg.group_values(x3, shape)


def screen(v3: Tensor, p3: Tensor, w03: Tensor, a: float, reg: Regularizer, shape) -> Tensor:
    """Exact screening for group LASSO: ``W̃_g = 0`` iff ``‖P⊙W0 − V‖_g ≤ T_g = a·λ·w_g``. Shape [G]."""
    pz_norm = _group_norms(p3 * w03 - v3).view(-1)
    return pz_norm <= a * reg.lam * reg.group_weight(shape)  # type: ignore[attr-defined]


def newton_group_lasso(v3: Tensor, p3: Tensor, w03: Tensor, a: float, reg: Regularizer, shape) -> Tensor:
    """Exact solution for group LASSO (``solver="exact"``).

    Kept group: ``W̃_i = P_i Z_i r / (P_i r + T)`` with ``r`` the root of
    ``φ(r) = Σ_i (P_i Z_i / (P_i r + T))² − 1``, found by Newton from
    ``r₀ = max(0, (‖P⊙Z‖ − T)/max_i P_i)`` (φ(r₀) ≥ 0, so the iterates increase monotonically).
    Each group stops once a Newton step is below ``NEWTON_ULPS`` ulps of r.
    """
    pz = p3 * w03 - v3  # P ⊙ Z
    thr = a * reg.lam * reg.group_weight(shape)  # type: ignore[attr-defined]
    if thr == 0:
        return w03 - v3 / p3
    pz_norm = _group_norms(pz).view(-1)
    kept = pz_norm > thr
    pmax = group_max(p3)
    r = ((pz_norm - thr) / pmax).clamp_min(0)
    tol = NEWTON_ULPS * torch.finfo(pz.dtype).eps
    active = kept.clone()
    for _ in range(NEWTON_MAX_ITERS):
        # an iteration with no active group changes nothing; torch.compile runs them all (no
        # host sync, no graph break)
        if not torch.compiler.is_compiling() and not bool(active.any()):
            break
        den = p3 * r.view(1, -1, 1) + thr
        q = pz / den
        sq, wsq = group_sum(q.pow(2), q.pow(2) * p3 / den)
        phi = sq - 1
        dphi = -2 * wsq
        delta = -phi / dphi
        step_ok = active & (delta > tol * r)
        r = torch.where(step_ok, r + delta, r)
        active = step_ok
    r3 = r.view(1, -1, 1)
    x = pz * r3 / (p3 * r3 + thr)
    return torch.where(kept.view(1, -1, 1), x, torch.zeros_like(x))


def _newton_on_norm(pz: Tensor, p3: Tensor, thr: float) -> Tensor:
    """The group-LASSO Newton of :func:`newton_group_lasso` on a given ``pz`` (``thr > 0``):
    screened groups (``‖pz‖ ≤ thr``) are 0, kept ones ``pz_i·r/(P_i r + thr)``."""
    pz_norm = group_sum(pz.pow(2)).sqrt()
    kept = pz_norm > thr
    pmax = group_max(p3)
    r = ((pz_norm - thr) / pmax).clamp_min(0)
    tol = NEWTON_ULPS * torch.finfo(pz.dtype).eps
    active = kept.clone()
    for _ in range(NEWTON_MAX_ITERS):
        if not bool(active.any()):
            break
        den = p3 * r.view(1, -1, 1) + thr
        q = pz / den
        sq, wsq = group_sum(q.pow(2), q.pow(2) * p3 / den)
        delta = (sq - 1) / (2 * wsq)
        step_ok = active & (delta > tol * r)
        r = torch.where(step_ok, r + delta, r)
        active = step_ok
    r3 = r.view(1, -1, 1)
    x = pz * r3 / (p3 * r3 + thr)
    return torch.where(kept.view(1, -1, 1), x, torch.zeros_like(x))


def exact_sparse_group_lasso(
    v3: Tensor, p3: Tensor, w03: Tensor, a: float, reg: Regularizer, shape
) -> Tensor:
    """Exact solution for sparse group LASSO ``ψ = λ₁‖·‖₁ + λ₂ w_g‖·‖``.

    The optimality conditions of ``½Σ P_i (X_i − Z_i)² + a·ψ(X)`` split: the ℓ₁ subgradient
    soft-thresholds ``pz = P⊙Z`` elementwise at ``a·λ₁`` (``u``), and what is left is the group
    LASSO problem with ``u`` in place of ``pz`` and ``T = a·λ₂·w_g``: screened iff ``‖u‖ ≤ T``,
    otherwise ``X_i = u_i·r/(P_i r + T)`` with Newton on the norm (:func:`newton_group_lasso`)."""
    pz = p3 * w03 - v3
    u = torch.sign(pz) * (pz.abs() - a * reg.lam_l1).clamp_min(0)  # type: ignore[attr-defined]
    thr = a * reg.lam_group * reg.group_weight(shape)  # type: ignore[attr-defined]
    if thr == 0:
        return u / p3
    return _newton_on_norm(u, p3, thr)


def mcp_weighted(pz: Tensor, p: Tensor, a: float, lam: float, omega: float) -> Tensor:
    """Elementwise ``argmin_x ½P(x − z)² + a·MCP_{λ,ω}(x)`` with ``pz = P·z`` (one-element groups).

    It is the unweighted prox of ``(a/P)·MCP`` at ``z``. ``P > a/ω`` (strongly convex): the firm
    threshold, 0 for ``|pz| ≤ aλ``, ``soft(pz, aλ)/(P − a/ω)`` while ``|z| ≤ ωλ``, else ``z``.
    ``P ≤ a/ω`` (concave on ``|x| ≤ ωλ``, so the minimum is 0 or ``z``): the hard threshold, ``z``
    when ``½P z² > a·ωλ²/2``, i.e. ``|pz| > λ·sqrt(a·ω·P)``, else 0."""
    c = a / omega
    z = pz / p
    firm = torch.where(
        pz.abs() <= a * lam,
        torch.zeros_like(pz),
        torch.where(z.abs() <= omega * lam, torch.sign(pz) * (pz.abs() - a * lam) / (p - c), z),
    )
    hard = torch.where(pz.abs() > lam * (a * omega * p).sqrt(), z, torch.zeros_like(z))
    return torch.where(p > c, firm, hard)


def exact_group_mcp(v3: Tensor, p3: Tensor, w03: Tensor, a: float, reg: Regularizer, shape) -> Tensor:
    """Exact (global) solution for group MCP ``ρ = MCP_{λ_g, ω_g}(‖·‖)``, ``λ_g = λw_g``, ``ω_g = ωw_g``.

    With ``T = a·λ_g``, ``c = a/ω_g``, ``P' = P − c`` and ``s ∈ [0, 1/c]``, the points
    ``X(s)_i = pz_i·s/(1 + P'_i s)`` are the minimizers of the smooth part on the spheres of radius
    ``0 … ‖Z‖`` (``X(1/c) = Z``), and along them the derivative of the objective in ``r = ‖X‖`` has
    the sign of ``T − sqrt(K(s))``, ``K(s) = Σ pz_i²/(1 + P'_i s)²`` (while ``r ≤ ω_gλ_g``; it is
    negative beyond, up to ``‖Z‖``). ``K`` is convex in ``s``, so it crosses ``T²`` downwards at most
    once, at ``s₁`` — the only interior local minimum, ``X(s₁)``, ``‖X(s₁)‖ = T·s₁ ≤ ω_gλ_g``.
    The global minimum is therefore one of 0, ``X(s₁)`` and ``Z``.

    - ``min_i P_i ≥ c`` (objective convex): one minimizer, found without comparing values:
      0 when screened (``‖pz‖ ≤ T``), else ``X(min(s₁, 1/c))`` (``s₁ > 1/c`` means ``‖Z‖ ≥ ω_gλ_g``
      and gives ``Z``). Newton runs on the Moré–Sorensen form ``K^(-1/2) − 1/T`` (concave here:
      the group-LASSO iteration, ``r = T·s``), from the lower bound ``s_L = (‖pz‖/T − 1)/max P'``.
    - otherwise (nonconvex): Newton on ``K − T²`` itself from ``s_L`` (``K ≥ T²`` on ``[0, s_L]``),
      which climbs to ``s₁`` without overshoot because ``K`` is convex; it stops where ``K′ ≥ 0``
      (no crossing) or at ``1/c``. The candidates 0, ``X(s)`` and ``Z`` are compared by their
      objective values (float64) and the smallest kept: a group never ends at a merely stationary
      point, and the comparison of valid points can only improve on a Newton that stopped early.

    One-element groups (MCP) take the closed form :func:`mcp_weighted`."""
    wg = reg.group_weight(shape)
    lam_g, om_g = reg.lam * wg, reg.omega * wg  # type: ignore[attr-defined]
    pz = p3 * w03 - v3
    thr = a * lam_g
    if thr == 0:
        return w03 - v3 / p3
    if wg == 1.0:
        return mcp_weighted(pz, p3, a, lam_g, om_g)
    c = a / om_g
    s_max = 1.0 / c
    pp = p3 - c
    pz2 = pz.pow(2)
    pz_norm = group_sum(pz2).sqrt()
    convex = -group_max(-p3) >= c
    ppmax = group_max(pp)
    s = torch.where(ppmax > 0, (pz_norm / thr - 1) / ppmax, torch.full_like(ppmax, s_max))
    s = s.clamp(0, s_max)
    kept = pz_norm > thr
    tol = NEWTON_ULPS * torch.finfo(pz.dtype).eps
    active = kept & (s < s_max)
    for _ in range(NEWTON_MAX_ITERS):
        if not bool(active.any()):
            break
        den = 1 + pp * s.view(1, -1, 1)
        q2 = pz2 / (den * den)
        k, dk = group_sum(q2, q2 * pp / den)  # K and −K′/2
        # convex: Newton on K^(-1/2) − 1/T; nonconvex: on K − T²
        delta = torch.where(convex, k * (k.sqrt() / thr - 1) / dk, (k - thr * thr) / (2 * dk))
        going = active & (dk > 0) & (delta.abs() > tol * s)
        s_new = torch.where(going, (s + delta).clamp(0, s_max), s)
        active = going & (s_new < s_max)
        s = s_new
    s3 = s.view(1, -1, 1)
    x = pz * s3 / (1 + pp * s3)
    x = torch.where(kept.view(1, -1, 1), x, torch.zeros_like(x))
    if bool(convex.all()):
        return x
    # nonconvex groups: the smallest objective among 0, X(s) and Z (float64)
    pzd, pd, xd = pz.double(), p3.double(), x.double()
    zd = pzd / pd
    f0 = 0.5 * group_sum(pzd * zd)
    fz = a * reg.group_values(zd, shape)
    fx = 0.5 * group_sum(pd * (xd - zd).pow(2)) + a * reg.group_values(xd, shape)
    use_x = fx < f0
    best = torch.where(use_x, fx, f0)
    use_z = ~convex & (fz < best)
    use_0 = ~convex & ~use_x & ~use_z
    z = pz / p3
    x = torch.where(use_z.view(1, -1, 1), z, x)
    return torch.where(use_0.view(1, -1, 1), torch.zeros_like(x), x)


def exact_solve(v3: Tensor, p3: Tensor, w03: Tensor, a: float, reg: Regularizer, shape) -> Tensor:
    """``solver="exact"`` for every regularizer that has one (``reg.exact_solve``)."""
    from ..regularizers import GroupMCP, SparseGroupLasso

    if isinstance(reg, SparseGroupLasso):
        return exact_sparse_group_lasso(v3, p3, w03, a, reg, shape)
    if isinstance(reg, GroupMCP):
        return exact_group_mcp(v3, p3, w03, a, reg, shape)
    return newton_group_lasso(v3, p3, w03, a, reg, shape)


#: the per-group PG iteration counts collected by pg_iteration_counts() (None: not collecting)
_pg_counts: list[tuple[tuple[int, ...], Tensor]] | None = None


@contextlib.contextmanager
def pg_iteration_counts() -> Iterator[list[tuple[tuple[int, ...], Tensor]]]:
    """Collect the iterations of every PG subproblem solve run on this backend inside the block:
    yields a list that gets one ``(parameter shape, counts)`` per solve, ``counts`` an int64 tensor
    with one entry per group (0 for a screened group). The fused backends stop each group at the
    reference's iteration (tests/test_subproblem.py), so these are their counts too. Off (the
    default), the solver pays one ``is None`` test per iteration."""
    global _pg_counts
    prev, _pg_counts = _pg_counts, []
    try:
        yield _pg_counts
    finally:
        _pg_counts = prev


def proximal_gradient(
    v3: Tensor,
    p3: Tensor,
    w03: Tensor,
    x03: Tensor,
    a: float,
    reg: Regularizer,
    shape,
    max_iters: int,
    rtol: float,
) -> Tensor:
    """Screened proximal gradient (RAMDA Algorithm 2), ``solver="pg"``.

    Per group: step ``η_g = 1/max_{i∈g} P_i`` (halved for a nonconvex ψ), warm start ``x03``,
    ``X ← prox_{η_g·a·ψ}(X − η_g (V + P⊙(X − W0)))``. **Stopping rule: per group** — a group stops
    when ``(Q_prev − Q)/(|Q| + 1) < rtol`` after at least 2 iterations, or after ``max_iters``.
    Screened groups (group LASSO family) are set to 0 without iterating. A group whose final
    objective is above its warm start's gets its warm start back.
    """
    g = v3.shape[1]
    if g == 0:
        return x03.clone()
    eta = 1.0 / group_max(p3)
    if reg.nonconvex:
        eta = eta / 2
    eta3 = eta.view(1, -1, 1)
    if reg.screenable:
        zero = screen(v3, p3, w03, a, reg, shape)
    else:
        zero = torch.zeros(g, dtype=torch.bool, device=v3.device)
    x = torch.where(zero.view(1, -1, 1), torch.zeros_like(x03), x03)
    qv, qp, qw = v3.double(), p3.double(), w03.double()  # Q's float64 inputs, cast once
    q0 = subproblem_objective(x03, qv, qp, qw, a, reg, shape)
    q_prev = subproblem_objective(x, qv, qp, qw, a, reg, shape)
    active = ~zero
    counts = _pg_counts
    iters = torch.zeros(g, dtype=torch.int64, device=v3.device) if counts is not None else None
    for j in range(1, max_iters + 1):
        # an iteration with no active group changes nothing; torch.compile runs them all (no
        # host sync, no graph break)
        if not torch.compiler.is_compiling() and not bool(active.any()):
            break
        if iters is not None:
            iters += active
        y = x - eta3 * (v3 + p3 * (x - w03))
        x_new = reg.prox_groups(y, eta * a, shape)
        q = subproblem_objective(x_new, qv, qp, qw, a, reg, shape)
        x = torch.where(active.view(1, -1, 1), x_new, x)
        done = (j >= 2) & ((q_prev - q) / (q.abs() + 1) < rtol)
        q_prev = torch.where(active, q, q_prev)
        active = active & ~done
    worse = ~zero & (q_prev > q0)
    if counts is not None:
        counts.append((tuple(shape), iters.cpu()))
    return torch.where(worse.view(1, -1, 1), x03, x)


def solve_subproblem(
    v: Tensor,
    p: Tensor,
    w0: Tensor,
    x0: Tensor,
    a: float,
    reg: Regularizer,
    solver: str,
    max_iters: int,
    rtol: float,
) -> Tensor:
    """Minimize Q of the module docstring over X; returns X with W0's shape."""
    shape = w0.shape
    vs = reg.view_shape(shape)
    v3, p3, w03, x03 = (t.contiguous().view(vs) for t in (v, p, w0, x0))
    if solver == "exact":
        x3 = exact_solve(v3, p3, w03, a, reg, shape)
    else:
        x3 = proximal_gradient(v3, p3, w03, x03, a, reg, shape, max_iters, rtol)
    return x3.reshape(shape)


def prox_bucket(
    reg: Regularizer | None, params: Sequence[Tensor], zs: Sequence[Tensor], taus: Sequence[float]
) -> list[Tensor]:
    """``prox_{tau·ψ}(z)`` of every tensor of a bucket (the closed-form prox of RMDA/ProxSGD).
    On shards, the group norms of the whole bucket are all-reduced together (``batched``)."""
    if reg is None:
        return list(zs)

    def run() -> list[Tensor]:
        out = []
        for p, z, tau in zip(params, zs, taus):
            with tensor_scope(p):
                out.append(reg.prox(z, tau))
        return out

    return batched(run)


# ---------------------------------------------------------------------------------------------
# RMDA (docs/math.md §3)
# ---------------------------------------------------------------------------------------------


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
    """``s = lr·sqrt(t)``; ``V ← V + s·g``; ``W̃ = prox_{(α/sqrt t)ψ}(W0 − V/sqrt t)``; ``W ← (1−c)W + cW̃``."""
    _check("rmda_step", params, grads, anchors, grad_sums)
    zs, taus = [], []
    for g, w0, v, t, alpha in zip(grads, anchors, grad_sums, steps, alphas):
        s = lr * math.sqrt(t)
        v.add_(g.to(v.dtype), alpha=s)
        zs.append(w0 - v / math.sqrt(t))
        taus.append(alpha / math.sqrt(t))
    for p, v, w_tilde in zip(params, grad_sums, prox_bucket(reg, params, zs, taus)):
        _store(p, _mix(_work(p, v.dtype), w_tilde, c))


# ---------------------------------------------------------------------------------------------
# RAMDA (docs/math.md §4)
# ---------------------------------------------------------------------------------------------


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
    """``V ← V + s·g``, ``U ← U + s·g⊙g``, ``P = cbrt(U) + ε``, ``W̃ = argmin Q`` with ``a = α``, mix by c."""
    _check("ramda_step", params, grads, anchors, grad_sums, sq_grad_sums)
    for p, g, w0, v, u, t, alpha in zip(params, grads, anchors, grad_sums, sq_grad_sums, steps, alphas):
        w = _work(p, v.dtype)
        g = g.to(v.dtype)
        s = lr * math.sqrt(t)
        v.add_(g, alpha=s)
        u.addcmul_(g, g, value=s)
        pc = cbrt(u).add_(eps)
        if reg is None:
            w_tilde = w0 - v / pc
        else:
            with tensor_scope(p):
                w_tilde = solve_subproblem(v, pc, w0, w, alpha, reg, solver, max_iters, rtol)
        _store(p, _mix(w, w_tilde, c))


# ---------------------------------------------------------------------------------------------
# Baselines (docs/math.md §5)
# ---------------------------------------------------------------------------------------------


def proxsgd_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float,
    c: float,
    reg: Regularizer | None,
) -> None:
    """``b ← (1 − c)·b + c·g`` (b starts at 0); ``W ← prox_{lr·ψ}(W − lr·b)``."""
    _check("proxsgd_step", params, grads, momentum_buffers)
    ys = []
    for p, g, b in zip(params, grads, momentum_buffers):
        b.mul_(1 - c).add_(g.to(b.dtype), alpha=c)
        ys.append(_work(p, b.dtype) - lr * b)
    for p, y in zip(params, prox_bucket(reg, params, ys, [lr] * len(ys))):
        p.copy_(y)


def _adam_moments(g: Tensor, m: Tensor, v: Tensor, beta1: float, beta2: float) -> None:
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)


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
    """AdamW base; subproblem ``min ⟨(lr/bc1)m, X − W⟩ + ½‖X − W‖²_D + lr·ψ(X)``, ``D = sqrt(v/bc2) + ε``."""
    _check("proxgen_step", params, grads, exp_avgs, exp_avg_sqs)
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        w = _work(p, m.dtype)
        g = g.to(m.dtype)
        w.mul_(1 - lr * weight_decay)
        _adam_moments(g, m, v, beta1, beta2)
        bc1 = 1 - beta1**t
        bc2 = 1 - beta2**t
        d = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
        lin = m * (lr / bc1)
        if reg is None:
            new = w - lin / d
        else:
            with tensor_scope(p):
                new = solve_subproblem(lin, d, w, w, lr, reg, solver, max_iters, rtol)
        _store(p, w.copy_(new))


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
    """HF-style AdamW step, decoupled decay after it, then the weighted group prox
    ``argmin_X ½‖X − W‖²_denom + lr·ψ(X)`` with ``denom = sqrt(v) + ε``, solved by Newton (§4)."""
    _check("proxssi_step", params, grads, exp_avgs, exp_avg_sqs)
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        w = _work(p, m.dtype)
        g = g.to(m.dtype)
        _adam_moments(g, m, v, beta1, beta2)
        bc1 = 1 - beta1**t
        bc2 = 1 - beta2**t
        denom = v.sqrt().add_(eps)
        w.addcdiv_(m, denom, value=-lr * math.sqrt(bc2) / bc1)
        w.add_(w, alpha=-lr * weight_decay)
        if reg is not None:
            with tensor_scope(p):
                w.copy_(solve_subproblem(torch.zeros_like(w), denom, w, w, lr, reg, "exact", 0, 0.0))
        _store(p, w)


# ---------------------------------------------------------------------------------------------
# DessiLBI (docs/math.md §6) — inverse scale space: W coupled to a sparse structure variable Γ
#
#   d ← μ·d + g                                   (heavy-ball buffer of the loss gradient only)
#   W ← W − lr·κ·(d + wd·W_old + (W_old − Γ)/ν)   (coupling and decay enter here, not the buffer)
#   Z ← Z + (lr/ν)·β ⊙ (W_old − Γ)                 (β = 1 unless magnitude_scaling)
#   Γ ← κ·ε ⊙ prox_{Ω_λ}(Z)                        (ε = 1 unless magnitude_scaling)
#
# prox_{Ω_λ} is ``reg.prox(Z, 1)``: soft threshold at λ for L1, group shrink at λ·w_g
# (w_g = sqrt(|g|)) for GroupLasso. The paper's unweighted group threshold λ_paper is therefore
# λ_paper = λ·sqrt(|g|) (e.g. a Conv2d filter group of I·kh·kw elements: λ = λ_paper/sqrt(I·kh·kw)).
# ---------------------------------------------------------------------------------------------


def dessilbi_magnitude_scales(
    w: Tensor, gamma: Tensor, reg: Regularizer, floor: float
) -> tuple[Tensor, Tensor]:
    """The scaling factors of the paper's eq. 14–15 for one tensor, as ``[1, G, 1]`` tensors on the
    regularizer's group view (group j = element for L1, filter/channel for group LASSO):

    - ``β_j = max(floor, min(1, 1/‖W_j‖) · (1 − #supp(Γ)/#supp(W)))`` — the support counts are over
      the whole tensor (the paper's layer), in elements; ``#supp(W) = 0`` counts as ratio 0;
    - ``ε_j = ‖W_j‖`` (``|W_j|`` for an element).

    On a shard (inside ``tensor_scope``) the group norms and both counts are global: per-group
    partial sums of squares (split groupings) and the two layer-wise counts are all-reduced.
    """
    w3 = reg.as_groups(w)
    norms = _group_norms(w3)
    nnz_w = int(tensor_sum(w != 0))
    nnz_gamma = int(tensor_sum(gamma != 0))
    ratio = nnz_gamma / nnz_w if nnz_w else 0.0
    beta = (1.0 / norms.clamp_min(1.0)) * (1.0 - ratio)
    return beta.clamp_min(floor), norms


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
    """One DessiLBI step of a bucket (see the section comment above; docs/math.md §6).

    ``reg=None`` (unpaired parameters): ``zs`` and ``gammas`` are empty and the step is heavy-ball
    SGD scaled by κ with the same decoupled decay, ``W ← W − lr·κ·(d + wd·W_old)``.
    Otherwise ``reg`` is L1 or GroupLasso (any grouping) and ``Z``, ``Γ`` are updated as above.
    ``d`` starts at 0, so the first step gives ``d = g`` (torch SGD, dampening 0).

    On shards the group reductions of the whole bucket are batched (``batched``): the prox norms
    of ``Z`` in one all-reduce per step; with ``magnitude_scaling`` one more for ``‖W_j‖`` and the
    support counts (which span every shard, so they are reduced for aligned groupings too).
    """
    paired = reg is not None
    if paired and not (len(zs) == len(gammas) == len(params)):
        raise ValueError("dessilbi_step: zs and gammas must match params when reg is given")
    if not paired and (len(zs) or len(gammas)):
        raise ValueError("dessilbi_step: zs and gammas must be empty when reg is None")
    _check("dessilbi_step", params, grads, momentum_buffers, zs, gammas)
    works, w_olds, resids = [], [], []
    for i, (p, g, d) in enumerate(zip(params, grads, momentum_buffers)):
        w = _work(p, d.dtype)
        w_old = w.clone() if paired or weight_decay != 0 else w
        d.mul_(momentum).add_(g.to(d.dtype))
        w.add_(d, alpha=-lr * kappa)
        if weight_decay != 0:
            w.add_(w_old, alpha=-lr * kappa * weight_decay)
        if paired:
            resid = w_old - gammas[i]  # W_old − Γ_k
            w.add_(resid, alpha=-lr * kappa / nu)
            w_olds.append(w_old)
            resids.append(resid)
        works.append(w)
    if paired:
        assert reg is not None
        if magnitude_scaling:

            def scales() -> list[tuple[Tensor, Tensor]]:
                out = []
                for p, w_old, gamma in zip(params, w_olds, gammas):
                    with tensor_scope(p):
                        out.append(dessilbi_magnitude_scales(w_old, gamma, reg, scaling_floor))
                return out

            sc = batched(scales)
            for z, resid, (beta, _) in zip(zs, resids, sc):
                z.add_((reg.as_groups(resid) * beta).view(z.shape), alpha=lr / nu)
            eps: list[Tensor | None] = [e for _, e in sc]
        else:
            for z, resid in zip(zs, resids):
                z.add_(resid, alpha=lr / nu)
            eps = [None] * len(zs)
        proxes = prox_bucket(reg, params, zs, [1.0] * len(zs))
        for z, gamma, prox, e in zip(zs, gammas, proxes, eps):
            if e is not None:
                gamma.copy_((reg.as_groups(prox) * e).view(z.shape).mul_(kappa))
            else:
                gamma.copy_(prox.mul_(kappa))
    for p, w in zip(params, works):
        _store(p, w)
