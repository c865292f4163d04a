"""Triton backend versus the reference backend, on CPU tensors under ``TRITON_INTERPRET=1``.

The interpreter is chosen when the kernels are decorated (at import), so this module imports
``structsparse.triton_kernels`` freshly with the variable set and drops it again afterwards: other
test modules (e.g. tests/test_gpu.py on a GPU machine) get compiled kernels, and the variable
does not leak. Shapes are tiny; ``ONCHIP_LIMIT`` and ``TILE`` are lowered so that the two-phase
path (groups above the on-chip limit) and multi-program tensors run at that size.

Comparison: parameters and every state entry after several steps with ``opt.restart()`` in the
middle; float32 within 1e-5 relative to the tensor's largest magnitude; exact zero patterns equal.
"""

from __future__ import annotations

import os
import subprocess
import sys

import newton_cases
import pytest
import torch

import structsparse as ss

_PREFIX = "structsparse.triton_kernels"


def _interpreted_lang() -> bool:
    import triton.language as tl

    return type(tl.zeros).__name__ == "InterpretedFunction"


def _setup() -> tuple[bool, str]:
    """Import triton in interpreter mode here when that is safe; else run in a subprocess."""
    try:
        if "triton.language" not in sys.modules and not torch.cuda.is_available():
            old = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1"
            try:
                import triton.language  # noqa: F401  (its builtins are decorated now)
            finally:
                if old is None:
                    del os.environ["TRITON_INTERPRET"]
                else:
                    os.environ["TRITON_INTERPRET"] = old
        ok = _interpreted_lang()
    except ImportError as e:
        return False, f"triton not importable: {e}"
    return ok, "" if ok else "triton was imported before this module without TRITON_INTERPRET=1"


IN_PROCESS, WHY = _setup()
needs_interp = pytest.mark.skipif(not IN_PROCESS, reason=f"run by test_interpreter_subprocess ({WHY})")


def _drop_kernels() -> None:
    for name in [m for m in sys.modules if m == _PREFIX or m.startswith(_PREFIX + ".")]:
        del sys.modules[name]
    from structsparse.backends import triton as tb

    tb._kernels = None


@pytest.fixture(scope="module")
def interpreter():
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    _drop_kernels()
    from structsparse.backends import triton as tb

    tk = tb.kernels()
    assert type(tk.step.step_kernel).__name__ == "InterpretedFunction"
    yield tk
    _drop_kernels()
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old


@pytest.fixture
def small_tiles(interpreter, monkeypatch):
    """64 elements per program, so that a tensor of a few dozen elements spans several programs."""
    monkeypatch.setattr(interpreter.launch, "TILE", 64)
    return interpreter


class _Recorder:
    """Stands in for ``step_kernel`` in launch.py; records each launch's grid and FIT flag."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[tuple[tuple[int, ...], bool]] = []

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.launches.append((grid, kw["FIT"]))
            return self.kernel[grid](*args, **kw)

        return run


@pytest.fixture
def recorder(interpreter, monkeypatch):
    rec = _Recorder(interpreter.launch.step_kernel)
    monkeypatch.setattr(interpreter.launch, "step_kernel", rec)
    return rec


@pytest.fixture
def tiny_onchip(small_tiles, recorder, monkeypatch):
    """Also an on-chip limit of 16 elements per group: larger groups take the two-phase path."""
    monkeypatch.setattr(small_tiles.launch, "ONCHIP_LIMIT", 16)
    yield small_tiles
    assert any(not fit for _, fit in recorder.launches), "the two-phase path did not run"


@pytest.mark.skipif(IN_PROCESS or WHY.startswith("triton not"), reason="runs in this process")
def test_interpreter_subprocess():
    """triton was loaded for a GPU before this module: run this module in a fresh interpreter process."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]


# -- scenario runner --------------------------------------------------------------------------


