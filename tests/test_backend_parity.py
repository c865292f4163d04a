"""Every fused backend available here against the reference backend: parameters and every state
entry after ten steps with ``opt.restart()`` after step 5 and a resume from ``state_dict`` after
step 7, for every optimizer configuration × regularizer × grouping, in float64 (1e-12) and
float32 (1e-5).

Buckets a backend declines (its ``supports()``) run on the reference backend, so every case is
expected to match whatever the backend runs itself. The PG solver runs at most 20 iterations;
in float32 exactly 20 (rtol below any decrease): float32 iterates that differ by ulps may move a
group's data-dependent stop by one iteration; the stopping rule itself is checked in float64
here and in float32 in the per-backend modules.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALGOS,
    EXACT,
    PG,
    REG_KINDS,
    TOL,
    accepts,
    assert_same,
    device_of,
    fused_backends,
    make_reg,
    make_tensors,
    run,
)

BACKENDS = fused_backends()
if not BACKENDS:
    pytest.skip("no fused backend is available here", allow_module_level=True)

DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])

CONV = [(6, 5, 3, 3), (4, 3, 1, 1)]  # conv weights for every grouping
FLAT = [(7, 11), (13, 17), (1, 1), (2, 3), (0, 5)]  # linear and odd shapes, an empty tensor
# on GPUs also groups past a warp and past a block of the CUDA kernels ("input" groups of 360
# and 1100 elements, rows of 1500)
GPU_CONV = [(40, 3, 3, 3), (4, 300, 2, 2)]
GPU_FLAT = [(1100, 2), (3, 1500)]
BIAS = [(5,), (1,), (0,)]


def _case(backend, algo, kind, grouping, dtype, shapes):
    dev = device_of(backend)
    if dev != "cpu":
        shapes = shapes + (GPU_CONV if shapes is CONV else GPU_FLAT)
    reg = make_reg(kind, ALGOS[algo][2], grouping)
    weights = make_tensors(shapes, dtype, device=dev)
    biases = make_tensors(BIAS, dtype, seed=7, device=dev)
    extra = {}
    if algo in PG:
        extra = dict(max_iters=20)
        if dtype == torch.float32 and kind != "none":
            extra["force_rtol"] = -1e30
    a = run(algo, reg, weights, biases, backend, reload_at=7, **extra)
    b = run(algo, reg, weights, biases, "reference", reload_at=7, **extra)
    assert_same(*a, *b, TOL[dtype])


@DTYPES
@pytest.mark.parametrize("grouping", ["input", "output", "kernel", "element", (0, 2, 3)])
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_group_lasso_groupings(backend, algo, grouping, dtype):
    _case(backend, algo, "group_lasso", grouping, dtype, CONV)


REG_CASES = [(a, k) for a in ALGOS for k in REG_KINDS if k != "group_lasso" and accepts(a, k)]


@DTYPES
@pytest.mark.parametrize("algo,kind", REG_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_regularizers(backend, algo, kind, dtype):
    # the reference's SVD prox of NuclearNorm (always the reference's) takes no empty tensor
    shapes = FLAT if kind != "nuclear" else [s for s in FLAT if 0 not in s]
    _case(backend, algo, kind, "input", dtype, shapes)


@DTYPES
@pytest.mark.parametrize("grouping", ["output", "kernel", (0, 2, 3)])
@pytest.mark.parametrize("kind", ["sgl", "group_mcp"])
@pytest.mark.parametrize("algo", EXACT)
@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_grouped_regularizers(backend, algo, kind, grouping, dtype):
    """The exact SparseGroupLasso/GroupMCP solves on conv groupings, both GroupMCP regimes (its ω
    spans the groups' min P against α/ω_g)."""
    _case(backend, algo, kind, grouping, dtype, CONV)
