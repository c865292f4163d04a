"""Multi-process workers of tests/test_distributed.py (gloo on 127.0.0.1, CPU).

Each task runs in every rank; the single-process reference run is computed inside each rank on
plain tensors (no communication) and compared with the rank's shard. Failures raise, which
torch.multiprocessing.spawn re-raises in the test.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import socket

import torch
import torch.distributed as dist
from torch import nn

import structsparse as ss
from structsparse import distributed as ssd

REF = {"backend": "reference"}

OPTS = {
    "rmda": (ss.RMDA, dict(lr=0.05, momentum=0.0)),
    "ramda_pg": (ss.RAMDA, dict(lr=0.05, momentum=0.0, solver="pg", max_iters=20)),
    "ramda_exact": (ss.RAMDA, dict(lr=0.05, momentum=0.0, solver="exact")),
    "proxsgd": (ss.ProxSGD, dict(lr=0.05, momentum=0.5)),
    "proxgen_pg": (ss.ProxGen, dict(lr=2e-2, weight_decay=1e-3, max_iters=20)),
    "proxgen_exact": (ss.ProxGen, dict(lr=2e-2, solver="exact")),
    "proxssi": (ss.ProxSSI, dict(lr=2e-2, weight_decay=1e-3)),
    "dessilbi": (ss.DessiLBI, dict(lr=0.05, nu=1.0, momentum=0.5, weight_decay=1e-3)),
    "dessilbi_ms": (
        ss.DessiLBI,
        dict(lr=0.05, nu=1.0, momentum=0.5, weight_decay=1e-3, magnitude_scaling=True, scaling_floor=0.05),
    ),
}
SCREENABLE_ONLY = ("ramda_exact", "proxgen_exact", "proxssi")  # NuclearNorm has no exact solve
LBI = ("dessilbi", "dessilbi_ms")  # L1 and GroupLasso only; sparsity is read from Γ, not W


# λ per algorithm so that some, not all, groups are zero after 20 steps (asserted)
LAM = {"rmda": 0.4, "ramda_pg": 0.4, "ramda_exact": 0.4, "proxsgd": 0.6, "proxssi": 0.04}
LAM.update(dessilbi=0.15, dessilbi_ms=0.15)
LAM_ADAM = 0.5


def regs(lam: float) -> dict[str, dict[str, ss.Regularizer]]:
    """Per case, a regularizer per weight (fc (7, 5), conv (5, 3, 3, 3), small (2, 4)): together
    every grouping — named and as norm dims, split across shards or aligned with them."""
    return {
        "A": {
            "fc": ss.GroupLasso(lam, "input"),  # split
            "conv": ss.GroupLasso(lam, (0, 2, 3)),  # channel-wise as dims: split
            "small": ss.GroupLasso(lam, "output"),  # aligned (an empty shard with 3 ranks)
        },
        "B": {
            "fc": ss.L1(lam / 4),  # element: aligned
            "conv": ss.GroupLasso(lam, "kernel"),  # aligned
            "small": ss.GroupLasso(lam, (0,)),  # input-wise as dims: split, an empty shard
        },
        "C": {  # not screenable (the exact solves: soft threshold, MCP and group MCP)
            "fc": ss.SparseGroupLasso(lam / 4, lam, "input"),
            "conv": ss.GroupMCP(lam, 4.0, "input"),
            "small": ss.MCP(lam / 4, 4.0),
        },
    }


def cases(names=None, opts=None):
    for opt in OPTS if opts is None else opts:
        lam = LAM.get(opt, LAM_ADAM)
        for cname, by_layer in regs(lam).items():
            if opt in SCREENABLE_ONLY and not all(r.exact_solve for r in by_layer.values()):
                continue
            if opt in LBI and not all(isinstance(r, ss.GroupLasso) for r in by_layer.values()):
                continue
            if names is not None and cname not in names:
                continue
            yield opt, cname, by_layer


def param_groups(net, by_layer):
    groups = [{"params": [getattr(net, n).weight], "regularizer": r} for n, r in by_layer.items()]
    groups.append({"params": [m.bias for m in (net.fc, net.conv, net.small)], "regularizer": None})
    return groups


class Net(nn.Module):
    """Odd row counts: 7 (3 ranks: 3/3/1), 5 (2/2/1), 2 (1/1/0: an empty shard)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 7)
        self.conv = nn.Conv2d(3, 5, 3)
        self.small = nn.Linear(4, 2)

    def forward(self, x):  # only for the checkpoint task
        return self.small(torch.relu(self.fc(x))[:, :4])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, port: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )


