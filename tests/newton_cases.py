"""Hard cases for the exact group-LASSO solve (Newton's rule in csrc/include/structsparse/math.h),
shared by the cpu, Triton and CUDA-emulation tests: RAMDA state set directly with P
spread over decades within a group (U = exp(6·N(0,1)), P = cbrt(U) + ε), so that Newton's start is
poor and it takes several passes, and the independent root of each group by bisection in float64.
With a zero gradient RAMDA's step leaves V, U as they are and with c = 1 the parameter is the
solution."""

from __future__ import annotations

import torch

EPS, ALPHA = 1e-3, 1.0


def ramda_states(shapes, dtype, seed=11):
    """(U, W0, V) per shape."""
    gen = torch.Generator().manual_seed(seed)
    state = []
    for shape in shapes:
        u = torch.exp(6 * torch.randn(shape, generator=gen, dtype=torch.float64))
        w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
        v = torch.randn(shape, generator=gen, dtype=torch.float64) * u.pow(1 / 3)
        state.append((u.to(dtype), w0.to(dtype), v.to(dtype)))
    return state


def bisection_solution(shape, reg, lam, u, w0, v):
    """(x, kept): the exact solution in float64 and the groups left unscreened."""
    view = reg.view_shape(shape)
    p3 = (torch.pow(u.double(), 1 / 3) + EPS).view(view)
    pz3 = p3 * w0.double().view(view) - v.double().view(view)
    thr = ALPHA * lam * reg.group_weight(shape)
    kept = pz3.pow(2).sum((0, 2)).sqrt() > thr
    lo = torch.zeros(view[1], dtype=torch.float64)  # bisection on the decreasing φ(r)
    hi = torch.full((view[1],), 1e8, dtype=torch.float64)
    for _ in range(200):
        mid = (lo + hi) / 2
        phi = (pz3 / (p3 * mid.view(1, -1, 1) + thr)).pow(2).sum((0, 2)) - 1
        lo, hi = torch.where(phi > 0, mid, lo), torch.where(phi > 0, hi, mid)
    r = ((lo + hi) / 2).view(1, -1, 1)
    x = torch.where(kept.view(1, -1, 1), pz3 * r / (p3 * r + thr), torch.zeros_like(pz3)).reshape(shape)
    return x, kept


def ramda_exact(ramda_step, shapes, state, reg, dtype):
    """The parameters after one RAMDA ``solver="exact"`` step of a backend's ``ramda_step`` from
    ``state`` (zero gradient, c = 1: the subproblem's solution)."""
    ws = [torch.zeros(s, dtype=dtype) for s in shapes]
    us, w0s, vs = ([t[i].clone() for t in state] for i in range(3))
    n = len(shapes)
    ramda_step(
        ws, [torch.zeros_like(w) for w in ws], w0s, vs, us, steps=[1] * n, alphas=[ALPHA] * n,
        lr=0.1, c=1.0, eps=EPS, reg=reg, solver="exact", max_iters=0, rtol=0.0,
    )  # fmt: skip
    return ws


def assert_bisection(shapes, state, reg, lam, xs, tol, who):
    """Every solution in ``xs`` within ``tol`` (relative to its largest element) of the bisection
    root, and some group left unscreened."""
    kept_total = 0
    for shape, (u, w0, v), x in zip(shapes, state, xs):
        x_bis, kept = bisection_solution(shape, reg, lam, u, w0, v)
        err = (x.double() - x_bis).abs().max().item()
        assert err <= tol * (x_bis.abs().max().item() or 1.0), (who, shape, err)
        kept_total += int(kept.sum())
    assert kept_total > 0
