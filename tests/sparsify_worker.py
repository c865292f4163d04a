"""Multi-process worker of tests/test_sparsify.py: ``structure()``, ``subproblem_solution()`` and
``sparsify()`` on FSDP2 shards against the single-process run (gloo on 127.0.0.1, CPU)."""

from __future__ import annotations

import dist_worker as dw
import torch
import torch.distributed as dist

from structsparse import distributed as ssd

#: the solutions computed from state (RMDA, RAMDA's two solvers, DessiLBI's Γ) and two whose W
#: is its own solution
OPTS = ("rmda", "ramda_pg", "ramda_exact", "proxsgd", "proxssi", "dessilbi")


def task_sparsify(rank: int, world: int, steps: int = 6) -> None:
    """Every optimizer x grouping case of dist_worker (split and aligned groupings, an empty shard
    with 3 ranks; cases A and B), c < 1 for RMDA/RAMDA: after ``steps`` steps the sharded optimizer's structure,
    solution and ``sparsify()`` (both keep modes) equal the single-process ones; one more step
    after it still does."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = dw.mesh_of(world)
    dtype = torch.float64
    for k, (opt_name, cname, by_layer) in enumerate(dw.cases(("A", "B"), OPTS)):
        kw = {"momentum": 0.5} if opt_name.startswith(("rmda", "ramda")) else {}
        ref_net, net = dw.make_net(dtype), dw.make_net(dtype)
        fully_shard(net, mesh=mesh)
        ref_opt = dw.make_opt(opt_name, dw.param_groups(ref_net, by_layer), **kw)
        opt = dw.make_opt(opt_name, dw.param_groups(net, by_layer), **kw)
        ref_ps, ps = list(ref_net.parameters()), list(net.parameters())

        def step(seed: int, ps=ps, ref_ps=ref_ps, opt=opt, ref_opt=ref_opt) -> None:
            for p, rp, g in zip(ps, ref_ps, dw.fake_grads([p.shape for p in ref_ps], dtype, seed)):
                rp.grad = g.clone()
                p.grad = distribute_tensor(g, mesh, [Shard(0)], src_data_rank=None)
            ref_opt.step()
            opt.step()

        for t in range(steps):
            step(100 * k + t)
        where = f"[sparsify {opt_name} {cname} rank {rank}/{world}]"
        st, rst = opt.structure(), ref_opt.structure()
        assert len(st) == len(rst) == 3, where
        for (p, z), (rp, rz) in zip(st.items(), rst.items()):
            assert torch.equal(z, rz), f"{where} structure {tuple(rp.shape)}"
            sol, rsol = opt.subproblem_solution(p), ref_opt.subproblem_solution(rp)
            assert ssd.is_sharded(sol), where
            err = dw.rel_err(sol.full_tensor(), rsol)
            assert err <= 1e-12, f"{where} solution {tuple(rp.shape)}: rel err {err:.3e}"
        keep = "mask" if opt_name.startswith("dessilbi") or k % 2 else None
        n, rn = opt.sparsify(keep), ref_opt.sparsify(keep)
        assert n == rn == sum(int(z.sum()) for z in rst.values()), f"{where} zero groups {n} vs {rn}"
        for p, rp in zip(ps, ref_ps):
            assert dw.rel_err(p.full_tensor(), rp) <= 1e-12, f"{where} sparsified {tuple(rp.shape)}"
        step(100 * k + steps)
        for p, rp in zip(ps, ref_ps):
            assert dw.rel_err(p.full_tensor(), rp) <= 1e-12, f"{where} step after {tuple(rp.shape)}"


def entry(rank: int, world: int, port: int) -> None:
    from structsparse.distributed import exit_process

    dw.init(rank, world, port)
    try:
        task_sparsify(rank, world)
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_process()


def launch(world: int) -> None:
    import torch.multiprocessing as mp

    mp.spawn(entry, args=(world, dw.free_port()), nprocs=world, join=True)
