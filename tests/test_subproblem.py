"""The weighted subproblem of RAMDA/ProxGen/ProxSSI (docs/math.md §4): screening, Newton, PG."""

from __future__ import annotations

import math

import pytest
import torch

import structsparse as ss
from structsparse.backends import reference as ref
from structsparse.grouping import group_view

D = torch.float64


def _problem(shape, seed, scale_v=1.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g, dtype=D) * scale_v
    p = torch.rand(shape, generator=g, dtype=D) * 3 + 0.05
    w0 = torch.randn(shape, generator=g, dtype=D)
    x0 = torch.randn(shape, generator=g, dtype=D)
    return v, p, w0, x0


def _bisection_solution(v3, p3, w03, thr):
    """Independent float64 solve: bisection on φ(r) = Σ (P Z/(P r + T))² − 1 for each kept group."""
    pz = p3 * w03 - v3
    out = torch.zeros_like(pz)
    for j in range(pz.shape[1]):
        a, pzj = p3[:, j], pz[:, j]
        if pzj.norm() <= thr:
            continue
        lo, hi = 0.0, float(pzj.norm() / a.min()) + 1.0

        def phi(r, a=a, pzj=pzj):
            return float((pzj / (a * r + thr)).pow(2).sum() - 1)

        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if phi(mid) > 0:
                lo = mid
            else:
                hi = mid
        r = 0.5 * (lo + hi)
        out[:, j] = pzj * r / (a * r + thr)
    return out


SHAPES = [
    ((7, 5), "input"),
    ((6, 4, 3, 3), "input"),
    ((6, 4, 3, 3), "output"),
    ((5, 3, 4), "kernel"),
    ((4, 9), "element"),
]


@pytest.mark.parametrize("shape,gr", SHAPES)
@pytest.mark.parametrize("quantile", [0.0, 0.3, 0.7])
def test_exact_solver_matches_bisection_and_screening_is_exact(shape, gr, quantile):
    v, p, w0, _ = _problem(shape, seed=len(shape) + int(quantile * 10))
    reg = ss.GroupLasso(0.3, grouping=gr)
    vs = group_view(gr, shape)
    # choose α so that the threshold sits at a quantile of the groups' ‖P⊙Z‖: both cases occur
    norms = (p * w0 - v).reshape(vs).pow(2).sum((0, 2)).sqrt()
    thr = float(torch.quantile(norms, quantile)) * 0.999 + 1e-3
    a = thr / (0.3 * math.sqrt(vs[0] * vs[2]))
    x = ref.solve_subproblem(v, p, w0, w0, a, reg, "exact", 0, 0.0)
    expected = _bisection_solution(*(t.reshape(vs) for t in (v, p, w0)), thr).reshape(shape)
    assert torch.allclose(x, expected, rtol=1e-10, atol=1e-12)
    # screening: W̃_g = 0 iff ‖P⊙W0 − V‖_g ≤ T_g
    zero = (x.reshape(vs) == 0).all(2).all(0)
    pz_norm = (p * w0 - v).reshape(vs).pow(2).sum((0, 2)).sqrt()
    assert torch.equal(zero, pz_norm <= thr)
    if quantile > 0:
        assert 0 < int(zero.sum()) < zero.numel()


def _q(x, v, p, w0, a, reg):
    d = x - w0
    return float((v * d + 0.5 * p * d * d).sum() + a * reg.value(x))


@pytest.mark.parametrize("shape,gr", SHAPES)
def test_pg_reaches_the_exact_objective_and_never_worsens_warm_start(shape, gr):
    v, p, w0, x0 = _problem(shape, seed=11)
    reg = ss.GroupLasso(0.3, grouping=gr)
    a = 0.5
    exact = ref.solve_subproblem(v, p, w0, x0, a, reg, "exact", 0, 0.0)
    pg = ref.solve_subproblem(v, p, w0, x0, a, reg, "pg", 5000, 1e-14)
    q_exact, q_pg = _q(exact, v, p, w0, a, reg), _q(pg, v, p, w0, a, reg)
    assert q_exact <= q_pg + 1e-12
    assert q_pg - q_exact <= 1e-8 * (abs(q_exact) + 1)
    # the same zero groups (screening is shared)
    vs = group_view(gr, shape)
    assert torch.equal((pg.reshape(vs) == 0).all(2).all(0), (exact.reshape(vs) == 0).all(2).all(0))
    # with the default budget: never worse than the warm start
    pg_default = ref.solve_subproblem(v, p, w0, x0, a, reg, "pg", 100, 1e-8)
    assert _q(pg_default, v, p, w0, a, reg) <= _q(x0, v, p, w0, a, reg) + 1e-12