def _scales(shape, gen):
    """Log-uniform scales per output row and per input column (1-D: per element): channels of
    very different sizes, so that some groups are screened out and some are kept."""
    if len(shape) < 2:
        return 10 ** (-2 * torch.rand(shape, generator=gen, dtype=torch.float64))
    r = 10 ** (-2 * torch.rand(shape[0], generator=gen, dtype=torch.float64))
    c = 10 ** (-2 * torch.rand(shape[1], generator=gen, dtype=torch.float64))
    s = r[:, None] * c[None, :]
    return s.view(*s.shape, *([1] * (len(shape) - 2))).expand(shape)


def _run(make_opt, reg, shapes, dtype, backend, steps=3, restart_at=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = list(shapes) + [(7,), (1,)]  # + unregularized bias-like tensors
    scales = [_scales(s, gen) for s in shapes]
    tensors = [
        (torch.randn(s, generator=gen, dtype=torch.float64) * sc).to(dtype).requires_grad_(True)
        for s, sc in zip(shapes, scales)
    ]
    params, extra = tensors[:-2], tensors[-2:]
    groups = [{"params": params, "regularizer": reg}, {"params": extra}]
    opt = make_opt(groups, backend)
    for i in range(steps):
        if i == restart_at:
            opt.restart()
        for p, sc in zip(tensors, scales):
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * sc).to(dtype)
        opt.step()
    return tensors, opt


def _close(name, a, b, tol):
    a = a.detach().double()
    b = b.detach().double()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= tol * scale, f"{name}: max abs diff {err:.3g} > {tol:g}·{scale:.3g}"


def _compare(make_opt, reg, shapes, dtype=torch.float32, tol=1e-5, zeros=True, **kw):
    ref_params, ref_opt = _run(make_opt, reg, shapes, dtype, "reference", **kw)
    tri_params, tri_opt = _run(make_opt, reg, shapes, dtype, "triton", **kw)
    for i, (pr, pt) in enumerate(zip(ref_params, tri_params)):
        _close(f"param {i}", pt, pr, tol)
        if zeros:
            assert torch.equal(pt == 0, pr == 0), f"param {i}: zero patterns differ"
        sr, st = ref_opt.state[pr], tri_opt.state[pt]
        assert set(sr) == set(st)
        for k, v in sr.items():
            if isinstance(v, torch.Tensor):
                assert st[k].dtype == v.dtype
                _close(f"param {i} state {k}", st[k], v, tol)
            else:
                assert st[k] == v, f"param {i} state {k}: {st[k]} != {v}"
    return ref_params


def _nzero_groups(p, reg):
    x3 = reg.as_groups(p.detach())
    return int((x3 == 0).all(dim=2).all(dim=0).sum())


# -- optimizers and regularizers ------------------------------------------------------------------

OPTS = {
    "rmda": lambda momentum=0.0: lambda g, b: ss.RMDA(g, lr=0.1, momentum=momentum, backend=b),
    "proxsgd": lambda momentum=0.5: lambda g, b: ss.ProxSGD(g, lr=0.1, momentum=momentum, backend=b),
    "ramda": lambda solver="pg", max_iters=6, rtol=1e-8, momentum=0.0: (
        lambda g, b: ss.RAMDA(
            g, lr=0.1, momentum=momentum, solver=solver, max_iters=max_iters, rtol=rtol, backend=b
        )
    ),
    "proxgen": lambda solver="pg", max_iters=6, rtol=1e-8: (
        lambda g, b: ss.ProxGen(
            g, lr=0.05, weight_decay=0.01, solver=solver, max_iters=max_iters, rtol=rtol, backend=b
        )
    ),
    "proxssi": lambda: lambda g, b: ss.ProxSSI(g, lr=0.05, weight_decay=0.01, backend=b),
}

# λ per algorithm such that the scenario has both zero and kept groups
LAM = {"rmda": 0.015, "proxsgd": 0.01, "ramda": 0.005, "proxgen": 0.006, "proxssi": 0.0006}


