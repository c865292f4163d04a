"""backend="cuda" (csrc/cuda kernels) against backend="reference" on a GPU: parameters and every
state tensor and scalar, several steps with a restart, every algorithm × solver × regularizer ×
grouping, shapes hitting every kernel path (elementwise, warp-, block-sized and two-phase groups),
many tensors in one bucket, non-contiguous parameters, low precision, run-to-run determinism.

Skipped without a GPU or without the CUDA kernels in the extension (the kernels' per-group logic
is checked without a GPU in tests/test_cuda_host_emulation.py)."""

from __future__ import annotations

import pytest
import torch

import structsparse as ss
from structsparse.backends import cuda as cuda_backend


def test_available_reports_a_reason():
    ok, why = cuda_backend.available()
    assert isinstance(ok, bool)
    if not ok:
        assert why  # a clear reason, never an empty string
    else:
        assert torch.cuda.is_available() and cuda_backend.has_cuda_kernels()


OK, WHY = cuda_backend.available()
gpu = pytest.mark.skipif(not OK, reason=f"CUDA backend not available: {WHY}")

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
ALGOS = {
    "rmda": (ss.RMDA, dict(lr=0.1, momentum=0.5), 0.3),
    "ramda_pg": (ss.RAMDA, dict(lr=0.1, momentum=0.5, solver="pg"), 0.5),
    "ramda_exact": (ss.RAMDA, dict(lr=0.1, momentum=0.5, solver="exact"), 0.5),
    "proxsgd": (ss.ProxSGD, dict(lr=0.1, momentum=0.5), 0.5),
    "proxgen_pg": (ss.ProxGen, dict(lr=0.05, weight_decay=0.01, solver="pg"), 1.0),
    "proxgen_exact": (ss.ProxGen, dict(lr=0.05, weight_decay=0.01, solver="exact"), 1.0),
    "proxssi": (ss.ProxSSI, dict(lr=0.05, weight_decay=0.01), 1.0),
    "dessilbi": (ss.DessiLBI, dict(lr=0.2, kappa=2.0, nu=0.5, momentum=0.9, weight_decay=0.01), 0.3),
}
EXACT = ("ramda_exact", "proxgen_exact", "proxssi")
PG = ("ramda_pg", "proxgen_pg")
# "input" views: (6,5) → n=6 warp; (40,3,3,3) → n=360 block; (1100,2) → n=1100 two-phase;
# "output" views: (3,1500) → n=1500 two-phase; (1,1) elementwise; (0,5) empty
SHAPES = [(6, 5), (40, 3, 3, 3), (1100, 2), (3, 1500), (1, 1), (0, 5)]
BIAS = [(5,), (1,), (0,)]


def make_reg(kind: str, lam: float, grouping="input"):
    return {
        "none": lambda: None,
        "group_lasso": lambda: ss.GroupLasso(lam, grouping),
        "l1": lambda: ss.L1(lam / 4),
        "sgl": lambda: ss.SparseGroupLasso(lam / 8, lam / 2, grouping),
        "group_mcp": lambda: ss.GroupMCP(lam, 2.0, grouping),
        "mcp": lambda: ss.MCP(lam / 4, 2.0),
    }[kind]()


def make_tensors(shapes, dtype, seed=0, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if t.dim() >= 2 and t.numel():
            t = t * torch.exp(1.5 * torch.randn(shape[1], generator=gen, dtype=torch.float64)).view(
                1, -1, *([1] * (t.dim() - 2))
            )
        t = t.to(dtype).cuda()
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        out.append(t)
    return out


def run(algo, reg, weights, biases, backend, steps=6, restart_at=3, seed=1, **extra):
    cls, kw, _ = ALGOS[algo]
    force_rtol = extra.pop("force_rtol", None)
    kw = {**kw, **extra}
    ws = [torch.nn.Parameter(w.clone().as_strided(w.size(), w.stride())) for w in weights]
    bs = [torch.nn.Parameter(b.clone()) for b in biases]
    groups = [{"params": ws, "regularizer": reg}]
    if bs:
        groups.append({"params": bs, "regularizer": None})
    opt = cls(groups, backend=backend, **kw)
    if force_rtol is not None:  # below the public validation's range on purpose (see _case)
        for g in opt.param_groups:
            g["rtol"] = force_rtol
    gen = torch.Generator().manual_seed(seed)
    for k in range(steps):
        for p in ws + bs:
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).cuda()
            p.grad = torch.empty_like(p).copy_(0.3 * noise + p.detach())
        opt.step()
        if k + 1 == restart_at:
            opt.restart()
    return ws + bs, opt


