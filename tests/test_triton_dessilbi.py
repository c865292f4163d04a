"""DessiLBI Triton kernel (triton_kernels/lbi_step.py) versus the reference backend, on CPU
tensors under ``TRITON_INTERPRET=1`` (the fixtures of tests/test_triton_backend.py).

Parameters and all state (momentum buffer, Z, Γ, step) after several steps, float32 within
1e-5 relative to the tensor's largest magnitude, zero patterns of Γ equal; L1 and group LASSO on
several groupings, on chip and two-phase (groups above a lowered on-chip limit), with and without
magnitude scaling, weight decay, channels_last parameters, float64 and bf16 parameters.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import test_triton_backend as _ttb
import torch

import structsparse as ss

IN_PROCESS, WHY, needs_interp, _close = _ttb.IN_PROCESS, _ttb.WHY, _ttb.needs_interp, _ttb._close
interpreter = _ttb.interpreter  # module fixture: kernels imported under TRITON_INTERPRET=1
small_tiles = _ttb.small_tiles  # 64 elements per program


@pytest.fixture
def lbi_recorder(interpreter, monkeypatch):
    """Records every launch of the DessiLBI kernel (grid, FIT)."""
    rec = _ttb._Recorder(interpreter.launch.dessilbi_kernel)
    monkeypatch.setattr(interpreter.launch, "dessilbi_kernel", rec)
    return rec


@pytest.fixture
def tiny_onchip(small_tiles, lbi_recorder, monkeypatch):
    """An on-chip limit of 16 elements per group: larger groups take the two-phase path."""
    monkeypatch.setattr(small_tiles.launch, "ONCHIP_LIMIT", 16)
    yield small_tiles
    assert any(not fit for _, fit in lbi_recorder.launches), "the two-phase path did not run"


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


REGS = {
    "l1": ss.L1(0.02),
    "gl_input": ss.GroupLasso(0.01, "input"),
    "gl_output": ss.GroupLasso(0.01, "output"),
    "gl_kernel": ss.GroupLasso(0.01, "kernel"),
}
# λ for SHAPES_TWOPHASE: Γ selects some of its groups within the test's few steps
REGS_TWOPHASE = {"gl_input": ss.GroupLasso(0.004, "input"), "gl_output": ss.GroupLasso(0.004, "output")}
SHAPES = [(2, 3, 3, 3), (7, 13, 1, 1), (1, 1, 1, 1)]
SHAPES_TWOPHASE = [(4, 3, 3, 3)]  # 'input' groups of 36, 'output' groups of 27 elements (> 16)


def _make(ms, wd=0.0):
    return lambda groups, b: ss.DessiLBI(
        groups, lr=0.1, kappa=2.0, nu=1.0, momentum=0.9, weight_decay=wd, magnitude_scaling=ms, backend=b
    )


def _compare(make_opt, reg, shapes, dtype=torch.float32, tol=1e-5, steps=4, channels_last=False):
    runs = []
    for b in ("reference", "triton"):
        params, opt = _ttb._run(make_opt, reg, shapes, dtype, b, steps=steps, restart_at=2)
        runs.append((params, opt))
    (rp, ro), (tp, to) = runs
    nonzero = total = 0
    for i, (pr, pt) in enumerate(zip(rp, tp)):
        _close(f"param {i}", pt, pr, tol)
        sr, st = ro.state[pr], to.state[pt]
        assert set(sr) == set(st)
        for k, v in sr.items():
            if isinstance(v, torch.Tensor):
                assert st[k].dtype == v.dtype
                _close(f"param {i} state {k}", st[k], v, tol)
            else:
                assert st[k] == v
        if "gamma" in sr:
            assert torch.equal(st["gamma"] == 0, sr["gamma"] == 0), f"param {i}: Γ supports differ"
            g3 = reg.as_groups(sr["gamma"])
            nonzero += int((g3 != 0).any(dim=2).any(dim=0).sum())
            total += g3.shape[1]
    # the scenario is meaningful: Γ selected some groups and not others
    assert 0 < nonzero < total, f"{nonzero} of {total} groups selected: retune λ"


@needs_interp
@pytest.mark.parametrize("ms", [False, True], ids=["plain", "magnitude"])
@pytest.mark.parametrize("reg", list(REGS))
def test_onchip_matches_reference(reg, ms, small_tiles):
    _compare(_make(ms), REGS[reg], SHAPES)


@needs_interp
@pytest.mark.parametrize("ms", [False, True], ids=["plain", "magnitude"])
@pytest.mark.parametrize("reg", ["gl_input", "gl_output"])
def test_twophase_matches_reference(reg, ms, tiny_onchip):
    _compare(_make(ms), REGS_TWOPHASE[reg], SHAPES_TWOPHASE)


@needs_interp
def test_weight_decay_and_float64(interpreter):
    reg = REGS_TWOPHASE["gl_input"]
    _compare(_make(False, wd=0.05), reg, SHAPES_TWOPHASE, dtype=torch.float64, tol=1e-6)
    _compare(_make(True, wd=0.05), ss.L1(0.002), SHAPES_TWOPHASE)


@needs_interp
def test_bf16_params_fp32_state(interpreter):
    reg = REGS["gl_input"]
    (rp, ro), (tp, to) = (
        _ttb._run(_make(False), reg, SHAPES[:1], torch.bfloat16, b) for b in ("reference", "triton")
    )
    for pr, pt in zip(rp, tp):
        assert pt.dtype == torch.bfloat16
        _close("param", pt, pr, 2 * 2.0**-7)
        for k, v in ro.state[pr].items():
            if isinstance(v, torch.Tensor):
                assert to.state[pt][k].dtype == torch.float32
                _close(k, to.state[pt][k], v, 1e-2)


@needs_interp
@pytest.mark.parametrize("ms", [False, True], ids=["plain", "magnitude"])
def test_channels_last(ms, tiny_onchip):
    """A channels_last conv weight is stepped through its strides (two-phase filter groups)."""
    reg = ss.GroupLasso(0.01, "output")
    out = []
    for b in ("reference", "triton"):
        torch.manual_seed(0)
        sc = torch.tensor([1.0, 0.01, 1.0, 0.03]).view(4, 1, 1, 1)
        w = (torch.randn(4, 3, 3, 3) * sc).to(memory_format=torch.channels_last).requires_grad_(True)
        opt = _make(ms)([{"params": [w], "regularizer": reg}], b)
        for _ in range(3):
            w.grad = (torch.randn(4, 3, 3, 3) * sc).to(memory_format=torch.channels_last)
            opt.step()
        assert w.is_contiguous(memory_format=torch.channels_last)
        st = opt.state[w]
        out.append([w.detach().clone(), st["momentum_buffer"], st["z"], st["gamma"]])
    for name, x, y in zip(("param", "d", "z", "gamma"), out[1], out[0]):
        _close(name, x, y, 1e-5)
    assert torch.equal(out[1][3] == 0, out[0][3] == 0)
    assert bool((out[0][3] == 0).any()) and bool((out[0][3] != 0).any())


@needs_interp
def test_unpaired_bucket_one_launch(lbi_recorder):
    """Unregularized tensors of every size: heavy-ball SGD scaled by κ, all in one launch."""
    from structsparse.backends import reference
    from structsparse.backends import triton as tb

    outs = []
    for mod in (reference, tb):
        torch.manual_seed(0)
        ps = [torch.randn(n) for n in (1, 3, 0, 7, 1000)]
        gs = [torch.randn_like(p) for p in ps]
        ds = [torch.randn_like(p) for p in ps]
        mod.dessilbi_step(
            ps, gs, ds, [], [], lr=0.1, kappa=2.0, nu=1.0, momentum=0.9, weight_decay=0.01, reg=None
        )
        outs.append(ps + ds)
    for a, b in zip(*outs):
        _close("tensor", b, a, 1e-6)
    assert len(lbi_recorder.launches) == 1, lbi_recorder.launches
