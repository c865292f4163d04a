"""pytest-benchmark microbenchmarks of the fused CPU kernels (not part of the test suite: tests
live in tests/). Run: PYTHONPATH=$PWD python -m pytest bench/test_bench_kernels.py --benchmark-only"""

from __future__ import annotations

import pytest
import torch

import structsparse as ss
from structsparse.backends import cpu

pytestmark = pytest.mark.skipif(not cpu.available()[0], reason="C++ extension not built")

SIZES = {
    "conv3x3_256": (256, 256, 3, 3),
    "linear_768x3072": (3072, 768),
    "conv1x1_2048x512": (2048, 512, 1, 1),
}
OPTS = {
    "rmda": lambda ps, reg: ss.RMDA(ps, lr=0.1, regularizer=reg, backend="cpu"),
    "ramda_exact": lambda ps, reg: ss.RAMDA(ps, lr=1e-2, solver="exact", regularizer=reg, backend="cpu"),
    "ramda_pg": lambda ps, reg: ss.RAMDA(ps, lr=1e-2, solver="pg", regularizer=reg, backend="cpu"),
    "proxsgd": lambda ps, reg: ss.ProxSGD(ps, lr=0.1, regularizer=reg, backend="cpu"),
    "proxgen_exact": lambda ps, reg: ss.ProxGen(ps, solver="exact", regularizer=reg, backend="cpu"),
    "proxssi": lambda ps, reg: ss.ProxSSI(ps, regularizer=reg, backend="cpu"),
    "adamw_fused": lambda ps, reg: torch.optim.AdamW(ps, fused=True),
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("grouping", ["input", "output"])
@pytest.mark.parametrize("opt", list(OPTS))
def test_step(benchmark, opt, grouping, size):
    p = torch.nn.Parameter(torch.randn(SIZES[size]) * 0.05)
    p.grad = torch.randn_like(p) * 0.01
    o = OPTS[opt]([p], ss.GroupLasso(1e-5, grouping))
    o.step()
    benchmark(o.step)
