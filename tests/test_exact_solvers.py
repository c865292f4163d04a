"""solver="exact" for every regularizer that has one, against an independent brute-force minimizer
of the weighted subproblem ``min_x ½ Σ_i P_i (x_i − z_i)² + a·ψ(x)`` of one group (float64):
a dense grid refined by proximal-gradient descent for groups of 1–2 elements, multi-start
proximal gradient for larger ones. Random P (over 3 decades), z and a, plus cases placed on the
screening boundary and, for MCP/GroupMCP, on both sides of ``P = a/ω``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import structsparse as ss
from structsparse.backends import reference as ref

D = torch.float64


def psi(kind: str, x: np.ndarray, prm: dict) -> float:
    """ψ of one group written out independently of structsparse.regularizers."""
    n = x.size
    wg = math.sqrt(n)
    nrm = float(np.sqrt((x * x).sum()))
    if kind == "group_lasso":
        return prm["lam"] * wg * nrm
    if kind == "sgl":
        return prm["l1"] * float(np.abs(x).sum()) + prm["l2"] * wg * nrm
    lam, om = prm["lam"] * wg, prm["omega"] * wg  # group_mcp (n = 1: MCP)
    return lam * nrm - nrm * nrm / (2 * om) if nrm <= om * lam else om * lam * lam / 2


def objective(kind, x, p, z, a, prm) -> float:
    return 0.5 * float((p * (x - z) ** 2).sum()) + a * psi(kind, x, prm)


def prox(kind, y, tau, prm) -> np.ndarray:
    """Unweighted prox of tau·ψ on each row of y (closed forms; MCP: firm/hard threshold of the norm)."""
    n = y.shape[1]
    wg = math.sqrt(n)
    if kind == "sgl":
        y = np.sign(y) * np.maximum(np.abs(y) - tau * prm["l1"], 0)
    rho = np.sqrt((y * y).sum(axis=1, keepdims=True))
    safe = np.where(rho > 0, rho, 1.0)
    if kind in ("sgl", "group_lasso"):
        thr = tau * (prm["l2"] if kind == "sgl" else prm["lam"]) * wg
        return y * np.maximum(0.0, 1 - thr / safe)
    lam, om = prm["lam"] * wg, prm["omega"] * wg
    if om > tau:
        new = np.where(
            rho <= tau * lam, 0.0, np.where(rho <= om * lam, (rho - tau * lam) / (1 - tau / om), rho)
        )
    else:
        new = np.where(rho > lam * math.sqrt(tau * om), rho, 0.0)
    return y * (new / safe)


def objectives(kind, xs, p, z, a, prm) -> np.ndarray:
    return np.array([objective(kind, x, p, z, a, prm) for x in xs])


def brute(kind, p, z, a, prm, rng) -> tuple[np.ndarray, float]:
    """Best point found by a grid (n ≤ 2) and multi-start proximal gradient (float64)."""
    n = z.size
    scale = 1.5 * float(np.abs(z).max()) + 1e-3
    starts = [np.zeros(n), z.copy()]
    if n <= 2:
        g = np.linspace(-scale, scale, 801 if n == 1 else 101)
        pts = np.array(np.meshgrid(*([g] * n))).reshape(n, -1).T
        vals = objectives(kind, pts, p, z, a, prm)
        starts += [pts[i] for i in np.argsort(vals)[:8]]
    starts += [rng.normal(size=n) * scale for _ in range(24)]
    starts += [z * t for t in np.linspace(0.05, 0.95, 8)]
    x0 = np.array(starts)
    x = x0.copy()
    eta = 1.0 / (2 * p.max())  # half step: a nonconvex ψ
    for _ in range(1500):
        x = prox(kind, x - eta * p * (x - z), eta * a, prm)
    allx = np.concatenate([x0, x])
    vals = objectives(kind, allx, p, z, a, prm)
    k = int(np.argmin(vals))
    return allx[k], float(vals[k])


def make_reg(kind, prm):
    if kind == "group_lasso":
        return ss.GroupLasso(prm["lam"], "input")
    if kind == "sgl":
        return ss.SparseGroupLasso(prm["l1"], prm["l2"], "input")
    return ss.GroupMCP(prm["lam"], prm["omega"], "input")


def exact(kind, p, z, a, prm) -> np.ndarray:
    """The reference's exact solve of the one group (a column of an (n, 1) tensor, "input")."""
    n = z.size
    pt = torch.tensor(p, dtype=D).view(n, 1)
    w0 = torch.tensor(z, dtype=D).view(n, 1)
    v = torch.zeros_like(w0)
    x = ref.solve_subproblem(v, pt, w0, w0, a, make_reg(kind, prm), "exact", 1, 0.0)
    return x.view(-1).numpy()


def cases(kind, seed, count):
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = [1, 2, 2, 3, 5][i % 5]
        p = 10 ** rng.uniform(-1.5, 1.5, size=n)
        z = rng.normal(size=n) * 10 ** rng.uniform(-1, 1)
        if kind == "group_lasso":
            prm = dict(lam=float(10 ** rng.uniform(-1, 0.5)))
        elif kind == "sgl":
            prm = dict(l1=float(10 ** rng.uniform(-1.5, 0)), l2=float(10 ** rng.uniform(-1.5, 0)))
        else:
            prm = dict(lam=float(10 ** rng.uniform(-1, 0.5)), omega=float(10 ** rng.uniform(-0.5, 1)))
        a = float(10 ** rng.uniform(-1, 0.5))
        if kind == "group_mcp":  # place a/ω_g inside the range of P: both regimes, mixed groups
            om_g = prm["omega"] * math.sqrt(n)
            a = float(np.quantile(p, [0.0, 0.5, 1.0][i % 3]) * om_g * rng.uniform(0.8, 1.25))
        if i % 7 == 3:  # on the screening boundary: ‖P⊙z‖ (after the ℓ₁ threshold) = T
            wg = math.sqrt(n)
            if kind == "sgl":
                u = np.sign(p * z) * np.maximum(np.abs(p * z) - a * prm["l1"], 0)
                nu = float(np.sqrt((u * u).sum()))
                if nu > 0:
                    prm["l2"] = nu / (a * wg)
            else:
                prm["lam"] = float(np.sqrt(((p * z) ** 2).sum())) / (a * wg)
        yield i, p, z, a, prm, rng


