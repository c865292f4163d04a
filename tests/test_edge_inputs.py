"""Edge-case inputs on every backend against backend="reference": strided parameters of any rank,
self-overlapping (expanded) parameters rejected before anything is modified, ``max_iters`` beyond
int32, and group norms whose sum of squares overflows (finite weights must stay finite and match
the reference). Triton runs under ``TRITON_INTERPRET=1`` (the set-up of test_triton_backend)."""

from __future__ import annotations

import pytest
import torch
from test_triton_backend import IN_PROCESS, WHY, interpreter  # noqa: F401  (interpreter: fixture)

import structsparse as ss
from structsparse.backends import cpu as cpu_backend

HAS_CPU = cpu_backend.available()[0]
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="the C++ extension is not built")
needs_interp = pytest.mark.skipif(not IN_PROCESS, reason=f"no Triton interpreter in this process ({WHY})")


def _backends(request_triton: bool) -> list:
    out = [pytest.param("reference")]
    out.append(pytest.param("cpu", marks=needs_cpu))
    if request_triton:
        out.append(pytest.param("triton", marks=needs_interp))
    return out


@pytest.fixture
def backend(request):
    """The backend under test; the Triton interpreter is set up for "triton"."""
    if request.param == "triton":
        request.getfixturevalue("interpreter")
    return request.param


def _opt(alg, params, reg, backend, **kw):
    groups = [{"params": params, "regularizer": reg}]
    if alg == "proxsgd":
        return ss.ProxSGD(
            groups, lr=kw.pop("lr", 0.1), momentum=kw.pop("momentum", 0.5), backend=backend, **kw
        )
    if alg == "rmda":
        return ss.RMDA(groups, lr=0.1, momentum=0.5, backend=backend, **kw)
    if alg == "ramda_exact":
        return ss.RAMDA(groups, lr=0.1, momentum=0.5, solver="exact", backend=backend, **kw)
    if alg == "ramda_pg":
        return ss.RAMDA(groups, lr=0.1, momentum=0.5, solver="pg", backend=backend, **kw)
    if alg == "proxgen_pg":
        return ss.ProxGen(groups, lr=0.05, solver="pg", backend=backend, **kw)
    if alg == "dessilbi":
        return ss.DessiLBI(groups, lr=0.1, kappa=1.5, nu=2.0, momentum=0.9, backend=backend, **kw)
    raise ValueError(alg)


def _steps(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()


def _rel(x, ref):
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max()) / max(float(ref.abs().max()), 1e-300)


# -- strided parameters of any rank ----------------------------------------------------------------


def _high_rank(nd, dtype, seed=0):
    """A tensor of nd dims (sizes 2 on every third dim, 1 elsewhere: a few dozen elements) whose
    storage holds the dims in reverse order: non-contiguous at any rank."""
    shape = [2 if d % 3 == 0 else 3 if d == 1 else 1 for d in range(nd)]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    rev = list(range(nd - 1, -1, -1))
    return x.permute(*rev).contiguous().permute(*rev)


@pytest.mark.parametrize("nd", [16, 17, 20, 25])
@pytest.mark.parametrize("alg", ["proxsgd", "rmda", "ramda_exact", "dessilbi"])
@pytest.mark.parametrize("backend", _backends(True)[1:], indirect=True)
def test_noncontiguous_any_rank(backend, alg, nd):
    """A strided parameter and gradient of 16 to 25 dims give the reference's result on the
    contiguous copy (the CPU gather used a fixed index array of 16 dims: 17 dims were wrong,
    25 crashed)."""
    p = torch.nn.Parameter(_high_rank(nd, torch.float64))
    q = torch.nn.Parameter(p.detach().contiguous())
    assert not p.is_contiguous() and p.dim() == nd
    grads = [_high_rank(nd, torch.float64, seed=k + 5) for k in range(3)]  # strided too
    reg = ss.GroupLasso(0.05, "input")
    _steps(_opt(alg, [p], reg, backend), [p], [[g] for g in grads])
    _steps(_opt(alg, [q], reg, "reference"), [q], [[g.contiguous()] for g in grads])
    tol = 1e-12 if backend == "cpu" else 1e-6
    assert _rel(p, q) <= tol
    assert p.stride() == _high_rank(nd, torch.float64).stride()


# -- self-overlapping parameters -------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["proxsgd", "ramda_pg", "dessilbi"])
@pytest.mark.parametrize("kind", ["expanded", "as_strided"])
@pytest.mark.parametrize("backend", _backends(True), indirect=True)
def test_overlapping_param_rejected(backend, kind, alg):
    """An expanded (stride 0) or overlapping as_strided parameter is refused with a ValueError
    naming it, before the parameter (its aliased base) or any state is written."""
    if kind == "expanded":
        base = torch.zeros(1, 3, dtype=torch.float64)
        p = base.expand(4, 3)
    else:
        base = torch.zeros(10, dtype=torch.float64)
        p = base.as_strided((4, 3), (1, 1))
    opt = _opt(alg, [p], ss.GroupLasso(0.01, "input"), backend)
    p.grad = torch.arange(12, dtype=torch.float64).view(4, 3)
    with pytest.raises(ValueError, match=r"params\[0\].*one memory location"):
        opt.step()
    assert torch.equal(base, torch.zeros_like(base))
    for v in opt.state[p].values():
        if isinstance(v, torch.Tensor) and v.numel() == 12:
            assert torch.equal(v, torch.zeros_like(v)) or alg == "ramda_pg"  # RAMDA's W0 copies W