def entry(rank: int, world: int, port: int, task: str, args: dict) -> None:
    from structsparse.distributed import exit_process

    init(rank, world, port)
    try:
        TASKS[task](rank, world, **args)
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_process()  # a clean exit code for mp.spawn (gloo can abort an interpreter's finalization)


def mesh_of(world: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


def make_net(dtype: torch.dtype, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().to(dtype)


def make_opt(name: str, params, **kw):
    cls, d = OPTS[name]
    return cls(params, **{**d, **REF, **kw})


def rel_err(a: torch.Tensor, b: torch.Tensor, scale: float = 0.0) -> float:
    """Norm-wise relative error ``‖a − b‖₂ / max(‖b‖₂, scale)`` of a tensor (0 for empty/zero tensors
    that match)."""
    a, b = a.detach().double(), b.detach().double()
    d = float((a - b).norm())
    return d / max(float(b.norm()), scale, 1e-300) if d else 0.0


def kappa_of(opt, p) -> float:
    """DessiLBI's κ of the param group holding ``p``."""
    return next(float(g["kappa"]) for g in opt.param_groups if any(q is p for q in g["params"]))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Elementwise error relative to the tensor's largest entry, ``max|a − b| / max|b|`` (stricter)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300) if a.numel() else 0.0


@contextlib.contextmanager
def agreed():
    """Rank-local checks inside; every rank raises if they failed on any rank (one all-reduce), so
    that a failure never leaves the other ranks waiting in a later collective."""
    err = None
    try:
        yield
    except AssertionError as e:
        err = e
    flag = torch.tensor([0.0 if err is None else 1.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if err is not None:
        raise err
    if flag.item() != 0:
        raise AssertionError("the local checks failed on another rank (see its report)")


class _count_fused_reductions:
    """Counts the cpu backend's fused-path all-reduces (distributed.all_reduce_sums) until
    :meth:`pop` (which restores the function)."""

    def __init__(self) -> None:
        self.n = 0
        self._orig = ssd.all_reduce_sums

        def counting(sums, group):
            self.n += 1
            return self._orig(sums, group)

        ssd.all_reduce_sums = counting

    def pop(self) -> int:
        ssd.all_reduce_sums = self._orig
        return self.n


def fake_grads(shapes, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


# ----------------------------------------------------------------------------------------------
def task_trajectory(
    rank: int,
    world: int,
    dtypes=("float32",),
    names=None,
    steps: int = 20,
    opts=None,
    backend="reference",
    native_shards=True,
) -> None:
    """Every optimizer x regularizer: FSDP2 shards vs the single-process run, 20 steps, restart at 10,
    both on ``backend`` (``"cpu"``: the fused kernels on shards; RMDA/ProxSGD/DessiLBI buckets with
    split groups in two phases around one all-reduce, the solvers' split buckets redistributed to
    whole-group owners, distributed.owned_groups). ``native_shards=False``: the backend's shard
    support is switched off, so every bucket takes the generic path of backends without it
    (distributed.owned_bucket)."""
    import importlib

    mod = importlib.import_module(f"structsparse.backends.{backend}")
    native = getattr(mod, "supports_shards", False)
    mod.supports_shards = native and native_shards
    try:
        _trajectory(rank, world, dtypes, names, steps, opts, backend, native and native_shards)
    finally:
        mod.supports_shards = native


def _trajectory(rank, world, dtypes, names, steps, opts, backend, native) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    if backend == "triton" and not torch.cuda.is_available():  # Triton kernels on CPU tensors
        os.environ["TRITON_INTERPRET"] = "1"
    mesh = mesh_of(world)
    tol = {"float32": 1e-6, "float64": 1e-12}
    worst: dict[str, float] = {}
    worst_max: dict[str, float] = {}
    zeros: dict[str, list[int]] = {}  # optimizer -> [zero groups, groups] of the regularized weights
    for dname in dtypes:
        dtype = getattr(torch, dname)
        for k, (opt_name, rname, by_layer) in enumerate(cases(names, opts)):
            ref_net = make_net(dtype)
            net = make_net(dtype)
            fully_shard(net, mesh=mesh)
            # No exemption for float32 PG solvers: their per-group stop ((Q_prev − Q)/(|Q| + 1) < rtol)
            # compares objectives at float32 noise, so a shard must compute bitwise the same
            # elementwise values as the full tensor (RAMDA's cube root is position-independent, see
            # reference.cbrt) and the same group sums (float64 accumulation, distributed.group_sum).
            # Measured: every float32 case matches the single-process run bitwise (2 and 3 ranks).
            ctol = tol[dname]
            ref_opt = make_opt(opt_name, param_groups(ref_net, by_layer), backend=backend)
            opt = make_opt(opt_name, param_groups(net, by_layer), backend=backend)
            ref_ps = list(ref_net.parameters())
            ps = list(net.parameters())
            ssd.reset_comm_stats()
            fused_reductions = _count_fused_reductions()
            for t in range(steps):
                if t == steps // 2:
                    ref_opt.restart()
                    opt.restart()
                gs = fake_grads([p.shape for p in ref_ps], dtype, seed=1000 * k + t)
                for p, rp, g in zip(ps, ref_ps, gs):
                    rp.grad = g.clone()
                    p.grad = distribute_tensor(g, mesh, [Shard(0)], src_data_rank=None)
                ref_opt.step()
                opt.step()
            all_stats = ssd.comm_stats()
            stats = all_stats.get("groups", {"calls": 0, "bytes": 0})
            redist = all_stats.get("redistribute", {"calls": 0, "bytes": 0})
            fused = fused_reductions.pop()
            where = f"[{backend} {dname} {opt_name} {rname} rank {rank}/{world}]"

            # parameters and all state, shard by shard (local checks: every rank learns whether any
            # rank failed before the collectives below, so a failure never leaves ranks waiting)
            with agreed():
                for p, rp in zip(ps, ref_ps):
                    off = ssd._row_offset(p)
                    loc = p.to_local()
                    sl = slice(off, off + loc.shape[0])
                    err, merr = rel_err(loc, rp.detach()[sl]), max_err(loc, rp.detach()[sl])
                    assert err <= ctol, f"{where} param {tuple(rp.shape)}: rel err {err:.3e}"
                    # elementwise, near-threshold groups amplify rounding (n = ‖z‖ − τλw_g cancels)
                    assert merr <= 10 * ctol, f"{where} param {tuple(rp.shape)}: max err {merr:.3e}"
                    worst[opt_name] = max(worst.get(opt_name, 0.0), err)
                    worst_max[opt_name] = max(worst_max.get(opt_name, 0.0), merr)
                    st, rst = opt.state[p], ref_opt.state[rp]
                    assert set(st) == set(rst), where
                    for key, v in rst.items():
                        if isinstance(v, torch.Tensor):
                            # Γ = κ·prox(Z): its rounding is that of the threshold on Z's scale, so
                            # a Γ whose entries are mostly cut near the threshold is measured
                            # against κ‖Z‖ too (an AMD EPYC gave ‖ΔΓ‖/‖Γ‖ = 1.4e-6 for a (2, 4) Γ
                            # of triton float32 dessilbi_ms; bitwise on Xeon)
                            scale = (
                                kappa_of(ref_opt, rp) * float(rst["z"][sl].double().norm())
                                if key == "gamma"
                                else 0.0
                            )
                            e = rel_err(st[key].to_local(), v[sl], scale)
                            me = max_err(st[key].to_local(), v[sl])
                            assert me <= 10 * ctol, f"{where} state {key} {tuple(rp.shape)}: max err {me:.3e}"
                            assert e <= ctol, f"{where} state {key} {tuple(rp.shape)}: rel err {e:.3e}"
                        else:
                            assert st[key] == v, f"{where} scalar {key}: {st[key]} != {v}"
            # identical zero groups and global metrics
            for p, rp in zip(ps, ref_ps):
                for gr in ("input", "output", "element", "kernel"):
                    if not ss.grouping.fits(gr, rp.shape):
                        continue
                    z, rz = ss.zero_groups(p, gr), ss.zero_groups(rp, gr)
                    assert torch.equal(z, rz), f"{where} zero groups {gr} {tuple(rp.shape)}"
            for name, r in by_layer.items():
                rw, w = getattr(ref_net, name).weight, getattr(net, name).weight
                if opt_name in LBI:  # W stays dense; the structure is Γ's
                    rw, w = ref_opt.state[rw]["gamma"], opt.state[w]["gamma"]
                    assert torch.equal(ss.zero_groups(w, r.grouping), ss.zero_groups(rw, r.grouping)), where
                z = ss.zero_groups(rw, r.grouping)
                acc = zeros.setdefault(opt_name, [0, 0])
                acc[0] += int(z.sum())
                acc[1] += z.numel()
            for kw in ({}, {"weighted": True}, {"grouping": "output"}):
                assert ss.group_sparsity(net, **kw) == ss.group_sparsity(ref_net, **kw), f"{where} {kw}"
            assert ss.group_sparsity(opt) == ss.group_sparsity(ref_opt), where
            assert ss.kernel_sparsity(net) == ss.kernel_sparsity(ref_net), where
            assert ss.unstructured_sparsity(net) == ss.unstructured_sparsity(ref_net), where
            # communication. n_split: buckets whose groups span ranks (aligned buckets send nothing)
            n_split = sum(
                ssd.splits_groups(g["regularizer"], g["params"][0].shape) for g in ref_opt.param_groups
            )
            solver = opt_name.startswith(("ramda", "proxgen", "proxssi"))
            # redistributed to whole-group owners (two all_to_alls per split bucket and step, no
            # group all-reduce): the cpu backend's solvers, and every step of a backend without shard
            # support (triton, cuda) except magnitude-scaled DessiLBI (which runs on reference)
            owned = backend != "reference" and opt_name != "dessilbi_ms" and (not native or solver)
            if owned:
                # buckets the backend declines (its supports()) run on reference, with global
                # reductions on the local shards instead of a redistribution
                mod = importlib.import_module(f"structsparse.backends.{backend}")
                n_fused = sum(
                    ssd.splits_groups(g["regularizer"], g["params"][0].shape)
                    for g in opt.param_groups
                    if opt.backend_supports(mod, g, torch.device("cpu"))
                )
                assert redist["calls"] == 2 * steps * n_fused, f"{where} {redist}"
                if n_fused == n_split:
                    assert stats["calls"] == 0, f"{where} {stats}"
            else:
                assert redist["calls"] == 0, f"{where} {redist}"
                if opt_name in ("rmda", "proxsgd", "dessilbi"):  # one all-reduce per split bucket
                    assert stats["calls"] == steps * n_split, f"{where} {stats}"
            # backend="cpu": RMDA/ProxSGD/DessiLBI's all-reduces come from the fused two-phase path
            if backend == "cpu" and native and opt_name in ("rmda", "proxsgd", "dessilbi"):
                assert fused == steps * n_split, f"{where} fused all-reduces {fused}"
            else:
                assert fused == 0, f"{where} fused all-reduces {fused}"
            if opt_name == "dessilbi_ms":  # + one for ‖W_j‖ and the layer's support counts
                n_reg = sum(g["regularizer"] is not None for g in ref_opt.param_groups)
                assert stats["calls"] == steps * (n_split + n_reg), f"{where} {stats}"
    if rank == 0:
        print("backend", backend, flush=True)
        print("worst param rel err", world, dtypes, {k: f"{v:.1e}" for k, v in worst.items()}, flush=True)
        print("worst param max err", world, dtypes, {k: f"{v:.1e}" for k, v in worst_max.items()}, flush=True)
    for name, (z, tot) in zeros.items():  # a test where nothing or everything is zero sees no prox bug
        assert 0 < z < tot, f"{name}: {z} of {tot} groups zero; retune LAM"


def task_owned_groups(rank: int, world: int, steps: int = 3) -> None:
    """backend="cpu" solver buckets with split groups, redistributed to whole-group owners
    (distributed.owned_groups), called directly on row shards of one multi-tensor bucket — input-wise
    2-D and 4-D tensors, a whole-tensor group (a 1-D tensor under norm dims (0,)), a shard that is
    empty on 3 ranks, a channels_last (non-contiguous) shard, a replicated plain tensor — against one
    single-process call on the full tensors: every tensor bitwise equal, float32/float64 and bf16
    parameters with float32 state; two all_to_alls per step and their bytes."""
    from structsparse.backends import cpu

    group = dist.group.WORLD
    lam = {"ramda": 0.3, "proxgen": 4.0, "proxssi": 0.2}  # some, not all, groups zero (asserted)
    shapes = [(7, 5), (5, 3, 3, 3), (6,), (2, 4), (9, 3, 2, 2), (3, 4)]
    channels_last, plain = 4, 5
    rows_of = ssd._chunk_rows
    for pdt in (torch.float32, torch.float64, torch.bfloat16):
        sdt = torch.float32 if pdt == torch.bfloat16 else pdt
        for algo, solver in (
            ("ramda", "pg"),
            ("ramda", "exact"),
            ("proxgen", "pg"),
            ("proxgen", "exact"),
            ("proxssi", None),
        ):
            n_state = 3 if algo == "ramda" else 2
            reg = ss.GroupLasso(lam[algo], (0,))  # (0,): input-wise on >= 2 dims, the whole 1-D tensor
            gen = torch.Generator().manual_seed(7)
            full = []  # per tensor [param, state...] (full tensors, identical on every rank)
            for i, sh in enumerate(shapes):
                p = torch.randn(sh, generator=gen, dtype=torch.float64).to(pdt)
                if i == channels_last:
                    p = p.contiguous(memory_format=torch.channels_last)
                sts = [torch.zeros(sh, dtype=sdt) for _ in range(n_state)]
                if algo == "ramda":
                    sts[0] = p.to(sdt).contiguous()  # the anchor (state is contiguous)
                full.append([p, *sts])

            def local(i, t):
                if i == plain:
                    return t
                n = rows_of(shapes[i][0], world)
                r0 = sum(n[:rank])
                return t[r0 : r0 + n[rank]]

            shards = [[local(i, t).clone() for t in x] for i, x in enumerate(full)]  # clone keeps strides
            assert not shards[channels_last][0].is_contiguous()
            full = [[t.clone() for t in x] for x in full]
            ssd.reset_comm_stats()
            for t in range(1, steps + 1):
                gg = torch.Generator().manual_seed(100 + t)
                grads = [torch.randn(sh, generator=gg, dtype=torch.float64).to(pdt) for sh in shapes]
                for tensors, gs, scoped in (
                    (full, grads, False),
                    (shards, [local(i, g) for i, g in enumerate(grads)], True),
                ):
                    ps = [x[0] for x in tensors]
                    ctx = ssd.ReductionContext()
                    if scoped:
                        for i, q in enumerate(ps):
                            if i != plain:
                                ctx.register(q, ssd.ShardInfo(torch.Size(shapes[i]), group, True))
                    with ssd.active(ctx):
                        st = [[x[1 + k] for x in tensors] for k in range(n_state)]
                        if algo == "ramda":
                            cpu.ramda_step(
                                ps,
                                gs,
                                st[0],
                                st[1],
                                st[2],
                                steps=[t] * 6,
                                alphas=[1.5 * t] * 6,
                                lr=0.1,
                                c=1.0,
                                eps=1e-6,
                                reg=reg,
                                solver=solver,
                                max_iters=50,
                                rtol=1e-8,
                            )
                        else:  # ProxGen, ProxSSI: the same Adam moments
                            adam = dict(steps=[t] * 6, lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8)
                            adam.update(weight_decay=1e-3, reg=reg)
                            if algo == "proxgen":
                                cpu.proxgen_step(ps, gs, *st, **adam, solver=solver, max_iters=50, rtol=1e-8)
                            else:
                                cpu.proxssi_step(ps, gs, *st, **adam)
                if t == 1:  # the exchange buffers are allocated once, then reused every step
                    bufs = {k: v.data_ptr() for k, v in ssd._buffers.items()}
            where = f"[owned_groups {pdt} {algo} {solver} rank {rank}/{world}]"
            with agreed():
                assert bufs and {k: v.data_ptr() for k, v in ssd._buffers.items()} == bufs, where
                ssd.release_buffers()
                assert not ssd._buffers
                zero = 0
                for i, (x, y) in enumerate(zip(full, shards)):
                    for k, (a, b) in enumerate(zip(x, y)):
                        assert torch.equal(local(i, a), b), f"{where} tensor {shapes[i]} [{k}]"
                    zero += int((x[0] == 0).sum())
                assert 0 < zero < sum(x[0].numel() for x in full), f"{where}: {zero} zeros; retune lam"
                stats = ssd.comm_stats()
                assert set(stats) == {"redistribute"}, f"{where} {stats}"
                assert stats["redistribute"]["calls"] == 2 * steps, f"{where} {stats}"
                # bytes sent to the other ranks (every list there, the written lists back)
                esz = pdt.itemsize * 2 + sdt.itemsize * n_state  # param, grad, state
                esz_back = pdt.itemsize + sdt.itemsize * 2
                lo = hi = 0
                for i, sh in enumerate(shapes):
                    if i == plain:
                        continue
                    a, g, b = reg.view_shape(sh)
                    n = rows_of(sh[0], world)
                    per_row = a // sh[0] * b if a > 1 else b // sh[0]  # elements per row and group
                    share = [(s + 1) * g // world - s * g // world for s in range(world)]
                    for s in range(world):
                        if s != rank:  # there: my rows of s's groups; back: s's rows of my groups
                            lo += per_row * (n[rank] * share[s] * esz + n[s] * share[rank] * esz_back)
                            hi += 8 * 8  # padding: < 8 bytes per piece, 4 + 3 pieces
                sent = stats["redistribute"]["bytes"]
                assert steps * lo <= sent <= steps * (lo + hi), (
                    f"{where} bytes {sent} not in [{steps * lo}, {steps * (lo + hi)}]"
                )


TASKS = {"trajectory": task_trajectory, "owned_groups": task_owned_groups}


def task_suite(rank: int, world: int, outdir: str, tasks: list) -> None:
    """Run several tasks in one launch; record per task 'ok' or the traceback (rank{r}.json)."""
    import json
    import time
    import traceback

    results = {}
    for name, kind, args in tasks:
        t0 = time.time()
        try:
            TASKS[kind](rank, world, **args)
            results[name] = {"ok": True, "seconds": time.time() - t0}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
        dist.barrier()
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


TASKS["suite"] = task_suite


def launch(world: int, task: str, **args) -> None:
    """Run ``task`` on ``world`` spawned ranks (raises what a rank raised)."""
    import torch.multiprocessing as mp

    mp.spawn(entry, args=(world, free_port(), task, args), nprocs=world, join=True)


if __name__ == "__main__":
    import sys
    import time

    t0 = time.time()
    launch(int(sys.argv[1]), sys.argv[2], **eval(sys.argv[3] if len(sys.argv) > 3 else "{}"))
    print("ok", time.time() - t0)


def train_steps(net, opt, n: int, seed: int, rank: int, world: int, dtype, restart_at=None) -> None:
    """n steps on a global batch of 6 (rank r takes its slice; FSDP2 averages the gradients)."""
    for i in range(n):
        if restart_at is not None and i == restart_at:
            opt.restart()
        g = torch.Generator().manual_seed(seed + i)
        x = torch.randn(6, 5, generator=g, dtype=torch.float64).to(dtype)
        y = torch.randint(0, 2, (6,), generator=g)
        lo, hi = rank * 6 // world, (rank + 1) * 6 // world
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x[lo:hi]), y[lo:hi], reduction="sum") * (world / 6)
        loss.backward()
        opt.step()


def full_state(net, opt) -> dict:
    """Every parameter and state entry as full tensors (test helper: gathers)."""
    out = {}
    for name, p in net.named_parameters():
        out[name] = p.full_tensor().detach().clone()
        for k, v in opt.state[p].items():
            out[f"{name}/{k}"] = v.full_tensor().clone() if isinstance(v, torch.Tensor) else v
    return out


def task_checkpoint(rank: int, world: int, ckpt: str, phase: str, opt_name: str = "ramda_exact") -> None:
    """phase 'save': 4 steps, DCP save, 4 more steps (reference continuation saved by rank 0);
    then a fresh model/optimizer loads the checkpoint and must resume bit-exactly.
    phase 'load': another world size loads the checkpoint; state must equal the saved one exactly
    and 4 steps must match the saving world's continuation."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    dtype = torch.float64
    mesh = mesh_of(world)

    def build():
        net = make_net(dtype)
        fully_shard(net, mesh=mesh)
        reg = ss.GroupLasso(0.02, "input")
        opt = make_opt(
            opt_name,
            [
                {"params": [net.fc.weight, net.small.weight], "regularizer": reg},
                {"params": [net.fc.bias, net.small.bias], "regularizer": None},
            ],
        )
        return net, opt

    if phase == "save":
        net, opt = build()
        train_steps(net, opt, 4, 0, rank, world, dtype)
        msd, osd = get_state_dict(net, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt)
        saved = full_state(net, opt)
        train_steps(net, opt, 4, 100, rank, world, dtype, restart_at=2)
        cont = full_state(net, opt)
        if rank == 0:
            torch.save({"saved": saved, "cont": cont}, os.path.join(ckpt, "expected.pt"))
        # same world size: resume bit-exactly
        net2, opt2 = build()
        msd2, osd2 = get_state_dict(net2, opt2)
        sd = {"model": msd2, "optim": osd2}
        dcp.load(sd, checkpoint_id=ckpt)
        set_state_dict(net2, opt2, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        got = full_state(net2, opt2)
        for k, v in saved.items():
            assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, f"load {k}"
        train_steps(net2, opt2, 4, 100, rank, world, dtype, restart_at=2)
        got = full_state(net2, opt2)
        for k, v in cont.items():
            assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, f"resume {k}"
    else:
        exp = torch.load(os.path.join(ckpt, "expected.pt"), weights_only=True)
        net, opt = build()
        msd, osd = get_state_dict(net, opt)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=ckpt)
        set_state_dict(net, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        got = full_state(net, opt)
        for k, v in exp["saved"].items():
            assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, f"reshard {k}"
        train_steps(net, opt, 4, 100, rank, world, dtype, restart_at=2)
        got = full_state(net, opt)
        for k, v in exp["cont"].items():
            if isinstance(v, torch.Tensor):
                assert rel_err(got[k], v) <= 1e-12, f"resharded continuation {k}: {rel_err(got[k], v):.2e}"
            else:
                assert got[k] == v, k


TASKS["checkpoint"] = task_checkpoint


def task_ddp(rank: int, world: int, steps: int = 20) -> None:
    """Plain parameters under DDP: every optimizer matches the single-process full-batch run
    (float64, ≤ 1e-12) and the replicas stay bit-identical."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    dtype = torch.float64
    for opt_name in OPTS:
        reg = ss.GroupLasso(LAM.get(opt_name, LAM_ADAM) / 10, "input")
        ref = make_net(dtype)
        net = make_net(dtype)
        ddp = DDP(net, find_unused_parameters=True)  # conv is not in forward
        ref_opt = make_opt(opt_name, ss.group_params(ref, reg))
        opt = make_opt(opt_name, ss.group_params(net, reg))
        train_steps(ref, ref_opt, steps, 7, 0, 1, dtype, restart_at=steps // 2)
        train_steps(ddp, opt, steps, 7, rank, world, dtype, restart_at=steps // 2)
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        copies = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        assert all(torch.equal(c, copies[0]) for c in copies), f"{opt_name}: DDP replicas differ"
        for p, rp in zip(net.parameters(), ref.parameters()):
            e = rel_err(p.detach(), rp.detach())
            assert e <= 1e-12, f"{opt_name} DDP vs single process {tuple(p.shape)}: {e:.2e}"
        for gr in ("input", "output"):
            assert ss.group_sparsity(net, grouping=gr) == ss.group_sparsity(ref, grouping=gr), opt_name


def task_bad_config(rank: int, world: int) -> None:
    """Configurations that cannot be stepped exactly raise a clear ValueError."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = mesh_of(world)
    net = make_net(torch.float32)
    fully_shard(net, mesh=mesh)
    try:
        ss.RMDA([{"params": [net.fc.weight], "regularizer": ss.NuclearNorm(0.1)}])
    except ValueError as e:
        assert "NuclearNorm" in str(e) and "sharded" in str(e), e
    else:
        raise AssertionError("NuclearNorm on a sharded parameter did not raise")
    # low-rank level of a sharded model (a metric: gathers each matrix for its SVD)
    ref = make_net(torch.float32)
    with torch.no_grad():
        ref.fc.weight[:, 2:] = 0
    ref.conv.weight.data.zero_()
    net2 = make_net(torch.float32)
    net2.load_state_dict(ref.state_dict())
    fully_shard(net2, mesh=mesh)
    assert ss.low_rank_level(net2) == ss.low_rank_level(ref) > 0
    w = nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)]))
    try:
        ss.RAMDA([w], regularizer=ss.GroupLasso(0.1))
    except ValueError as e:
        assert "Shard(dim=1)" in str(e) and "dim 0" in str(e), e
    else:
        raise AssertionError("a dim-1 sharded parameter did not raise")


TASKS["ddp"] = task_ddp
TASKS["bad_config"] = task_bad_config


def task_lbi_metrics(rank: int, world: int, steps: int = 12) -> None:
    """DessiLBI's structure read from sharded Γ (structsparse.lbi): masks at every level (mask
    DTensors equal to the single-process masks), support ratios, Γ sparsity, mask density, the
    support tracker and the random-ticket baseline are global and equal the single-process ones."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    from structsparse import lbi

    mesh = mesh_of(world)
    for k, cname in enumerate(("A", "B")):
        by_layer = regs(LAM["dessilbi"])[cname]
        ref, net = make_net(torch.float64), make_net(torch.float64)
        fully_shard(net, mesh=mesh)
        ref_opt = make_opt("dessilbi", param_groups(ref, by_layer))
        opt = make_opt("dessilbi", param_groups(net, by_layer))
        ref_tr = {lv: lbi.SupportTracker(ref, ref_opt, lv) for lv in lbi.LEVELS}
        tr = {lv: lbi.SupportTracker(net, opt, lv) for lv in lbi.LEVELS}
        ref_ps, ps = list(ref.parameters()), list(net.parameters())
        for t in range(steps):
            for p, rp, g in zip(ps, ref_ps, fake_grads([p.shape for p in ref_ps], torch.float64, 77 * k + t)):
                rp.grad = g.clone()
                p.grad = distribute_tensor(g, mesh, [Shard(0)], src_data_rank=None)
            ref_opt.step()
            opt.step()
            if t % 4 == 3:
                for lv in lbi.LEVELS:
                    assert tr[lv].update(t) == ref_tr[lv].update(t), f"{cname} tracker {lv} step {t}"
        where = f"[lbi {cname} rank {rank}/{world}]"
        assert lbi.gamma_sparsity(net, opt) == lbi.gamma_sparsity(ref, ref_opt), where
        assert 0 < lbi.gamma_sparsity(ref, ref_opt) < 1, where
        regs_by_name = {f"{n}.weight": r for n, r in by_layer.items()}
        for lv in lbi.LEVELS:
            m, rm = lbi.masks(net, opt, lv), lbi.masks(ref, ref_opt, lv)
            assert set(m) == set(rm), where
            for name in rm:
                assert ssd.is_sharded(m[name]), f"{where} {lv} {name}: mask is not a DTensor"
                assert torch.equal(m[name].full_tensor(), rm[name]), f"{where} mask {lv} {name}"
            assert lbi.mask_density(m) == lbi.mask_density(rm), f"{where} density {lv}"
            assert lbi.support_ratio(net, opt, lv) == lbi.support_ratio(ref, ref_opt, lv), f"{where} {lv}"
            for e in (3, 7, 11):
                assert tr[lv].entered_by(e) == ref_tr[lv].entered_by(e), f"{where} entered_by {lv} {e}"
            r, rr = lbi.random_masks(m, lv, 5, regs_by_name), lbi.random_masks(rm, lv, 5, regs_by_name)
            for name in rr:
                assert torch.equal(r[name].full_tensor(), rr[name]), f"{where} random mask {lv} {name}"
        m, rm = lbi.masks(net, opt, "group"), lbi.masks(ref, ref_opt, "group")
        # lbi.masked on shards: inside, the masked sharded weights equal the single-process masked
        # ones; after, every shard is restored bit for bit (no copy of the model, no communication)
        before = {n: p.to_local().clone() for n, p in net.named_parameters()}
        with lbi.masked(net, m), lbi.masked(ref, rm):
            for name, p in net.named_parameters():
                assert torch.equal(p.full_tensor(), dict(ref.named_parameters())[name]), (
                    f"{where} in masked {name}"
                )
            assert any(bool((p.full_tensor() == 0).any()) for p in net.parameters()), where
        for name, p in net.named_parameters():
            assert torch.equal(p.to_local(), before[name]), f"{where} not restored {name}"
        lbi.apply_masks(net, m)
        lbi.apply_masks(ref, rm)
        for name, p in net.named_parameters():
            assert torch.equal(p.full_tensor(), dict(ref.named_parameters())[name]), f"{where} masked {name}"


TASKS["lbi_metrics"] = task_lbi_metrics
