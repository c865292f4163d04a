"""The ``*_step_sharded`` CPU ops (FSDP2 shards, structsparse/backends/cpu.py) in one process: a
tensor cut into row shards, phase 1 on every shard, the partial sums added (the all-reduce), phase 2
on every shard, must equal one plain call on the whole tensor — parameters and every state tensor,
several steps, float32 (bitwise: the group sums are accumulated in float64 and rounded once) and
float64 (≤ 1e-14). Multi-process FSDP2 runs are in tests/test_distributed.py."""

from __future__ import annotations

import math
import os

import pytest
import torch

from structsparse.backends import cpu as cpu_backend

if os.environ.get("STRUCTSPARSE_NO_EXT") == "1":
    pytest.skip("STRUCTSPARSE_NO_EXT=1: C++ extension not built", allow_module_level=True)
assert cpu_backend.available()[0], "the C++ extension is missing; python setup.py build_ext --inplace"

ops = torch.ops.structsparse
# (shape, view [A, G, B] of the whole tensor, split across row shards?)
TENSORS = [((7, 5), (7, 5, 1), True), ((40, 3, 3, 3), (40, 3, 9), True), ((6, 4), (1, 6, 4), False)]
CUTS = [0, 3, 6, 7]  # row shards 3/3/1 of 7 rows (others: proportional, one empty)


def cuts_of(rows):
    return [min(rows, round(c * rows / 7)) for c in CUTS[:-1]] + [rows]


def args_for(algo, ts, views, reg, t):
    """The plain op's arguments for tensors ``ts`` = [(param, grad, state...)] at step t."""
    ps, gs = [x[0] for x in ts], [x[1] for x in ts]
    st = [[x[2 + k] for x in ts] for k in range(len(ts[0]) - 2)]
    if algo == "rmda":
        return (
            ps,
            gs,
            st[0],
            st[1],
            [t] * len(ps),
            [0.3] * len(ps),
            views,
            0.1,
            1.0,
            reg,
            [8 * LAM, 0.1, 4.0],
        )
    if algo == "proxsgd":
        return (ps, gs, st[0], views, 1.0, 0.9, reg, [LAM, 0.1, 4.0])
    return (ps, gs, st[0], st[1], st[2], views, 0.1, 1.5, 2.0, 0.9, 0.01, reg, [LAM / 4, 0.0, 1.0])


LAM = 1.0
N_STATE = {"rmda": 2, "proxsgd": 1, "dessilbi": 3}


def make(dtype, algo, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, _, _ in TENSORS:
        p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        sts = [torch.zeros(shape, dtype=dtype) for _ in range(N_STATE[algo])]
        if algo == "rmda":
            sts[0] = p.clone()  # the anchor
        out.append([p, None, *sts])
    return out


CASES = [
    ("rmda", "group_lasso"),
    ("rmda", "sparse_group_lasso"),
    ("rmda", "group_mcp"),
    ("proxsgd", "group_lasso"),
    ("proxsgd", "group_mcp"),
    ("dessilbi", "group_lasso"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("algo,reg", CASES, ids=[f"{a}-{r}" for a, r in CASES])
def test_sharded_phases_equal_plain_call(algo, reg, dtype):
    whole, shard = make(dtype, algo), make(dtype, algo)
    op, op_sh = getattr(ops, f"{algo}_step"), getattr(ops, f"{algo}_step_sharded")
    gen = torch.Generator().manual_seed(7)
    n_zero = n_all = 0
    for t in range(1, 6):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s, _, _ in TENSORS]
        for x, y, g in zip(whole, shard, grads):
            x[1], y[1] = g.clone(), g.clone()
        views = [v for _, view, _ in TENSORS for v in view]
        op(*args_for(algo, whole, views, reg, t))
        # shards: rank r holds rows [c_r, c_{r+1}) of every tensor (an unsplit tensor: whole
        # groups, view [1, rows, B]); group weights from the global view
        parts = []
        for r in range(3):
            ts, vs, split, wgs = [], [], [], []
            for (shape, (a, g, b), sp), x in zip(TENSORS, shard):
                c = cuts_of(shape[0])
                ts.append([u[c[r] : c[r + 1]] for u in x])
                rows = c[r + 1] - c[r]
                vs += [rows * a // shape[0], g, b] if sp else [1, rows * g // shape[0], b]
                split.append(int(sp))
                wgs.append(math.sqrt(a * b))
            parts.append((ts, vs, split, wgs))
        n = sum(g for _, (_, g, _), sp in TENSORS if sp)
        sums = [torch.zeros(n, dtype=torch.float64) for _ in parts]
        for (ts, vs, split, wgs), s in zip(parts, sums):
            op_sh(*args_for(algo, ts, vs, reg, t), split, wgs, 1, s)
        total = sums[0] + sums[1] + sums[2]
        for ts, vs, split, wgs in parts:
            op_sh(*args_for(algo, ts, vs, reg, t), split, wgs, 2, total.clone())
    for x, y in zip(whole, shard):
        for k, (u, v) in enumerate(zip(x, y)):
            if k == 1:
                continue
            if dtype == torch.float32:
                assert torch.equal(u, v), f"{algo} {reg} tensor {k}"
            else:
                torch.testing.assert_close(u, v, rtol=1e-14, atol=1e-14)
        out = x[-1] if algo == "dessilbi" else x[0]  # DessiLBI: the structure is Γ's
        n_zero += int((out == 0).sum())
        n_all += out.numel()
    assert 0 < n_zero < n_all, f"{n_zero} of {n_all} zero: both branches of the prox must be exercised"


def test_sharded_op_errors():
    p = torch.zeros(4, 3)
    st = [torch.zeros(4, 3)]
    base = ([p], [p.clone()], st, [4, 3, 1], 0.1, 0.9, "group_lasso", [0.1, 0.0, 1.0])
    with pytest.raises(RuntimeError, match="phase must be 1 or 2"):
        ops.proxsgd_step_sharded(*base, [1], [2.0], 3, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="sums must be a contiguous float64"):
        ops.proxsgd_step_sharded(*base, [1], [2.0], 1, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="split and group_weights"):
        ops.proxsgd_step_sharded(*base, [1, 0], [2.0], 1, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="group_weights\\[0\\] must be > 0"):
        ops.proxsgd_step_sharded(*base, [1], [0.0], 1, torch.zeros(3, dtype=torch.float64))


def test_bucket_spanning_process_groups_is_refused():
    """backend='cpu' reduces a bucket's split groups in one all-reduce: shards of one bucket on two
    process groups get a clear error (checked before any collective, in one process)."""
    import structsparse as ss
    from structsparse import distributed as ssd

    reg = ss.GroupLasso(0.1, "input")
    ps = [torch.zeros(3, 4), torch.zeros(2, 4)]
    grads = [torch.ones_like(p) for p in ps]
    ctx = ssd.ReductionContext()
    for p, grp in zip(ps, (object(), object())):
        ctx.register(p, ssd.ShardInfo(torch.Size((6, 4)), grp, True))
    with ssd.active(ctx), pytest.raises(ValueError, match="several process groups"):
        cpu_backend.proxsgd_step(ps, grads, [torch.zeros_like(p) for p in ps], lr=0.1, c=1.0, reg=reg)
    assert all(bool((p == 0).all()) for p in ps)  # nothing was stepped