def _regs(alg):
    lam = LAM[alg]
    return {
        "none": None,
        "gl_input": ss.GroupLasso(lam, "input"),
        "gl_output": ss.GroupLasso(lam, "output"),
        "gl_kernel": ss.GroupLasso(lam, "kernel"),
        "gl_dims": ss.GroupLasso(lam, (0, 2, 3)),
        "l1": ss.L1(lam),
        "sgl": ss.SparseGroupLasso(lam / 4, lam, "input"),
        "gmcp": ss.GroupMCP(lam, 5.0, "output"),
        "mcp": ss.MCP(lam, 5.0),
    }


SCREENABLE = ("none", "gl_input", "gl_output", "gl_kernel", "gl_dims", "l1")
ALL_REGS = SCREENABLE + ("sgl", "gmcp", "mcp")

# Conv-shaped (every grouping of docs/math.md §1 applies): 3x3 kernels, a prime-sized 1x1 conv spanning
# several programs at TILE = 64, and a single element.
SHAPES = [(2, 3, 3, 3), (7, 13, 1, 1), (1, 1, 1, 1)]
# Two-phase: 'input' groups have 36 elements, 'output' groups 27 (> 16); 'kernel' groups (9) fit.
SHAPES_TWOPHASE = [(4, 3, 3, 3)]
GROUPED = ("gl_input", "gl_output", "gl_kernel", "sgl", "gmcp")

CASES = (
    [("rmda", {}, r) for r in ALL_REGS]
    + [("proxsgd", {}, r) for r in ALL_REGS]
    + [("ramda", {"solver": "pg"}, r) for r in ALL_REGS]
    + [("ramda", {"solver": "exact"}, r) for r in SCREENABLE]
    + [("proxgen", {"solver": "pg"}, r) for r in ALL_REGS]
    + [("proxgen", {"solver": "exact"}, r) for r in SCREENABLE]
    + [("proxssi", {}, r) for r in SCREENABLE]
)


def _id(case):
    alg, kw, reg = case
    return "-".join([alg, *map(str, kw.values()), reg])


TWOPHASE_CASES = [c for c in CASES if c[2] in GROUPED and c[2] != "gl_kernel"]  # kernel groups fit

# the exact solves of SparseGroupLasso/GroupMCP/MCP ('output' GroupMCP groups; more in
# tests/test_triton_exact.py), and solver="auto"
CASES += (
    [("ramda", {"solver": "exact"}, r) for r in ("sgl", "gmcp", "mcp")]
    + [("proxgen", {"solver": "exact"}, r) for r in ("sgl", "gmcp", "mcp")]
    + [("proxssi", {}, r) for r in ("sgl", "gmcp", "mcp")]
    + [("ramda", {"solver": "auto"}, r) for r in ("gl_input", "sgl")]
)


def _check_case(case, shapes, **kw):
    alg, okw, reg_name = case
    reg = _regs(alg)[reg_name]
    ref = _compare(OPTS[alg](**okw), reg, shapes, **kw)
    if reg is not None and reg_name in GROUPED:
        # the scenario is meaningful: some groups are zero, some are not
        total = sum(reg.view_shape(p.shape)[1] for p in ref[: len(shapes)])
        zero = sum(_nzero_groups(p, reg) for p in ref[: len(shapes)])
        assert 0 < zero < total, f"{zero} of {total} groups are zero: retune LAM"


@needs_interp
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_onchip_matches_reference(case, small_tiles):
    _check_case(case, SHAPES)


@needs_interp
@pytest.mark.parametrize("case", TWOPHASE_CASES, ids=[_id(c) for c in TWOPHASE_CASES])
def test_twophase_matches_reference(case, tiny_onchip):
    _check_case(case, SHAPES_TWOPHASE)


PG_CASES = [("ramda", {"solver": "pg", "max_iters": 100}, r) for r in ("gl_output", "sgl", "gmcp")] + [
    ("proxgen", {"solver": "pg", "max_iters": 100}, r) for r in ("gl_input", "gmcp")
]


