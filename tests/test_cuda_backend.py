"""backend="cuda" (csrc/cuda kernels) against backend="reference" on a GPU: parameters and every
state tensor and scalar, several steps with a restart: the exact solves on contiguous groups,
many tensors in one bucket, non-contiguous parameters, low precision, run-to-run determinism,
per-op availability. Every algorithm × regularizer × grouping, with shapes hitting every kernel
path (elementwise, warp-, block-sized and two-phase groups): tests/test_backend_parity.py.

Skipped without a GPU or without the CUDA kernels in the extension (the kernels' per-group logic
is checked without a GPU in tests/test_cuda_host_emulation.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import ALGOS, EXACT, PG, TOL, assert_same, make_reg, make_tensors, rel_err, run

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

SHAPES = [(6, 5), (40, 3, 3, 3), (1100, 2), (3, 1500), (1, 1), (0, 5)]
BIAS = [(5,), (1,), (0,)]


def _err(x, ref):
    return rel_err(x, ref)


def _case(algo, kind, grouping, dtype, shapes=SHAPES, **kw):
    reg = make_reg(kind, ALGOS[algo][2], grouping)
    weights = make_tensors(shapes, dtype, device="cuda", **kw)
    biases = make_tensors(BIAS, dtype, seed=7, device="cuda")
    extra = {}
    if dtype == torch.float32 and algo in PG and kind != "none":
        extra = dict(max_iters=20, force_rtol=-1e30)  # see tests/test_backend_parity.py
    a = run(algo, reg, weights, biases, "cuda", steps=6, restart_at=3, **extra)
    b = run(algo, reg, weights, biases, "reference", steps=6, restart_at=3, **extra)
    assert_same(*a, *b, TOL[dtype])
    return a


@gpu
@pytest.mark.parametrize("algo", EXACT)
@pytest.mark.parametrize("kind", ["sgl", "group_mcp"])
def test_exact_solves_output_grouping(algo, kind):
    """The exact SparseGroupLasso/GroupMCP solves on contiguous ("output") groups ("input" groups: tests/test_backend_parity.py)."""
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
    weights = make_tensors(SHAPES, dtype, device="cuda")
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
    weights = make_tensors(SHAPES, torch.float32, device="cuda")
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