def test_pg_with_one_iteration_is_not_worse_than_warm_start_per_group():
    # badly scaled P makes one PG step poor; the guard must still hold group by group
    v, p, w0, _ = _problem((8, 6), seed=5)
    p = p**4
    reg = ss.GroupLasso(0.05)
    x0 = ref.solve_subproblem(v, p, w0, w0, 0.3, reg, "exact", 0, 0.0)  # already optimal
    x = ref.solve_subproblem(v, p, w0, x0, 0.3, reg, "pg", 1, 1e-8)
    v3, p3, w03 = v.reshape(8, 6, 1), p.reshape(8, 6, 1), w0.reshape(8, 6, 1)
    q_new = ref.subproblem_objective(x.reshape(8, 6, 1), v3, p3, w03, 0.3, reg, (8, 6))
    q_old = ref.subproblem_objective(x0.reshape(8, 6, 1), v3, p3, w03, 0.3, reg, (8, 6))
    assert torch.all(q_new <= q_old + 1e-12)


@pytest.mark.parametrize(
    "reg",
    [ss.SparseGroupLasso(0.1, 0.2), ss.GroupMCP(0.2, 3.0), ss.MCP(0.2, 3.0), ss.NuclearNorm(0.3)],
)
def test_pg_decreases_other_regularizers_objective(reg):
    v, p, w0, x0 = _problem((6, 5), seed=2)
    a = 0.4
    x = ref.solve_subproblem(v, p, w0, x0, a, reg, "pg", 200, 1e-10)
    q0 = _q(x0, v, p, w0, a, reg)
    q = _q(x, v, p, w0, a, reg)
    assert q < q0
    # a stationary point of the convex ones: random perturbations do not improve
    if not reg.nonconvex:
        for _ in range(20):
            assert _q(x + 1e-4 * torch.randn_like(x), v, p, w0, a, reg) >= q - 1e-9


def test_unregularized_subproblem_is_closed_form():
    v, p, w0, _ = _problem((5, 4), seed=3)
    x = ref.solve_subproblem(v, p, w0, w0, 0.5, ss.GroupLasso(0.0), "exact", 0, 0.0)
    assert torch.allclose(x, w0 - v / p)


def test_all_groups_screened():
    v, p, w0, x0 = _problem((6, 4, 3, 3), seed=4, scale_v=1e-3)
    reg = ss.GroupLasso(100.0)
    for solver in ("exact", "pg"):
        x = ref.solve_subproblem(v, p, w0, x0, 1.0, reg, solver, 100, 1e-8)
        assert torch.equal(x, torch.zeros_like(x))


def test_pg_iteration_counts_are_where_each_group_stops():
    """pg_iteration_counts(): a group's count c is where its iterate stops changing: budgets of c
    and more iterations give the same group, c - 1 a different one; screened groups count 0;
    collecting changes nothing."""
    v, p, w0, x0 = _problem((6, 10), seed=3)
    reg = ss.GroupLasso(3.0)
    a = 0.5
    plain = ref.solve_subproblem(v, p, w0, x0, a, reg, "pg", 60, 1e-8)
    with ref.pg_iteration_counts() as got:
        x = ref.solve_subproblem(v, p, w0, x0, a, reg, "pg", 60, 1e-8)
    assert torch.equal(x, plain) and len(got) == 1
    shape, counts = got[0]
    assert shape == (6, 10) and counts.shape == (10,)
    zero = (x == 0).all(0)
    assert zero.any() and (~zero).any()  # both kinds of group in the case
    assert torch.equal(counts == 0, zero)
    assert int(counts[~zero].min()) >= 2 and int(counts.max()) < 60
    runs = {k: ref.solve_subproblem(v, p, w0, x0, a, reg, "pg", k, 1e-8) for k in range(1, 61)}
    for j in torch.nonzero(~zero).flatten().tolist():
        c = int(counts[j])
        assert torch.equal(runs[c][:, j], x[:, j]) and torch.equal(runs[60][:, j], x[:, j])
        assert not torch.equal(runs[c - 1][:, j], x[:, j])
    assert ref._pg_counts is None  # off again after the block
