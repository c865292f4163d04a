"""The Triton kernels as CUDA implementations of the ``structsparse::*_step`` ops.

Without a GPU: the translation layer (op arguments → launch wrappers) runs on CPU tensors under
``TRITON_INTERPRET=1`` against the reference backend, and the registration is checked to skip
cleanly without CUDA, to register under the CUDA key when asked to, and never to override a CUDA
kernel that is already there (the compiled CUDA build). The interpreter fixtures come from
tests/test_triton_backend.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import test_triton_backend as _ttb
import torch

import structsparse as ss
from structsparse.backends import reference

IN_PROCESS, WHY, needs_interp, _close = _ttb.IN_PROCESS, _ttb.WHY, _ttb.needs_interp, _ttb._close
interpreter = _ttb.interpreter  # the module fixture: kernels imported under TRITON_INTERPRET=1

STEP_OPS = ("rmda_step", "ramda_step", "proxsgd_step", "proxgen_step", "proxssi_step")


@pytest.mark.skipif(IN_PROCESS or WHY.startswith("triton not"), reason="runs in this process")
def test_interpreter_subprocess():
    """triton was loaded for a GPU before this module: run this module in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]


# (regularizer object for the reference, op's reg string, op's reg_params)
REGS = {
    "none": (None, "none", [0.0, 0.0, 1.0]),
    "gl_input": (ss.GroupLasso(0.01, "input"), "group_lasso", [0.01, 0.0, 1.0]),
    "l1": (ss.L1(0.01), "group_lasso", [0.01, 0.0, 1.0]),
    "sgl": (ss.SparseGroupLasso(0.003, 0.01, "output"), "sparse_group_lasso", [0.003, 0.01, 1.0]),
    "gmcp": (ss.GroupMCP(0.01, 5.0, "input"), "group_mcp", [0.01, 0.0, 5.0]),
}
SHAPES = [(3, 4, 3, 3), (5, 7)]


def _bucket(nstate, gen):
    params = [torch.randn(s, generator=gen) * 0.1 for s in SHAPES]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    state = [[torch.rand(s, generator=gen) * 0.1 for s in SHAPES] for _ in range(nstate)]
    return params, grads, state


def _views(reg, params):
    out = []
    for p in params:
        out += [1, p.numel(), 1] if reg is None else list(reg.view_shape(p.shape))
    return out


def _clone(xs):
    return [[t.clone() for t in x] for x in xs]


def _run_both(op, ref_fn, nstate, reg_name, op_args, ref_kw, steps=3):
    """``steps`` steps through ``op`` and through ``ref_fn`` from the same start; compare all."""
    reg, reg_s, reg_p = REGS[reg_name]
    gen = torch.Generator().manual_seed(0)
    params, grads, state = _bucket(nstate, gen)
    a = [params, *state]
    b = _clone(a)
    for t in range(1, steps + 1):
        op(a[0], grads, *a[1:], *op_args(t, _views(reg, params), reg_s, reg_p))
        ref_fn(b[0], grads, *b[1:], **ref_kw(t), reg=reg)
    for name, xs, ys in zip(["params"] + [f"state{i}" for i in range(nstate)], a, b):
        for i, (x, y) in enumerate(zip(xs, ys)):
            _close(f"{name}[{i}]", x, y, 1e-5)
            if name == "params":
                assert torch.equal(x == 0, y == 0)


def _alpha(t, lr):
    return sum(lr * s**0.5 for s in range(1, t + 1))


@needs_interp
@pytest.mark.parametrize("reg_name", list(REGS))
def test_op_rmda_step(reg_name, interpreter):
    from structsparse.backends import triton as tb

    n = len(SHAPES)
    _run_both(
        tb.op_rmda_step,
        reference.rmda_step,
        2,
        reg_name,
        lambda t, v, r, rp: ([t] * n, [_alpha(t, 0.1)] * n, v, 0.1, 0.5, r, rp),
        lambda t: dict(steps=[t] * n, alphas=[_alpha(t, 0.1)] * n, lr=0.1, c=0.5),
    )


