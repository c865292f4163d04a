"""DessiLBI on backend="cpu" (fused C++ kernel) against backend="reference": parameters and every
state tensor (momentum buffer, Z, Γ) over several steps, L1 and GroupLasso on every grouping,
unpaired tensors, float32/float64, many-row (streamed) tensors, thread-count determinism."""

from __future__ import annotations

import os

import pytest
import torch

import structsparse as ss
from structsparse.backends import cpu as cpu_backend

if os.environ.get("STRUCTSPARSE_NO_EXT") == "1":
    pytest.skip("STRUCTSPARSE_NO_EXT=1: C++ extension not built", allow_module_level=True)
assert cpu_backend.available()[0], "the C++ extension is missing; python setup.py build_ext --inplace"

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
CONV = [(6, 5, 3, 3), (4, 3, 1, 1)]
SHAPES = CONV + [(7, 11), (13, 17), (1, 1), (2, 3), (0, 5), (18, 460, 3, 3), (18, 4100)]
BIAS = [(5,), (1,), (0,)]


def tensors(shapes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(0.5 * torch.randn(s, generator=gen, dtype=torch.float64)).to(dtype) for s in shapes]


def run(reg, weights, biases, backend, steps=6, **kw):
    ws = [torch.nn.Parameter(w.clone()) for w in weights]
    bs = [torch.nn.Parameter(b.clone()) for b in biases]
    groups = [{"params": ws, "regularizer": reg}, {"params": bs, "regularizer": None}]
    args = dict(lr=0.1, kappa=1.5, nu=2.0, momentum=0.9, weight_decay=0.01)
    opt = ss.DessiLBI(groups, backend=backend, **{**args, **kw})
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ws + bs:
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.grad = 0.3 * noise + p.detach()
        opt.step()
    return ws + bs, opt


def compare(a, b, tol):
    n_state = 0
    for pa, pb in zip(a[0], b[0]):
        pairs = [(pa.detach(), pb.detach(), "param")]
        sa, sb = a[1].state[pa], b[1].state[pb]
        assert set(sa) == set(sb)
        pairs += [(v, sb[k], k) for k, v in sa.items() if isinstance(v, torch.Tensor)]
        for x, y, what in pairs:
            assert x.dtype == y.dtype and x.shape == y.shape, what
            if y.numel() == 0:
                continue
            scale = y.double().abs().max().item() or 1.0
            err = (x.double() - y.double()).abs().max().item() / scale
            assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"
            n_state += 1
    return n_state


REGS = [
    ("l1", lambda: ss.L1(0.08)),
    ("gl_input", lambda: ss.GroupLasso(0.06, "input")),
    ("gl_output", lambda: ss.GroupLasso(0.06, "output")),
    ("gl_kernel", lambda: ss.GroupLasso(0.06, "kernel")),
    ("gl_dims", lambda: ss.GroupLasso(0.06, (0, 2, 3))),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,mk", REGS, ids=[r[0] for r in REGS])
def test_dessilbi_cpu_matches_reference(name, mk, dtype):
    reg = mk()
    shapes = CONV if name in ("gl_kernel", "gl_dims") else SHAPES
    ws, bs = tensors(shapes, dtype), tensors(BIAS, dtype, seed=3)
    a = run(reg, ws, bs, "cpu")
    b = run(reg, ws, bs, "reference")
    assert compare(a, b, TOL[dtype]) > 0
    # the data selects some structure and leaves some out (both branches of the prox)
    g = torch.cat([a[1].state[p]["gamma"].flatten() for p in a[0][: len(shapes)]])
    assert 0 < int((g != 0).sum()) < g.numel()


def test_dessilbi_cpu_no_weight_decay_and_magnitude_scaling_delegation():
    ws, bs = tensors(CONV, torch.float64), tensors(BIAS, torch.float64, seed=3)
    reg = ss.GroupLasso(0.06, "output")
    compare(run(reg, ws, bs, "cpu", weight_decay=0.0), run(reg, ws, bs, "reference", weight_decay=0.0), 1e-12)
    kw = dict(magnitude_scaling=True, scaling_floor=0.1)
    compare(run(reg, ws, bs, "cpu", **kw), run(reg, ws, bs, "reference", **kw), 1e-12)


def test_dessilbi_cpu_thread_count_determinism():
    ws, bs = tensors(SHAPES, torch.float32), tensors(BIAS, torch.float32, seed=3)
    reg = ss.GroupLasso(0.06, "input")
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = run(reg, ws, bs, "cpu")
        torch.set_num_threads(2)
        b = run(reg, ws, bs, "cpu")
    finally:
        torch.set_num_threads(n)
    assert compare(a, b, 0.0) > 0


@pytest.mark.parametrize("name,mk", REGS, ids=[r[0] for r in REGS])
@pytest.mark.parametrize("layout", ["channels_last", "bf16", "fp16"])
def test_dessilbi_cpu_gathered_params(name, mk, layout):
    """Parameters the kernel gathers per tile (channels_last, fp16/bf16 with fp32 state): W's update
    happens in the first pass of the streamed prox and must be scattered back (it once was not)."""
    shapes = [(6, 5, 3, 3), (18, 40, 3, 3)]
    dtype = {"channels_last": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[layout]
    ws, bs = tensors(shapes, dtype), tensors(BIAS, dtype, seed=3)
    if layout == "channels_last":
        ws = [w.to(memory_format=torch.channels_last) for w in ws]
    a = run(mk(), ws, bs, "cpu")
    b = run(mk(), ws, bs, "reference")
    for w, pa in zip(ws, a[0]):
        assert pa.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
        assert (pa.detach().double() - w.double()).abs().max() > 0.1  # W moved
    # float32 math in both; a half parameter may round one ulp apart where the fp32 values differ
    # in their last bit
    tol = TOL[torch.float32] if layout == "channels_last" else {"bf16": 2**-7, "fp16": 2**-10}[layout]
    assert compare(a, b, tol) > 0