def _err(x, ref):
    x, ref = x.double(), ref.double()
    if ref.numel() == 0:
        return 0.0
    return (x - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


def assert_same(a, b, tol):
    (pa_list, oa), (pb_list, ob) = a, b
    for pa, pb in zip(pa_list, pb_list):
        assert pa.stride() == pb.stride()
        assert _err(pa.detach(), pb.detach()) <= tol, "param"
        sa, sb = oa.state[pa], ob.state[pb]
        assert set(sa) == set(sb)
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                assert sa[k].dtype == sb[k].dtype
                assert _err(sa[k], sb[k]) <= tol, k
            else:
                assert sa[k] == pytest.approx(sb[k], rel=1e-15), k


def _case(algo, kind, grouping, dtype, shapes=SHAPES, **kw):
    reg = make_reg(kind, ALGOS[algo][2], grouping)
    weights = make_tensors(shapes, dtype, **kw)
    biases = make_tensors(BIAS, dtype, seed=7)
    extra = {}
    if dtype == torch.float32 and algo in PG and kind != "none":
        # float32 PG: iterates differing by ulps can move a group's stop by one iteration (see
        # test_cuda_host_emulation.py); a fixed number of iterations (rtol = -1e30 never stops
        # early) makes the comparison exact to 1e-5
        extra = dict(max_iters=20, force_rtol=-1e30)
    a = run(algo, reg, weights, biases, "cuda", **extra)
    b = run(algo, reg, weights, biases, "reference", **extra)
    assert_same(a, b, TOL[dtype])
    return a


@gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("grouping", ["input", "output", "element", (0, 2, 3)])
def test_group_lasso_groupings(algo, grouping, dtype):
    shapes = SHAPES if grouping != (0, 2, 3) else [(40, 3, 3, 3), (4, 300, 2, 2)]
    _case(algo, "group_lasso", grouping, dtype, shapes)


REG_CASES = [
    (algo, kind)
    for algo in ALGOS
    for kind in ("none", "l1", "sgl", "group_mcp", "mcp")
    if not (algo == "dessilbi" and kind in ("sgl", "group_mcp", "mcp"))  # L1/GroupLasso only
]


@gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("algo,kind", REG_CASES)
def test_regularizers(algo, kind, dtype):
    _case(algo, kind, "input", dtype)


@gpu
@pytest.mark.parametrize("algo", EXACT)
@pytest.mark.parametrize("kind", ["sgl", "group_mcp"])
def test_exact_solves_output_grouping(algo, kind):
    """The exact SparseGroupLasso/GroupMCP solves on contiguous ("output") groups ("input" above)."""
    _case(algo, kind, "output", torch.float32)


@gpu
@pytest.mark.parametrize("algo", list(ALGOS))
def test_channels_last(algo):
    ws, _ = _case(
        algo, "group_lasso", "input", torch.float64, [(6, 5, 3, 3), (40, 3, 3, 3)], channels_last=True
    )
    assert not ws[0].is_contiguous()


@gpu
@pytest.mark.parametrize("algo", ["rmda", "ramda_exact", "proxgen_pg", "proxssi", "dessilbi"])
def test_many_tensors_one_bucket(algo):
    shapes = [(i % 7 + 1, i % 5 + 2) for i in range(300)] + [(1100, 2)]
    _case(algo, "group_lasso", "input", torch.float64, shapes)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("algo", ["rmda", "ramda_exact", "proxgen_exact", "proxssi", "dessilbi"])
def test_low_precision(algo, dtype):
    reg = make_reg("group_lasso", ALGOS[algo][2])
    weights = make_tensors(SHAPES, dtype)
    a = run(algo, reg, weights, [], "cuda")
    b = run(algo, reg, weights, [], "reference")
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    for pa, pb in zip(a[0], b[0]):
        assert pa.dtype == dtype
        assert _err(pa.detach(), pb.detach()) <= 2 * ulp
        for k, v in a[1].state[pa].items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == torch.float32, k
                assert _err(v, b[1].state[pb][k]) <= 2 * ulp, k


@gpu
@pytest.mark.parametrize("algo", list(ALGOS))
def test_deterministic(algo):
    reg = make_reg("group_lasso", ALGOS[algo][2])
    weights = make_tensors(SHAPES, torch.float32)
    a = run(algo, reg, weights, [], "cuda")
    b = run(algo, reg, weights, [], "cuda")
    for pa, pb in zip(a[0], b[0]):
        assert torch.equal(pa, pb)
        for k, v in a[1].state[pa].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[1].state[pb][k]), k