@needs_interp
@pytest.mark.parametrize(
    "reg_name,solver", [(r, "pg") for r in REGS] + [(r, "exact") for r in ("gl_input", "l1", "sgl", "gmcp")]
)
def test_op_ramda_step(reg_name, solver, interpreter):
    from structsparse.backends import triton as tb

    n = len(SHAPES)
    _run_both(
        tb.op_ramda_step,
        reference.ramda_step,
        3,
        reg_name,
        lambda t, v, r, rp: ([t] * n, [_alpha(t, 0.1)] * n, v, 0.1, 1.0, 1e-6, r, rp, solver, 5, 1e-8),
        lambda t: dict(
            steps=[t] * n,
            alphas=[_alpha(t, 0.1)] * n,
            lr=0.1,
            c=1.0,
            eps=1e-6,
            solver=solver,
            max_iters=5,
            rtol=1e-8,
        ),
    )


@needs_interp
@pytest.mark.parametrize("reg_name", ["none", "gl_input", "sgl"])
def test_op_proxsgd_step(reg_name, interpreter):
    from structsparse.backends import triton as tb

    _run_both(
        tb.op_proxsgd_step,
        reference.proxsgd_step,
        1,
        reg_name,
        lambda t, v, r, rp: (v, 0.1, 0.5, r, rp),
        lambda t: dict(lr=0.1, c=0.5),
    )


ADAM = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


@needs_interp
@pytest.mark.parametrize(
    "reg_name,solver",
    [("gmcp", "pg"), ("sgl", "pg"), ("gl_input", "exact"), ("sgl", "exact"), ("gmcp", "exact")],
)
def test_op_proxgen_step(reg_name, solver, interpreter):
    from structsparse.backends import triton as tb

    n = len(SHAPES)
    _run_both(
        tb.op_proxgen_step,
        reference.proxgen_step,
        2,
        reg_name,
        lambda t, v, r, rp: ([t] * n, v, *ADAM.values(), r, rp, solver, 5, 1e-8),
        lambda t: dict(steps=[t] * n, **ADAM, solver=solver, max_iters=5, rtol=1e-8),
    )


@needs_interp
@pytest.mark.parametrize("reg_name", ["none", "gl_input", "sgl", "gmcp"])
def test_op_proxssi_step(reg_name, interpreter):
    from structsparse.backends import triton as tb

    n = len(SHAPES)
    _run_both(
        tb.op_proxssi_step,
        reference.proxssi_step,
        2,
        reg_name,
        lambda t, v, r, rp: ([t] * n, v, *ADAM.values(), r, rp),
        lambda t: dict(steps=[t] * n, **ADAM),
    )


@needs_interp
def test_op_bad_arguments(interpreter):
    from structsparse.backends import triton as tb

    p, g = [torch.zeros(2, 3)], [torch.zeros(2, 3)]
    s = [torch.zeros(2, 3)]
    with pytest.raises(ValueError, match="reg must be one of"):
        tb.op_proxsgd_step(p, g, s, [1, 6, 1], 0.1, 0.5, "nuclear", [0.1, 0.0, 1.0])
    with pytest.raises(ValueError, match="reg_params"):
        tb.op_proxsgd_step(p, g, s, [1, 6, 1], 0.1, 0.5, "group_lasso", [0.1])
    with pytest.raises(ValueError, match="views"):
        tb.op_proxsgd_step(p, g, s, [1, 5, 1], 0.1, 0.5, "none", [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="solver must be"):
        tb.op_ramda_step(
            p,
            g,
            s,
            s,
            s,
            [1],
            [0.1],
            [2, 3, 1],
            0.1,
            1.0,
            1e-6,
            "group_mcp",
            [0.1, 0.0, 5.0],
            "newton",
            5,
            1e-8,
        )
    with pytest.raises(ValueError, match="params but a list"):
        tb.op_rmda_step(p, g, s, [], [1], [0.1], [2, 3, 1], 0.1, 1.0, "none", [0.0, 0.0, 1.0])


# -- registration -----------------------------------------------------------------------------


def _has_cuda_kernel(name):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"structsparse::{name}", "CUDA")


def _ops_or_skip():
    from structsparse import ops

    ok, why = ops.loaded()
    if not ok:
        pytest.skip(f"the op schemas need structsparse._C: {why}")
    return ops


def test_registration_skipped_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from structsparse import ops
    from structsparse.backends import triton as tb

    assert ops.TRITON_CUDA_OPS == ()
    assert ops.TRITON_CUDA_SKIPPED
    names, why = tb.register_cuda_ops()
    assert names == ()
    if ops.loaded()[0]:
        assert why == "no CUDA device is available"
        assert not any(_has_cuda_kernel(n) for n in STEP_OPS)
    else:
        assert "schemas are not loaded" in why


