"""torch.compile(opt.step, fullgraph=True): every optimizer on the reference and cpu backends,
with and without the NaN/Inf check, traces into one graph (no graph break) and steps like eager.

Dynamo alone (``backend="eager"``) checks all 24 combinations, one step each (a graph break
raises under ``fullgraph=True`` and is also counted); the default inductor backend compiles a
representative subset over several steps, including a skipped non-finite step.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import structsparse as ss
from structsparse.backends import cpu as cpu_backend

OPTS = {
    "rmda": (ss.RMDA, dict(lr=0.1, momentum=0.5)),
    "ramda": (ss.RAMDA, dict(lr=0.05, momentum=0.5, max_iters=3)),
    "proxsgd": (ss.ProxSGD, dict(lr=0.1, momentum=0.5)),
    "proxgen": (ss.ProxGen, dict(lr=0.05, max_iters=3)),
    "proxssi": (ss.ProxSSI, dict(lr=0.05)),
    "dessilbi": (ss.DessiLBI, dict(lr=0.1, nu=10.0)),
}
BACKENDS = ["reference"] + (["cpu"] if cpu_backend.available()[0] else [])


def setup(name, backend, skip, dtype=torch.float64):
    cls, kw = OPTS[name]
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5, generator=g, dtype=dtype))
    b = torch.nn.Parameter(torch.randn(5, generator=g, dtype=dtype))
    opt = cls(
        [{"params": [w]}, {"params": [b], "regularizer": None}],
        regularizer=ss.GroupLasso(0.05),
        backend=backend,
        skip_nonfinite=skip,
        **kw,
    )
    return w, b, opt


def grads(w, b, i, bad=False):
    g = torch.Generator().manual_seed(100 + i)
    gw = torch.randn(w.shape, generator=g, dtype=w.dtype)
    if bad:
        gw[1, 2] = float("nan")
    return gw, torch.randn(b.shape, generator=g, dtype=b.dtype)


def steps(name, backend, skip, compiled, n, bad_at=None, dtype=torch.float64):
    w, b, opt = setup(name, backend, skip, dtype)
    step = torch.compile(opt.step, fullgraph=True, backend=compiled) if compiled else opt.step
    for i in range(n):
        w.grad, b.grad = grads(w, b, i, bad=i == bad_at)
        step()
    return w, b, opt


@pytest.mark.parametrize("skip", [True, False], ids=["check", "nocheck"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTS))
def test_one_graph_per_step_for_every_optimizer(name, backend, skip):
    torch._dynamo.reset()
    counters.clear()
    w, b, opt = steps(name, backend, skip, "eager", 1)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
    we, be, oe = steps(name, backend, skip, None, 1)
    torch.testing.assert_close(w, we, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b, be, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inductor_steps_like_eager_and_skips_nonfinite(backend):
    """Default backend (inductor), RMDA, float32: two steps like eager, then a NaN gradient
    leaves parameters, tensor state and the host counter t as they were."""
    torch._dynamo.reset()
    counters.clear()
    w, b, opt = setup("rmda", backend, True, torch.float32)
    step = torch.compile(opt.step, fullgraph=True)
    we, be, oe = steps("rmda", backend, True, None, 2, dtype=torch.float32)
    for i in range(2):
        w.grad, b.grad = grads(w, b, i)
        step()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch.testing.assert_close(w, we, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, be, rtol=1e-5, atol=1e-6)
    for k, v in oe.state[we].items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(opt.state[w][k], v, rtol=1e-5, atol=1e-6)
        else:
            assert opt.state[w][k] == pytest.approx(v)
    before = [t.clone() for t in (w, b, *(v for v in opt.state[w].values() if isinstance(v, torch.Tensor)))]
    w.grad, b.grad = grads(w, b, 2, bad=True)
    step()
    after = [w, b, *(v for v in opt.state[w].values() if isinstance(v, torch.Tensor))]
    for x, y in zip(before, after):
        assert torch.equal(x, y)
    assert opt.skipped_steps == 1 and opt.state[w]["step"] == 2  # as in eager: t unchanged
    assert sum(counters["graph_break"].values()) == 0


def test_all_finite_fake_kernel_is_data_dependent():
    if not cpu_backend.available()[0]:
        pytest.skip("the C++ extension is not built")
    torch._dynamo.reset()

    def f(x):
        return x * 2 if torch.ops.structsparse.all_finite([x]) else x * 3

    c = torch.compile(f, backend="eager")  # a graph break at the branch, right in both cases
    assert torch.equal(c(torch.ones(3)), torch.full((3,), 2.0))
    assert torch.equal(c(torch.tensor([1.0, float("inf")]))[:1], torch.tensor([3.0]))