@gpu
def test_auto_picks_a_gpu_backend():
    from structsparse.backends import resolve

    assert resolve("auto", torch.device("cuda")) is cuda_backend  # "cuda" is tried first


# -- availability per op (no GPU needed: CUDA kernels registered from Python stand in for the
# compiled ones of a CUDA build) ------------------------------------------------------------------


@pytest.fixture
def partial_cuda_build(monkeypatch):
    """The compiled CUDA kernels of every step op but dessilbi_step, and a visible GPU."""
    from structsparse import ops

    if not ops.loaded()[0]:
        pytest.skip(ops.loaded()[1])
    if cuda_backend.compiled_cuda_ops():
        pytest.skip("the extension has compiled CUDA kernels: the stand-ins would collide")
    lib = torch.library.Library("structsparse", "IMPL")
    have = [n for n in ops.STEP_OPS if n != "dessilbi_step"]
    for name in have:
        lib.impl(name, lambda *args: None, "CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    yield have
    lib._destroy()


def test_one_missing_kernel_leaves_the_others_available(partial_cuda_build):
    from structsparse.backends import resolve, triton

    assert cuda_backend.compiled_cuda_ops() == tuple(partial_cuda_build)
    assert cuda_backend.missing_cuda_kernels() == ("dessilbi_step",)
    assert not cuda_backend.has_cuda_kernels()  # not a complete build
    assert cuda_backend.has_cuda_kernels("rmda_step") and not cuda_backend.has_cuda_kernels("dessilbi_step")
    assert cuda_backend.available() == (True, "")
    assert cuda_backend.available("rmda_step") == (True, "")
    ok, why = cuda_backend.available("dessilbi_step")
    assert not ok and "no compiled CUDA kernel for dessilbi_step" in why
    dev = torch.device("cuda")
    assert resolve("cuda", dev, "rmda_step") is cuda_backend
    assert resolve("auto", dev, "proxgen_step") is cuda_backend
    with pytest.raises(RuntimeError, match="dessilbi_step"):
        resolve("cuda", dev, "dessilbi_step")
    if triton.available("dessilbi_step")[0]:
        assert resolve("auto", dev, "dessilbi_step") is triton  # that op alone goes to Triton
    with pytest.raises(RuntimeError, match="no compiled CUDA kernel for dessilbi_step"):
        cuda_backend.dessilbi_step([], [], [], [], [], lr=0.1, kappa=1.0, nu=1.0, momentum=0.0,
                                   weight_decay=0.0, reg=None)  # fmt: skip


def test_cpu_only_build_reason(monkeypatch):
    from structsparse import ops

    if not ops.loaded()[0] or cuda_backend.compiled_cuda_ops():
        pytest.skip("needs a CPU-only build of the extension")
    assert cuda_backend.missing_cuda_kernels() == ops.STEP_OPS
    ok, why = cuda_backend.available("rmda_step")
    assert not ok and "built without CUDA kernels" in why