def test_registration_under_cuda_key_and_no_double_registration():
    """Forced (no CUDA needed to register a kernel): every op without a CUDA kernel gets the
    Triton one; an op that already has one (standing in for the compiled CUDA build) keeps it;
    a second call registers nothing."""
    _ops_or_skip()
    from structsparse.backends import triton as tb

    if any(_has_cuda_kernel(n) for n in STEP_OPS):
        pytest.skip("CUDA kernels are already registered in this process")
    compiled = torch.library.Library("structsparse", "IMPL")
    try:
        compiled.impl("rmda_step", lambda *a: None, "CUDA")  # the "compiled" kernel of one op
        names, why = tb.register_cuda_ops(require_cuda=False)
        assert names == STEP_OPS[1:] and why == ""
        assert all(_has_cuda_kernel(n) for n in STEP_OPS)
        names, why = tb.register_cuda_ops(require_cuda=False)
        assert names == () and "already has a CUDA kernel" in why
    finally:
        tb.unregister_cuda_ops()
        compiled._destroy()
    assert not any(_has_cuda_kernel(n) for n in STEP_OPS)


# -- no per-step allocations proportional to the model --------------------------------------------


def _recording_contiguous(calls):
    orig = torch.Tensor.contiguous

    def contiguous(t, *a, **k):
        if orig(t) is not t:
            calls.append(t)
        return orig(t, *a, **k)

    return contiguous


@needs_interp
@pytest.mark.parametrize("solver", ["pg", "exact"])
def test_strided_params_no_copy_and_cached_scratch(solver, interpreter, monkeypatch):
    """channels_last parameters and gradients (and a gradient that is a strided slice) are stepped
    in place through their strides, on chip and two-phase, with no contiguous copy; the two-phase
    PG scratch is one cached buffer reused step after step."""
    tl_launch = interpreter.launch
    monkeypatch.setattr(tl_launch, "ONCHIP_LIMIT", 16)  # 'input' groups of 4·3·3 = 36 > 16
    monkeypatch.setattr(tl_launch, "TILE", 64)
    monkeypatch.setattr(tl_launch, "_SCRATCH", {})
    reg = ss.GroupLasso(0.005, "input")
    out = []
    for b in ("reference", "triton"):
        torch.manual_seed(0)
        sc = torch.tensor([1.0, 1e-3, 1.0]).view(1, 3, 1, 1)  # input channel 1 goes to zero
        w = (torch.randn(4, 3, 3, 3) * sc).to(memory_format=torch.channels_last).requires_grad_(True)
        v = torch.randn(5, 3).requires_grad_(True)  # groups of 5 elements: on chip
        opt = ss.RAMDA([w, v], lr=0.1, momentum=0.0, solver=solver, max_iters=5, regularizer=reg, backend=b)
        ptrs = []
        for _ in range(3):
            w.grad = (torch.randn(4, 3, 3, 3) * sc).to(memory_format=torch.channels_last)
            v.grad = torch.randn(3, 5).t()  # a transposed (non-contiguous) gradient
            if b == "triton":
                calls = []
                orig = torch.Tensor.contiguous
                torch.Tensor.contiguous = _recording_contiguous(calls)
                try:
                    opt.step()
                finally:
                    torch.Tensor.contiguous = orig
                assert calls == [], "a tensor was copied to contiguous memory"
                if solver == "pg":
                    (buf,) = tl_launch._SCRATCH.values()
                    ptrs.append(buf.data_ptr())
            else:
                opt.step()
        assert w.is_contiguous(memory_format=torch.channels_last)
        out.append(
            [
                w.detach().clone(),
                v.detach().clone(),
                *(t.clone() for t in opt.state[w].values() if torch.is_tensor(t)),
            ]
        )
        if b == "triton" and solver == "pg":
            assert len(set(ptrs)) == 1
    for i, (x, y) in enumerate(zip(out[1], out[0])):
        _close(f"tensor {i}", x, y, 1e-5)
    assert torch.equal(out[1][0] == 0, out[0][0] == 0) and bool((out[0][0] == 0).any())