@needs_interp
@pytest.mark.parametrize("case", PG_CASES, ids=[_id(c) for c in PG_CASES])
def test_pg_default_rtol_float64(case, interpreter):
    """PG to its rtol stopping rule (default 1e-8); in float64 both backends stop at the same
    iteration. Kernel scalars are fp32, hence 1e-6."""
    _check_case(case, SHAPES_TWOPHASE, dtype=torch.float64, tol=1e-6)


@needs_interp
@pytest.mark.parametrize("case", PG_CASES, ids=[_id(c) for c in PG_CASES])
def test_pg_default_rtol_float32(case, interpreter):
    """The same in float32. Q is evaluated in float64 by every backend (reference.py
    subproblem_objective): in float32 the rule 1e-8 sat below Q's own rounding, which then decided
    where a group stopped (hence the capped max_iters of the fp32 cases above). Iterates differing
    by ulps may still move a stop by one iteration where Q's decrease lies near the threshold
    (tests/test_cuda_host_emulation.py met one such case); these cases are within 1e-5."""
    _check_case(case, SHAPES_TWOPHASE, dtype=torch.float32, tol=1e-5)


@needs_interp
@pytest.mark.parametrize("case", [c for c in CASES if c[2] in ("none", "gl_input")], ids=_id)
def test_float64(case, interpreter):
    _check_case(case, SHAPES_TWOPHASE, dtype=torch.float64, tol=1e-6)


@needs_interp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alg", ["rmda", "ramda", "proxgen"])
def test_low_precision_params_fp32_state(alg, dtype, interpreter):
    """fp32 state and math for bf16/fp16 parameters, rounded once per step like the reference."""
    okw = {"solver": "exact"} if alg != "rmda" else {}
    reg = _regs(alg)["gl_input"]
    ref_p, ref_opt = _run(OPTS[alg](**okw), reg, [(2, 3, 3, 3)], dtype, "reference")
    tri_p, tri_opt = _run(OPTS[alg](**okw), reg, [(2, 3, 3, 3)], dtype, "triton")
    ulp = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
    for pr, pt in zip(ref_p, tri_p):
        assert pt.dtype == dtype
        _close("param", pt, pr, 2 * ulp)
        for k, v in ref_opt.state[pr].items():
            if isinstance(v, torch.Tensor):
                assert tri_opt.state[pt][k].dtype == torch.float32
                # the anchor is the (rounded) parameter at the restart
                _close(k, tri_opt.state[pt][k], v, 2 * ulp if k == "anchor" else 1e-5)


@needs_interp
def test_unregularized_tensors_share_one_launch(recorder):
    """Many small unregularized tensors of a bucket go in one launch (pointer tables)."""
    params = [torch.randn(n, requires_grad=True) for n in (1, 2, 3, 5, 7, 11, 13, 1000, 3000)]
    ref = [p.detach().clone().requires_grad_(True) for p in params]
    opts = [
        ss.RAMDA(ps, lr=0.1, momentum=0.5, backend=b) for ps, b in ((params, "triton"), (ref, "reference"))
    ]
    for _ in range(2):
        for p, q in zip(params, ref):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for o in opts:
            o.step()
    assert len(recorder.launches) == 2, recorder.launches  # one launch per step for all nine tensors
    for p, q in zip(params, ref):
        _close("param", p, q, 1e-5)


@needs_interp
def test_noncontiguous_param(interpreter):
    """A channels_last conv weight is stepped through a contiguous copy, same result."""
    reg = ss.GroupLasso(0.005, "input")
    out = []
    for b in ("reference", "triton"):
        torch.manual_seed(0)
        w = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last).requires_grad_(True)
        opt = ss.RAMDA([w], lr=0.1, momentum=0.0, solver="exact", regularizer=reg, backend=b)
        for _ in range(2):
            w.grad = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
            opt.step()
        out.append(w.detach().clone())
    _close("param", out[1], out[0], 1e-5)
    assert torch.equal(out[1] == 0, out[0] == 0)


