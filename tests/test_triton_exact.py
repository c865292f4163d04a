"""The Triton kernels' exact solves of SparseGroupLasso, MCP and GroupMCP (RAMDA and ProxGen
``solver="exact"``, ProxSSI) against the reference backend, on CPU tensors under
``TRITON_INTERPRET=1`` (the interpreter set-up and fixtures of tests/test_triton_backend.py).

Trajectories: four steps with a restart in the middle (the state_dict saved, loaded into a fresh
optimizer on fresh parameters, then more steps); the parameters, every state tensor and scalar
compared, exact zero patterns equal. λ and ω are chosen per algorithm so that both MCP regimes
(``P > a/ω``: firm threshold; ``P ≤ a/ω``: hard threshold) and both kinds of GroupMCP groups
(``min P ≥ a/ω_g``: convex; else nonconvex, where the candidates 0, X(s) and Z are compared) occur,
and the test checks that they do. Groups are 'input' groups (strided in memory). Boundary cases
(screening at ``‖pz‖ = T``, ``|pz| = aλ``, ``P = a/ω``, a tie between the objectives of 0 and Z)
are built with exactly representable numbers and checked against their known answers.
"""

from __future__ import annotations

import io
import math

import pytest
import test_triton_backend as _ttb
import torch

import structsparse as ss
from structsparse.backends import reference

needs_interp, _close = _ttb.needs_interp, _ttb._close
interpreter, small_tiles, recorder, tiny_onchip = (
    _ttb.interpreter,
    _ttb.small_tiles,
    _ttb.recorder,
    _ttb.tiny_onchip,
)  # fixtures

ALGS = ("ramda", "proxgen", "proxssi")
# ProxSSI's P = sqrt(v) + ε is about 30× smaller than the others': smaller λ, larger ω
PARAMS = {"ramda": (0.01, 10.0, 5.0), "proxgen": (0.01, 10.0, 5.0), "proxssi": (0.001, 300.0, 100.0)}
SHAPES = [(3, 5, 3, 3), (6, 7)]  # 'input' groups of 27 and 6 elements


def _reg(alg: str, name: str):
    lam, om_mcp, om_gmcp = PARAMS[alg]
    if name == "sgl":
        return ss.SparseGroupLasso(lam / 4, lam, "input")
    if name == "gmcp":
        return ss.GroupMCP(lam, om_gmcp, "input")
    return ss.MCP(lam, om_mcp)


def _make(alg, groups, backend):
    if alg == "ramda":
        return ss.RAMDA(groups, lr=0.1, momentum=0.0, solver="exact", backend=backend)
    if alg == "proxgen":
        return ss.ProxGen(groups, lr=0.05, weight_decay=0.01, solver="exact", backend=backend)
    return ss.ProxSSI(groups, lr=0.05, weight_decay=0.01, backend=backend)


def _p_and_a(alg, opt, p):
    """The subproblem's P and a of the last step of ``p`` (from its state, float64)."""
    st, g = opt.state[p], opt.param_groups[0]
    if alg == "ramda":
        return st["sq_grad_sum"].double().pow(1 / 3) + g["eps"], st["alpha"]
    v = st["exp_avg_sq"].double()
    if alg == "proxgen":
        return v.sqrt() / math.sqrt(1 - g["betas"][1] ** st["step"]) + g["eps"], g["lr"]
    return v.sqrt() + g["eps"], g["lr"]


def _regimes(alg, reg, opt, params):
    """(convex, nonconvex) group counts of a step: MCP element with P > a/ω, GroupMCP group with
    min P ≥ a/ω_g."""
    cv = ncv = 0
    for p in params:
        pv, a = _p_and_a(alg, opt, p)
        c = a / (reg.omega * reg.group_weight(p.shape))
        pmin = pv.view(reg.view_shape(p.shape)).amin(dim=(0, 2))
        convex = pmin > c if isinstance(reg, ss.MCP) else pmin >= c
        cv += int(convex.sum())
        ncv += int((~convex).sum())
    return cv, ncv


