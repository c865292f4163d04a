"""Differential fuzz test: every available fused backend against backend="reference".

Hypothesis draws a case: an algorithm (RMDA, RAMDA pg/exact, ProxSGD, ProxGen pg/exact, ProxSSI,
DessiLBI), a parameter of 1 to 5 dims with sizes around powers of two, its memory layout
(contiguous, dims permuted in storage, or a slice with a step of a larger buffer) and its
gradient's, a regularizer (none, GroupLasso, L1, SparseGroupLasso, GroupMCP, MCP) with a grouping
that fits the shape (input, output, kernel, element or a tuple of norm dims), float32 or float64,
2 to 4 steps and a restart. The parameter and every state tensor and scalar must match the
reference's within the tolerances of tests/test_cpu_backend.py (cpu: 1e-12 float64, 1e-5 float32,
relative to the largest magnitude) and tests/test_triton_backend.py (triton: 1e-5, scalars in
fp32). float32 with the PG solver: the iterates of two backends differ by ulps, which can move a
group's stop by one iteration, so there the rule of test_cpu_backend's ``_pg_float32`` applies
(the backend is as close to the float64 reference as the float32 reference is, ×2 + 1e-4).

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (the default: derandomized, a bounded number of
examples, a few seconds on cpu and under a minute for the Triton interpreter) and ``long`` (many
more examples, random: for local runs, e.g. ``HYPOTHESIS_PROFILE=long pytest
tests/test_fuzz_backends.py``). Triton runs under ``TRITON_INTERPRET=1`` when triton is
importable (the interpreter is slow: few examples).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The Triton interpreter set-up (import order, fixture) of the Triton backend tests.
from test_triton_backend import IN_PROCESS, WHY, interpreter  # noqa: F401  (interpreter: fixture)

import structsparse as ss
from structsparse.backends import cpu as cpu_backend

_COMMON = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile("ci", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=3000, **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"HYPOTHESIS_PROFILE: expected 'ci' or 'long', got {PROFILE!r}")
BASE = settings.get_profile(PROFILE)
# the Triton interpreter runs a case in about a second: fewer examples
TRITON = settings(BASE, max_examples=8 if PROFILE == "ci" else 300)

SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33)
MAX_NUMEL = 3000
ALGS = ("rmda", "ramda_pg", "ramda_exact", "proxsgd", "proxgen_pg", "proxgen_exact", "proxssi", "dessilbi")
EXACT = ("ramda_exact", "proxgen_exact", "proxssi")  # the exact solves (of every regularizer but NuclearNorm)
REGS = ("none", "group_lasso", "l1", "sgl", "group_mcp", "mcp")


@st.composite
def shapes(draw) -> tuple[int, ...]:
    nd = draw(st.integers(1, 5))
    out, budget = [], MAX_NUMEL
    for _ in range(nd):
        s = draw(st.sampled_from([x for x in SIZES if x <= budget]))
        out.append(s)
        budget //= s
    return tuple(out)


def groupings(nd: int) -> list:
    """Every named grouping that fits a tensor of nd dims, and every tuple of norm dims whose
    complement is a run of adjacent dims (or all dims: one group)."""
    out: list = ["element"]
    if nd >= 2:
        out += ["input", "output"]
    if nd >= 3:
        out.append("kernel")
    out.append(tuple(range(nd)))
    for lo in range(nd):
        for hi in range(lo + 1, nd + 1):
            norm = tuple(d for d in range(nd) if not lo <= d < hi)
            if norm:
                out.append(norm)
    return out


@st.composite
def layouts(draw, nd: int):
    """("contiguous",), ("permuted", storage order of the dims) or ("sliced", dim, step)."""
    kind = draw(st.sampled_from(["contiguous", "permuted", "sliced"]))
    if kind == "permuted" and nd > 1:
        return ("permuted", tuple(draw(st.permutations(range(nd)))))
    if kind == "sliced":
        return ("sliced", draw(st.integers(0, nd - 1)), draw(st.integers(2, 3)))
    return ("contiguous",)


@st.composite
def cases(draw, algs=ALGS, kinds=REGS) -> dict:
    alg = draw(st.sampled_from(algs))
    shape = draw(shapes())
    nd = len(shape)
    if alg == "dessilbi":
        kinds = tuple(k for k in kinds if k in ("none", "group_lasso", "l1"))
    kind = draw(st.sampled_from(kinds))
    grouping = draw(st.sampled_from(groupings(nd))) if kind in ("group_lasso", "sgl", "group_mcp") else None
    steps = draw(st.integers(2, 4))
    return dict(
        alg=alg,
        shape=shape,
        kind=kind,
        grouping=grouping,
        lam=draw(st.sampled_from([0.0, 1e-3, 1e-2, 0.05, 0.2])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        p_layout=draw(layouts(nd)),
        g_layout=draw(layouts(nd)),
        steps=steps,
        restart_at=draw(st.one_of(st.none(), st.integers(1, steps - 1))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_reg(kind, lam, grouping):
    if kind == "none":
        return None
    if kind == "group_lasso":
        return ss.GroupLasso(lam, grouping)
    if kind == "l1":
        return ss.L1(lam / 4)
    if kind == "sgl":
        return ss.SparseGroupLasso(lam / 8, lam / 2, grouping)
    if kind == "group_mcp":
        return ss.GroupMCP(lam, 5.0, grouping)  # ω > every τ of these steps: the firm threshold
    return ss.MCP(lam / 4, 5.0)


def make_opt(alg, groups, backend):
    if alg == "rmda":
        return ss.RMDA(groups, lr=0.1, momentum=0.5, backend=backend)
    if alg.startswith("ramda"):
        return ss.RAMDA(groups, lr=0.1, momentum=0.5, solver=alg[6:], max_iters=8, backend=backend)
    if alg == "proxsgd":
        return ss.ProxSGD(groups, lr=0.1, momentum=0.5, backend=backend)
    if alg.startswith("proxgen"):
        return ss.ProxGen(groups, lr=0.05, weight_decay=0.01, solver=alg[8:], max_iters=8, backend=backend)
    if alg == "proxssi":
        return ss.ProxSSI(groups, lr=0.05, weight_decay=0.01, backend=backend)
    return ss.DessiLBI(groups, lr=0.1, kappa=1.5, nu=2.0, momentum=0.9, weight_decay=0.01, backend=backend)


def placed(x: torch.Tensor, layout) -> torch.Tensor:
    """x (contiguous) copied into a tensor of the same shape and the given memory layout."""
    if layout[0] == "permuted":
        perm = layout[1]
        inv = [perm.index(d) for d in range(x.dim())]
        return x.permute(*perm).contiguous().permute(*inv)
    if layout[0] == "sliced":
        dim, step = layout[1], layout[2]
        big = list(x.shape)
        big[dim] = big[dim] * step
        buf = torch.full(big, float("nan"), dtype=x.dtype)  # the gaps must never be read
        idx = [slice(None)] * x.dim()
        idx[dim] = slice(None, None, step)
        view = buf[tuple(idx)]
        view.copy_(x)
        return view
    return x.clone()


def run(case, backend, dtype=None):
    """Steps of the case's optimizer on one fresh parameter (and an unregularized bias)."""
    dtype = dtype or case["dtype"]
    gen = torch.Generator().manual_seed(case["seed"])
    shape = case["shape"]
    # log-uniform magnitudes along dim 0 (and 1): some groups are zeroed, some kept
    scale = 10 ** (-2 * torch.rand(shape[0], generator=gen, dtype=torch.float64))
    scale = scale.view(-1, *([1] * (len(shape) - 1)))
    if len(shape) > 1:
        s1 = 10 ** (-1.5 * torch.rand(shape[1], generator=gen, dtype=torch.float64))
        scale = scale * s1.view(1, -1, *([1] * (len(shape) - 2)))
    w = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    p = torch.nn.Parameter(placed(w, case["p_layout"]))
    bias = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64).to(dtype))
    reg = make_reg(case["kind"], case["lam"], case["grouping"])
    opt = make_opt(case["alg"], [{"params": [p], "regularizer": reg}, {"params": [bias]}], backend)
    for k in range(case["steps"]):
        g = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + 0.5 * w.double()).to(dtype)
        p.grad = placed(g, case["g_layout"])
        bias.grad = torch.randn(5, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
        if case["restart_at"] == k + 1:
            opt.restart()
    return [p, bias], opt


def tensors_of(params, opt):
    """(name, tensor) of every parameter and state tensor, and the state's scalars."""
    out, scalars = [], []
    for i, p in enumerate(params):
        out.append((f"param {i}", p.detach()))
        for k, v in sorted(opt.state[p].items()):
            if isinstance(v, torch.Tensor):
                out.append((f"param {i} state {k}", v))
            else:
                scalars.append((f"param {i} state {k}", v))
    return out, scalars


def rel_err(x: torch.Tensor, ref: torch.Tensor, floor: float) -> float:
    if ref.numel() == 0:
        return 0.0
    scale = max(ref.double().abs().max().item(), floor)
    return (x.double() - ref.double()).abs().max().item() / scale


def check(case, backend, tol, floor):
    a_params, a_opt = run(case, backend)
    b_params, b_opt = run(case, "reference")
    assert a_params[0].stride() == b_params[0].stride()
    a, a_sc = tensors_of(a_params, a_opt)
    b, b_sc = tensors_of(b_params, b_opt)
    assert [n for n, _ in a] == [n for n, _ in b]
    assert [n for n, _ in a_sc] == [n for n, _ in b_sc]
    for (name, x), (_, y) in zip(a_sc, b_sc):
        assert x == pytest.approx(y, rel=1e-15), name
    for (name, x), (_, y) in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, name
    pg32 = case["dtype"] == torch.float32 and case["alg"].endswith("_pg") and case["kind"] != "none"
    if pg32:
        c, _ = tensors_of(*run(case, "reference", torch.float64))
        for (name, x), (_, y), (_, ref) in zip(a, b, c):
            ex, ey = rel_err(x, ref, floor), rel_err(y, ref, floor)
            assert ex <= 2 * ey + 1e-4, (
                f"{name}: {backend} f32 error {ex:.2e} vs reference f32 error {ey:.2e}"
            )
        return
    for (name, x), (_, y) in zip(a, b):
        err = rel_err(x, y, floor)
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:g}"