@needs_interp
def test_empty_tensor_in_bucket(interpreter):
    """An empty tensor next to a non-empty one: skipped by the kernel, the other one stepped."""
    from structsparse.backends import reference
    from structsparse.backends import triton as tb

    reg = ss.GroupLasso(0.01, "input")
    outs = []
    for mod in (reference, tb):
        torch.manual_seed(0)
        ps = [torch.randn(0, 3), torch.randn(4, 3)]
        gs = [torch.randn_like(p) for p in ps]
        w0s = [p.clone() for p in ps]
        vs = [torch.zeros_like(p) for p in ps]
        us = [torch.zeros_like(p) for p in ps]
        mod.ramda_step(
            ps,
            gs,
            w0s,
            vs,
            us,
            steps=[1, 1],
            alphas=[0.1, 0.1],
            lr=0.1,
            c=1.0,
            eps=1e-6,
            reg=reg,
            solver="exact",
            max_iters=10,
            rtol=1e-8,
        )
        outs.append(ps + vs + us)
    for a, b in zip(*outs):
        _close("tensor", b, a, 1e-5)


@needs_interp
def test_nuclear_delegates_to_reference(interpreter):
    out = []
    for b in ("reference", "triton"):
        torch.manual_seed(0)
        w = torch.randn(5, 4, requires_grad=True)
        opt = ss.RMDA([w], lr=0.1, regularizer=ss.NuclearNorm(0.5), backend=b)
        for _ in range(2):
            w.grad = torch.randn(5, 4)
            opt.step()
        out.append(w.detach().clone())
    assert torch.equal(out[0], out[1])


@needs_interp
def test_available_in_interpreter(interpreter):
    from structsparse.backends import triton as tb

    assert tb.available() == (True, "")


@needs_interp
def test_unavailable_without_interpreter_or_cuda(interpreter, monkeypatch):
    from structsparse.backends import resolve
    from structsparse.backends import triton as tb

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the backend is available")
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, why = tb.available()
    assert not ok and "TRITON_INTERPRET" in why
    with pytest.raises(RuntimeError, match="backend='triton' is not available"):
        resolve("triton", torch.device("cpu"))


@needs_interp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lam", [1e-6, 1e-2, 0.3, 3.0])
@pytest.mark.parametrize("path", ["onchip", "twophase"])
def test_newton_start_and_stop(path, lam, dtype, interpreter, monkeypatch):
    """Newton's rule of csrc/include/structsparse/math.h in the Triton solve, on the hard cases of
    tests/newton_cases.py (P spread over decades within a group, thresholds from tiny to
    near-screening): within rounding of the bisection root (float64: 1e-6, the kernel's scalars
    are fp32)."""
    from structsparse.backends import triton as tb

    monkeypatch.setattr(interpreter.launch, "TILE", 64)
    if path == "twophase":
        monkeypatch.setattr(interpreter.launch, "ONCHIP_LIMIT", 16)
    shapes = [(6, 5), (40, 3, 3, 3), (3, 30)]
    state = newton_cases.ramda_states(shapes, dtype)
    reg = ss.GroupLasso(lam, "input")
    xs = newton_cases.ramda_exact(tb.ramda_step, shapes, state, reg, dtype)
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    newton_cases.assert_bisection(shapes, state, reg, lam, xs, tol, "triton")


_STEP = None  # the kernels' step module while _cbrt_elementwise runs (the interpreter reads globals)


def _cbrt_elementwise(u_ptr, o_ptr, n, BLOCK: tl.constexpr):  # noqa: F821  (tl: triton.language)
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
    m = off < n
    tl.store(o_ptr + off, _STEP._cbrt(tl.load(u_ptr + off, mask=m, other=0.0)), mask=m)  # noqa: F821