def _trajectory(alg, reg, dtype, backend, steps=4, restart_at=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = SHAPES + [(5,)]  # + an unregularized bias
    scales = [_ttb._scales(s, gen) for s in shapes]
    params = [
        (torch.randn(s, generator=gen, dtype=torch.float64) * c).to(dtype) for s, c in zip(shapes, scales)
    ]
    params = [p.requires_grad_(True) for p in params]

    def build(ps):
        return _make(alg, [{"params": ps[:-1], "regularizer": reg}, {"params": ps[-1:]}], backend)

    opt = build(params)
    regimes = []
    for i in range(steps):
        if i == restart_at:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            params = [p.detach().clone().requires_grad_(True) for p in params]
            opt = build(params)
            opt.load_state_dict(torch.load(buf, weights_only=True))
        for p, c in zip(params, scales):
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * c).to(dtype)
        opt.step()
        if reg is not None and isinstance(reg, ss.GroupMCP):
            regimes.append(_regimes(alg, reg, opt, params[:-1]))
    return params, opt, regimes


def _compare(alg, reg, dtype):
    tol = 1e-6 if dtype == torch.float64 else 1e-5  # the kernels' scalars are fp32
    ref_p, ref_opt, regimes = _trajectory(alg, reg, dtype, "reference")
    tri_p, tri_opt, _ = _trajectory(alg, reg, dtype, "triton")
    for i, (pr, pt) in enumerate(zip(ref_p, tri_p)):
        assert pt.dtype == dtype
        _close(f"param {i}", pt, pr, tol)
        assert torch.equal(pt == 0, pr == 0), f"param {i}: zero patterns differ"
        sr, st = ref_opt.state[pr], tri_opt.state[pt]
        assert set(sr) == set(st)
        for k, v in sr.items():
            if isinstance(v, torch.Tensor):
                assert st[k].dtype == v.dtype
                _close(f"param {i} state {k}", st[k], v, tol)
            else:
                assert st[k] == v, f"param {i} state {k}: {st[k]} != {v}"
    # the scenario is meaningful: zero and kept elements (and groups)
    zeros = sum(int((p == 0).sum()) for p in ref_p[:-1])
    total = sum(p.numel() for p in ref_p[:-1])
    assert 0 < zeros < total, f"{zeros} of {total} elements are zero: retune PARAMS"
    if regimes:
        assert sum(cv for cv, _ in regimes) > 0, f"no convex group / firm-threshold element: {regimes}"
        assert sum(ncv for _, ncv in regimes) > 0, f"no nonconvex group / hard-threshold element: {regimes}"


CASES = [(alg, reg, dt) for alg in ALGS for reg in ("sgl", "gmcp", "mcp") for dt in ("f32", "f64")]
DTYPES = {"f32": torch.float32, "f64": torch.float64}


@needs_interp
@pytest.mark.parametrize("alg,reg_name,dt", CASES, ids=["-".join(c) for c in CASES])
def test_exact_onchip_matches_reference(alg, reg_name, dt, small_tiles, recorder):
    _compare(alg, _reg(alg, reg_name), DTYPES[dt])
    assert all(fit for _, fit in recorder.launches)


TWOPHASE = [(alg, reg, "f32") for alg in ALGS for reg in ("sgl", "gmcp")] + [("proxgen", "gmcp", "f64")]


@needs_interp
@pytest.mark.parametrize("alg,reg_name,dt", TWOPHASE, ids=["-".join(c) for c in TWOPHASE])
def test_exact_twophase_matches_reference(alg, reg_name, dt, tiny_onchip):
    """Groups of 27 elements above an on-chip limit of 16 (the chunked path), next to groups of 6."""
    _compare(alg, _reg(alg, reg_name), DTYPES[dt])


# -- boundary cases ---------------------------------------------------------------------------
#
# One RAMDA step with a zero gradient, U = 0 (P = ε exactly, cbrt(0) = 0 on every backend), c = 1
# and α given: the parameter becomes the exact solve of pz = ε·W0 − V. Every number below is a
# binary fraction, so ‖pz‖, the thresholds and the objectives are exact in float32 and float64.