@pytest.mark.parametrize("backend", _backends(True)[1:], indirect=True)
def test_sliced_param_accepted(backend):
    """A strided but non-overlapping view (a slice with a step) is stepped in place like its
    contiguous copy: the overlap test does not reject it."""
    buf = torch.randn(4, 6, dtype=torch.float64)
    p = torch.nn.Parameter(buf[:, ::2])
    q = torch.nn.Parameter(p.detach().clone())
    g = torch.randn(4, 3, dtype=torch.float64)
    for t, b in ((p, backend), (q, "reference")):
        opt = _opt("proxsgd", [t], ss.GroupLasso(0.05, "input"), b)
        t.grad = g.clone()
        opt.step()
    assert _rel(p, q) <= 1e-6
    assert p.data_ptr() == buf.data_ptr()  # written in place, through the view


# -- max_iters beyond int32 ------------------------------------------------------------------------


@pytest.mark.parametrize("max_iters", [2**31, 2**32 + 3])
@pytest.mark.parametrize("backend", _backends(True)[1:], indirect=True)
def test_max_iters_beyond_int32(backend, max_iters):
    """RAMDA's PG solver with max_iters >= 2**31 runs until its stopping rule, as the reference
    does (a cast to int made it 0 or 3 iterations)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    out = []
    for b in (backend, "reference"):
        p = torch.nn.Parameter(w.clone())
        opt = _opt("ramda_pg", [p], ss.GroupMCP(0.05, 5.0, "input"), b, max_iters=max_iters, rtol=1e-6)
        _steps(opt, [p], [[g.clone()] for g in grads])
        out.append(p)
    assert _rel(out[0], out[1]) <= (1e-12 if backend == "cpu" else 1e-5)
    # and the solve moved the point away from its warm start (0 iterations would not)
    p0 = torch.nn.Parameter(w.clone())
    opt = _opt("ramda_pg", [p0], ss.GroupMCP(0.05, 5.0, "input"), "reference", max_iters=1, rtol=1e-6)
    _steps(opt, [p0], [[g.clone()] for g in grads])
    assert _rel(out[1], p0) > 1e-6


# -- group norms whose squares overflow ------------------------------------------------------------

REGS = {
    "group_lasso": lambda lam: ss.GroupLasso(lam, "input"),
    "l1": lambda lam: ss.L1(lam),
    "sgl": lambda lam: ss.SparseGroupLasso(lam / 4, lam, "input"),
    "group_mcp": lambda lam: ss.GroupMCP(lam, 5.0, "input"),
    "mcp": lambda lam: ss.MCP(lam, 5.0),
}


HUGE_CASES = [
    (alg, reg)
    for alg in ("proxsgd", "rmda", "ramda_pg", "ramda_exact", "proxgen_pg", "dessilbi")
    for reg in REGS
    if alg not in ("ramda_exact", "dessilbi") or reg in ("group_lasso", "l1")  # group LASSO family only
]


@pytest.mark.parametrize(("alg", "reg"), HUGE_CASES)
@pytest.mark.parametrize("backend", _backends(True), indirect=True)
def test_huge_finite_weights_stay_finite(backend, reg, alg):
    """float32 weights of 3e19 (their squares overflow float32) and a zero gradient: the step
    keeps them finite and equal to the reference's (the group norm's sum of squares overflowed:
    NaN weights, and the step was not skipped)."""
    out = []
    for b in (backend, "reference"):
        p = torch.nn.Parameter(torch.full((4, 3), 3e19, dtype=torch.float32))
        opt = _opt(alg, [p], REGS[reg](1e-3), b)
        _steps(opt, [p], [[torch.zeros(4, 3)]] * 2)
        assert torch.isfinite(p).all(), f"{b}: {p}"
        out.append(p)
    assert _rel(out[0], out[1]) <= 1e-5


def _shrunk(backend, dtype, big, lam):
    """ProxSGD (no momentum, lr = 0.1) of a (4, 3) weight filled with `big`, zero gradient,
    GroupLasso on "input" groups (4 elements, w_g = 2): x = big·(1 − lr·λ·w_g/‖g‖)."""
    p = torch.nn.Parameter(torch.full((4, 3), big, dtype=dtype))
    opt = _opt("proxsgd", [p], ss.GroupLasso(lam, "input"), backend, momentum=0.0)
    p.grad = torch.zeros_like(p)
    opt.step()
    return p.detach()


@pytest.mark.parametrize("backend", _backends(True), indirect=True)
def test_huge_group_norm_is_exact_float32(backend):
    """The norm of a float32 group whose squares overflow float32 is computed, not taken as
    infinite: with a threshold of half the norm the weights are halved."""
    big = 3e19
    norm = 2 * float(torch.tensor(big, dtype=torch.float32))  # 4 equal elements
    lam = (norm / 2) / (0.1 * 2)  # lr·λ·w_g = norm / 2
    x = _shrunk(backend, torch.float32, big, lam)
    expect = float(torch.tensor(big, dtype=torch.float32)) / 2
    assert torch.allclose(x.double(), torch.full((4, 3), expect, dtype=torch.float64), rtol=1e-6)


def test_huge_group_norm_reference_float64():
    """The reference's float64 norms do not overflow either (elements above 2^480 are summed
    scaled): a group of 1e200 with a threshold of half its norm is halved."""
    lam = (2e200 / 2) / (0.1 * 2)
    x = _shrunk("reference", torch.float64, 1e200, lam)
    assert torch.allclose(x, torch.full((4, 3), 0.5e200, dtype=torch.float64), rtol=1e-12)
    # and without such elements the norm is the plain sqrt(Σ x²), bit for bit
    from structsparse.regularizers import _group_norms

    y = torch.randn(3, 5, 2, dtype=torch.float64)
    assert torch.equal(_group_norms(y).view(-1), y.pow(2).sum(dim=(0, 2)).sqrt())