@pytest.mark.parametrize(
    "kind,seed", [("group_lasso", 1), ("sgl", 2), ("group_mcp", 3), ("group_mcp", 4), ("sgl", 5)]
)
def test_exact_matches_brute_force(kind, seed):
    worst = 0.0
    for i, p, z, a, prm, rng in cases(kind, seed, 30):
        x = exact(kind, p, z, a, prm)
        fx = objective(kind, x, p, z, a, prm)
        xb, fb = brute(kind, p, z, a, prm, rng)
        scale = 1.0 + abs(fb) + 0.5 * float((p * z * z).sum())
        gap = (fx - fb) / scale
        worst = max(worst, gap)
        assert gap <= 1e-10, (
            f"case {i}: exact objective {fx!r} above brute force {fb!r} (n={z.size}, {prm}, a={a})"
        )
        convex = kind != "group_mcp" or p.min() > a / (prm["omega"] * math.sqrt(z.size)) * 1.0001
        if convex:  # a unique minimizer: the points agree too (the brute force to its accuracy)
            err = float(np.abs(x - xb).max()) / (float(np.abs(z).max()) + 1e-12)
            assert err <= 1e-4, f"case {i}: exact {x} vs brute force {xb}"
    assert worst <= 1e-10


def test_mcp_elementwise_both_regimes():
    """MCP (one-element groups): the closed form against a dense 1-D grid, P on both sides of a/ω."""
    rng = np.random.default_rng(7)
    lam, om = 0.7, 1.3
    n = 400
    p = 10 ** rng.uniform(-1.5, 1.5, size=n)
    z = rng.normal(size=n) * 10 ** rng.uniform(-1, 1, size=n)
    a = 1.3  # c = a/ω = 1: P spans both regimes
    z[:20] = lam * om * np.sign(z[:20])  # |z| = ωλ
    z[20:40] = a * lam / p[20:40]  # |pz| = aλ (firm threshold boundary)
    pt = torch.tensor(p, dtype=D)
    zt = torch.tensor(z, dtype=D)
    x = ref.solve_subproblem(torch.zeros_like(zt), pt, zt, zt, a, ss.MCP(lam, om), "exact", 1, 0.0).numpy()
    assert (p > a / om).any() and (p < a / om).any()
    for i in range(n):
        prm = dict(lam=lam, omega=om)
        fx = objective("group_mcp", x[i : i + 1], p[i : i + 1], z[i : i + 1], a, prm)
        g = np.linspace(-2 * abs(z[i]) - 1e-3, 2 * abs(z[i]) + 1e-3, 20001)
        vals = 0.5 * p[i] * (g - z[i]) ** 2 + a * np.where(
            np.abs(g) <= om * lam, lam * np.abs(g) - g * g / (2 * om), om * lam * lam / 2
        )
        fb = min(float(vals.min()), objective("group_mcp", np.zeros(1), p[i : i + 1], z[i : i + 1], a, prm))
        assert fx <= fb + 1e-12 * (1 + abs(fb)), (i, p[i], z[i], x[i])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["sgl", "group_mcp", "mcp", "l1"])
def test_exact_on_tensors(kind, dtype):
    """Whole tensors (many groups, random V, P, W0): the exact solve's objective is at most that of
    a long float64 PG run from it and from the warm start (a stationary point check per group), and
    float32 follows float64."""
    g = torch.Generator().manual_seed(3)
    shape = (6, 40)
    v = torch.randn(shape, generator=g, dtype=D)
    p = torch.rand(shape, generator=g, dtype=D) * 3 + 0.02
    w0 = torch.randn(shape, generator=g, dtype=D)
    reg = {
        "sgl": ss.SparseGroupLasso(0.1, 0.3, "input"),
        "group_mcp": ss.GroupMCP(0.5, 0.4, "input"),
        "mcp": ss.MCP(0.5, 0.7),
        "l1": ss.L1(0.3),
    }[kind]
    a = 1.0
    x64 = ref.solve_subproblem(v, p, w0, w0, a, reg, "exact", 1, 0.0)
    x = ref.solve_subproblem(v.to(dtype), p.to(dtype), w0.to(dtype), w0.to(dtype), a, reg, "exact", 1, 0.0)
    vs = reg.view_shape(shape)
    q = ref.subproblem_objective(x64.view(vs), v.view(vs), p.view(vs), w0.view(vs), a, reg, shape)
    for start in (x64, w0):
        y = ref.solve_subproblem(v, p, w0, start, a, reg, "pg", 3000, 0.0)
        qy = ref.subproblem_objective(y.view(vs), v.view(vs), p.view(vs), w0.view(vs), a, reg, shape)
        assert bool((q <= qy + 1e-10 * (1 + qy.abs())).all())
    if kind == "group_mcp":  # the problem has both regimes among its groups
        c = a / (0.4 * math.sqrt(6))
        pmin = p.view(vs).amin(dim=(0, 2))
        assert bool((pmin < c).any()) and bool((pmin >= c).any())
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (x.double() - x64).abs().max().item() <= tol * (1 + x64.abs().max().item())
    assert bool(((x == 0) == (x64 == 0)).float().mean() > 0.97)