def _run_cbrt(step_module, u: torch.Tensor) -> torch.Tensor:
    """The kernels' ``_cbrt`` applied elementwise by a one-line kernel (under the interpreter)."""
    global _STEP, tl
    import triton
    import triton.language as tl

    _STEP = step_module
    out = torch.empty_like(u)
    triton.jit(_cbrt_elementwise)[(triton.cdiv(u.numel(), 4096),)](u, out, u.numel(), BLOCK=4096)
    return out


@needs_interp
def test_cbrt_accuracy(interpreter):
    """Triton's cube root (P = cbrt(U) + ε of RAMDA) against the correctly rounded cube root:
    within 1 ulp in float32 over normal and subnormal U (measured: 1 ulp at most, about 8 % of
    samples misrounded: the exp2/log2 guess plus one Newton step does not round correctly, which
    the 1e-5 comparisons with the reference allow), exact on small cubes, 0 for U ≤ 0; float64
    within 2 ulps. Subnormal U goes through the 2^24 scaling."""
    import numpy as np

    def ulps32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))

    rng = np.random.default_rng(0)
    normal = np.exp(rng.uniform(np.log(1e-38), np.log(3e38), 100_000)).astype(np.float32)
    tiny = np.exp(rng.uniform(np.log(1e-45), np.log(1e-38), 20_000)).astype(np.float32)
    cubes = (np.arange(1, 256, dtype=np.float64) ** 3).astype(np.float32)
    f32 = np.finfo(np.float32)
    special = np.array([2.0**-149, 2.0**-126, f32.tiny * 0.5, f32.max, 0.125, 8.0], dtype=np.float32)
    for u in (normal, tiny[tiny > 0], special):
        got = _run_cbrt(interpreter.step, torch.from_numpy(u)).numpy()
        d = ulps32(got, np.cbrt(u.astype(np.float64)).astype(np.float32))
        assert d.max() <= 1, (u[d.argmax()], got[d.argmax()])
    got = _run_cbrt(interpreter.step, torch.from_numpy(cubes)).numpy()
    np.testing.assert_array_equal(got, np.arange(1, 256, dtype=np.float32))
    zeros = _run_cbrt(interpreter.step, torch.tensor([0.0, -0.0, -1.0, -1e-40]))
    assert torch.equal(zeros, torch.zeros(4))

    u64 = torch.from_numpy(np.exp(rng.uniform(np.log(1e-300), np.log(1e300), 20_000)))
    got64 = _run_cbrt(interpreter.step, u64)
    rel = ((got64 - torch.from_numpy(np.cbrt(u64.numpy()))) / got64).abs()
    # float64: one Newton step from an exp2/log2 guess whose error depends on the host's libm
    # (numpy's exp2/log2 under the interpreter): within 3 ulps
    assert rel.max().item() <= 3 * 2.0**-52


@needs_interp
def test_cbrt_subnormal_with_flushing_log2(interpreter, monkeypatch):
    """A GPU log2 may flush subnormal inputs to zero (PTX lg2.approx.ftz). The interpreter's log2
    made to flush them likewise: the cube root of subnormal U still comes out within 1 ulp, since
    _cbrt scales such U into the normal range before the guess (without the scaling: +inf)."""
    import numpy as np
    from triton.runtime import interpreter as ti

    if not hasattr(ti.InterpreterBuilder, "create_log2"):
        pytest.skip("this triton's interpreter has no create_log2 to patch")
    tiny = np.float32(np.finfo(np.float32).tiny)

    def flushing_log2(self, arg):
        return self.unary_op(arg, lambda x: np.log2(np.where(np.abs(x) < tiny, x.dtype.type(0), x)))

    monkeypatch.setattr(ti.InterpreterBuilder, "create_log2", flushing_log2)
    u = np.array([2.0**-149, 1e-45, 1e-42, 1e-40, 2.0**-127, 1e-30, 8.0], dtype=np.float32)
    got = _run_cbrt(interpreter.step, torch.from_numpy(u)).numpy()
    want = np.cbrt(u.astype(np.float64)).astype(np.float32)
    assert np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64)).max() <= 1, got