def _ramda_solve(backend, reg, w0, v, alpha, eps):
    w = torch.zeros_like(w0)
    backend.ramda_step(
        [w], [torch.zeros_like(w)], [w0.clone()], [v.clone()], [torch.zeros_like(w)],
        steps=[1], alphas=[alpha], lr=0.1, c=1.0, eps=eps, reg=reg, solver="exact", max_iters=0, rtol=0.0,
    )  # fmt: skip
    return w


def _both(reg, w0, alpha=1.0, eps=1.0):
    from structsparse.backends import triton as tb

    v = torch.zeros_like(w0)
    ref = _ramda_solve(reference, reg, w0, v, alpha, eps)
    tri = _ramda_solve(tb, reg, w0, v, alpha, eps)
    return ref, tri


@needs_interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_boundaries(dtype, interpreter):
    # 'output' groups of a (2, 4) weight: rows of 4 elements, w_g = 2; P = ε = 1, α = 1.
    q = 0.25
    # SparseGroupLasso λ1 = 1/8, λ2 = 1/8: T = 1/4. Row 0: |pz| = 1/8 everywhere (every element at
    # the soft threshold: 0). Row 1: u = (1/8, 1/8, 1/8, 1/8) after the soft threshold, ‖u‖ = 1/4 = T.
    sgl = ss.SparseGroupLasso(0.125, 0.125, "output")
    w0 = torch.tensor([[q / 2, -q / 2, q / 2, -q / 2], [q, -q, q, q]], dtype=dtype)
    ref, tri = _both(sgl, w0)
    assert torch.equal(ref, torch.zeros_like(ref)) and torch.equal(tri, ref)
    # just above the group threshold: kept, by both
    w0[1, 0] = q + 2.0**-10
    ref, tri = _both(sgl, w0)
    assert (ref[1] != 0).any() and torch.equal(tri == 0, ref == 0)
    _close("sgl kept", tri, ref, 1e-6)

    # MCP λ = 1/4, ω = 1 with α = 1, P = 1: P = a/ω, the hard threshold at λ·sqrt(aωP) = 1/4.
    mcp = ss.MCP(0.25, 1.0)
    w0 = torch.tensor([[q, -q, q + 2.0**-10, -q - 2.0**-10], [0.0, 2 * q, -2 * q, q / 2]], dtype=dtype)
    ref, tri = _both(mcp, w0)
    want = torch.where(w0.abs() > q, w0, torch.zeros_like(w0))
    assert torch.equal(ref, want) and torch.equal(tri, want)
    # ω = 2: P > a/ω, the firm threshold: 0 for |pz| ≤ aλ = 1/4, soft/(1 − 1/2) up to ωλ = 1/2, z beyond
    mcp = ss.MCP(0.25, 2.0)
    w0 = torch.tensor([[q, -q, 3 * q / 2, -2 * q], [4 * q, q / 2, -3 * q / 2, 3 * q]], dtype=dtype)
    ref, tri = _both(mcp, w0)
    firm = torch.tensor([[0.0, 0.0, q, -2 * q], [4 * q, 0.0, -q, 3 * q]], dtype=dtype)
    assert torch.equal(ref, firm)
    _close("mcp firm", tri, firm, 1e-6)
    assert torch.equal(tri == 0, firm == 0)

    # GroupMCP λ = 1/8, ω = 1/4 on rows of 4 (λ_g = 1/4, ω_g = 1/2), α = 1/2: c = a/ω_g = 1 = P
    # (convex: min P ≥ c), T = 1/8. Row 0: ‖pz‖ = T (screened); row 1 above (kept).
    gmcp = ss.GroupMCP(0.125, 0.25, "output")
    w0 = torch.tensor([[q / 4, -q / 4, q / 4, q / 4], [q, q, -q, q / 2]], dtype=dtype)
    ref, tri = _both(gmcp, w0, alpha=0.5)
    assert torch.equal(ref[0], torch.zeros(4, dtype=dtype)) and (ref[1] != 0).all()
    assert torch.equal(tri == 0, ref == 0)
    _close("gmcp convex", tri, ref, 1e-6)

    # α = 1: c = 2 > P (nonconvex), T = 1/4, ω_gλ_g = 1/8, so f(Z) = a·ω_gλ_g²/2 = 1/64 for ‖z‖ ≥ 1/8
    # and f(0) = ‖z‖²/2. Row 0: ‖z‖² = 1/32: f(0) = f(Z), a tie, which the rule gives to 0 (and
    # X(s) is 0: ‖pz‖ < T). Row 1: ‖z‖² a little above 1/32: f(Z) < f(0), Z.
    h = q / 2
    w0 = torch.tensor([[h, -h, 0.0, 0.0], [h, -h, 2.0**-10, 0.0]], dtype=dtype)
    ref, tri = _both(gmcp, w0)
    want = torch.cat([torch.zeros(1, 4, dtype=dtype), w0[1:]])
    assert torch.equal(ref, want) and torch.equal(tri, want)