def _describe(case) -> str:
    return ", ".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.skipif(not cpu_backend.available()[0], reason="the C++ extension is not built")
@settings(BASE)
@given(case=cases())
def test_cpu_matches_reference(case):
    tol = 1e-12 if case["dtype"] == torch.float64 else 1e-5
    try:
        check(case, "cpu", tol, 1e-30)
    except AssertionError as e:
        raise AssertionError(f"{e}\ncase: {_describe(case)}") from None


@pytest.mark.skipif(not IN_PROCESS, reason=f"no Triton interpreter in this process ({WHY})")
@pytest.mark.usefixtures("interpreter")
@settings(TRITON)
@given(case=cases())
def test_triton_matches_reference(case):
    try:
        check(case, "triton", 1e-5, 1.0)
    except AssertionError as e:
        raise AssertionError(f"{e}\ncase: {_describe(case)}") from None


@pytest.mark.skipif(not IN_PROCESS, reason=f"no Triton interpreter in this process ({WHY})")
@pytest.mark.usefixtures("interpreter")
@settings(TRITON)
@given(case=cases(algs=EXACT, kinds=("sgl", "group_mcp", "mcp")))
def test_triton_exact_matches_reference(case):
    """The exact SparseGroupLasso/GroupMCP/MCP solves, which the draws above rarely reach."""
    try:
        check(case, "triton", 1e-5, 1.0)
    except AssertionError as e:
        raise AssertionError(f"{e}\ncase: {_describe(case)}") from None


def test_groupings_fit():
    """The tuple groupings drawn are valid for their rank (the strategy itself is checked)."""
    for nd in range(1, 6):
        shape = (2,) * nd
        for grouping in groupings(nd):
            a, g, b = ss.GroupLasso(0.1, grouping).view_shape(shape)
            assert a * g * b == math.prod(shape)