@needs_interp
def test_supports_every_exact_solve(interpreter):
    from structsparse.backends import triton as tb

    for reg in (ss.SparseGroupLasso(0.1, 0.1), ss.GroupMCP(0.1, 2.0), ss.MCP(0.1, 2.0)):
        assert tb.supports("proxssi", reg)
        for alg in ("ramda", "proxgen"):
            assert tb.supports(alg, reg, solver="exact") and tb.supports(alg, reg, solver="pg")
    assert not tb.supports("ramda", ss.NuclearNorm(0.1), solver="pg")


@needs_interp
@pytest.mark.parametrize("path", ["onchip", "twophase"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_gmcp_candidates(dtype, path, interpreter, monkeypatch):
    """GroupMCP groups of 24 elements with P ≥ a/ω_g (convex) or one element below it (nonconvex)
    and ‖Z‖ over two decades, solved once (RAMDA, zero gradient, c = 1): among the nonconvex groups
    each of the three candidates wins somewhere (0, Z, and an interior X(s) that is neither)."""
    from structsparse.backends import triton as tb

    monkeypatch.setattr(interpreter.launch, "TILE", 64)
    if path == "twophase":
        monkeypatch.setattr(interpreter.launch, "ONCHIP_LIMIT", 16)
    gen = torch.Generator().manual_seed(5)
    shape, eps, alpha, c0 = (48, 24), 1e-3, 1.0, 0.5
    p = c0 * torch.exp(0.7 * torch.randn(shape, generator=gen, dtype=torch.float64).abs())
    p[1::2, 0] = 0.3 * c0  # every other group: one element below a/ω_g = c0, nonconvex
    u = (p - eps).pow(3)  # RAMDA's P = cbrt(U) + ε
    scale = 0.3 * 10 ** (-2 * torch.rand(shape[0], 1, generator=gen, dtype=torch.float64))
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    w0[1::4, 0] *= 20  # a large element where P is small: Z can beat the interior X(s)
    reg = ss.GroupMCP(0.03, alpha / (c0 * math.sqrt(shape[1])), "output")
    outs = []
    for backend in (reference, tb):
        w = torch.zeros(shape, dtype=dtype)
        backend.ramda_step(
            [w], [torch.zeros_like(w)], [w0.to(dtype)], [torch.zeros_like(w)], [u.to(dtype)],
            steps=[1], alphas=[alpha], lr=0.1, c=1.0, eps=eps, reg=reg, solver="exact", max_iters=0, rtol=0.0,
        )  # fmt: skip
        outs.append(w)
    ref, tri = outs
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    _close("gmcp", tri, ref, tol)
    assert torch.equal(tri == 0, ref == 0)
    c = alpha / (reg.omega * math.sqrt(shape[1]))
    nonconvex = (u.pow(1 / 3) + eps).min(dim=1).values < c
    zero = (ref == 0).all(dim=1)
    at_z = torch.isclose(ref.double(), w0, rtol=1e-6, atol=0).all(dim=1)
    inner = ~zero & ~at_z
    counts = [int((nonconvex & m).sum()) for m in (zero, at_z, inner)]
    assert int((~nonconvex).sum()) > 0 and all(k > 0 for k in counts), (int((~nonconvex).sum()), counts)
