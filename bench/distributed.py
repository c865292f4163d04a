"""Sharded steps: bytes communicated per step and step-time of 2 ranks (FSDP2, gloo, CPU) versus 1.

Parameter set: ``--blocks`` transformer blocks of Linear weights (out, in) =
(2304, 768), (768, 768), (3072, 768), (768, 3072) (GPT-2 small's attention qkv/proj and MLP), all
regularized with GroupLasso; ``"input"`` grouping (groups split across dim-0 shards: partial sums +
all-reduce) and ``"output"`` grouping (aligned with the shards: no communication). Gradients are
fixed random tensors (no forward/backward), the backend is ``--backend`` (default ``reference``;
``cpu``: the fused kernels, two-phase on split shards for RMDA/ProxSGD/DessiLBI, solver buckets
with split groups redistributed to whole-group owners).

1 rank: plain tensors in one process. 2 ranks: ``fully_shard`` DTensor parameters, each rank
steps its half. Bytes are what structsparse's own collectives send per step per rank (the
all-reduce payload, from :func:`structsparse.distributed.comm_stats`), excluding FSDP2's own
gradient reduce-scatter, which is the same for any optimizer. Step times are medians over
``--steps`` timed steps after ``--warmup`` warm-up steps. The PG solvers run with ``max_iters=20``
here (the reference PG solver is the slow part: ~5 s per step per block on this machine even so).

The default set is 12 blocks (84.9 M parameters, GPT-2 small's); on 2 shared cores it is measured with
the fewest repetitions (one warm-up step, one timed step):

    PYTHONPATH=$PWD python bench/distributed.py --warmup 1 --steps 1 --out bench/results/distributed.json

and the fused CPU backend's sharded steps:

    PYTHONPATH=$PWD python bench/distributed.py --backend cpu --warmup 2 --steps 5 --quiet \
        --out bench/results/distributed_cpu.json --note "..."
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import structsparse as ss  # noqa: E402
from structsparse import distributed as ssd  # noqa: E402

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]
OPTS = {
    "RMDA": (ss.RMDA, dict(lr=0.1, momentum=0.9)),
    "ProxSGD": (ss.ProxSGD, dict(lr=0.1, momentum=0.9)),
    "RAMDA-exact": (ss.RAMDA, dict(lr=1e-2, momentum=0.9, solver="exact")),
    "RAMDA-pg": (ss.RAMDA, dict(lr=1e-2, momentum=0.9, solver="pg", max_iters=20)),
    "ProxGen-exact": (ss.ProxGen, dict(lr=1e-3, solver="exact")),
    "ProxGen-pg": (ss.ProxGen, dict(lr=1e-3, solver="pg", max_iters=20)),
    "ProxSSI": (ss.ProxSSI, dict(lr=1e-3)),
    "DessiLBI": (ss.DessiLBI, dict(lr=0.1, momentum=0.9)),
    "DessiLBI-ms": (ss.DessiLBI, dict(lr=0.1, momentum=0.9, magnitude_scaling=True)),
}
LAM = {"RMDA": 1e-4, "ProxSGD": 1e-4}


def run(rank: int, world: int, port: int, args: dict, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
    results = []
    for name in args["opts"]:
        cls, kw = OPTS[name]
        for grouping in args["groupings"]:
            torch.manual_seed(0)
            layers = torch.nn.Sequential(
                *[torch.nn.Linear(i, o, bias=False) for _ in range(args["blocks"]) for (o, i) in SHAPES]
            )
            grads = [torch.randn(p.shape) * 1e-2 for p in layers.parameters()]
            if world > 1:
                fully_shard(layers, mesh=mesh)
                grads = [distribute_tensor(g, mesh, [Shard(0)], src_data_rank=None) for g in grads]
            params = list(layers.parameters())
            reg = ss.GroupLasso(LAM.get(name, 1e-6), grouping)
            opt = cls(params, regularizer=reg, backend=args["backend"], **kw)
            for p, g in zip(params, grads):
                p.grad = g
            times = []
            w = args["warmup"]
            for s in range(w + args["steps"]):
                if s == w:
                    ssd.reset_comm_stats()
                if world > 1:
                    dist.barrier()
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
            stats = ssd.comm_stats()
            n = args["steps"]
            grp = stats.get("groups", {"calls": 0, "bytes": 0})
            red = stats.get("redistribute", {"calls": 0, "bytes": 0})
            results.append(
                {
                    "optimizer": name,
                    "grouping": grouping,
                    "world": world,
                    "step_s": statistics.median(times[w:]),
                    "allreduce_calls_per_step": grp["calls"] / n,
                    "bytes_per_step": grp["bytes"] / n,
                    "alltoall_calls_per_step": red["calls"] / n,
                    "alltoall_bytes_per_step": red["bytes"] / n,
                    "finite_check_bytes_per_step": stats.get("finite", {"bytes": 0})["bytes"] / n,
                    "params": sum(p.numel() for p in params),
                }
            )
            if rank == 0:
                print(json.dumps(results[-1]), flush=True)
            del opt, layers, params, grads
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    if world > 1:
        dist.destroy_process_group()


NOTES = """
Reading the table:

- `output` grouping is aligned with FSDP2's dim-0 shards: zero bytes for every optimizer.
- RMDA/ProxSGD `input`: exactly one all-reduce per bucket per step, of one float64 partial sum per group
  (group sums of float32 tensors accumulate in float64 so that they do not depend on the summation order):
  per block 768+768+768+3072 = 5,376 groups = 43,008 B (12 blocks: 516,096 B). Their 2-rank overhead comes from the collective on an
  oversubscribed machine and from `batched()` running the (cheap) prox of the bucket twice (record, replay).
- DessiLBI: the prox of Z as RMDA: one all-reduce per bucket per step of one float64 partial sum per group
  for `input` (12 blocks: 516,096 B, as RMDA), none for `output`. `magnitude_scaling=True` adds one
  all-reduce per bucket per step carrying the group sums of W² (G float64, `input` only) and 2 float64
  support counts per tensor (nnz of W and of Γ; every grouping, the counts span all rows): 12 blocks
  (48 tensors) `input` 516,096 + 516,096 + 768 = 1,032,960 B in 2 all-reduces, `output` 768 B in 1.
  Both reductions go through `batched()`, which runs the bucket's prox (and the scales) twice (record,
  replay): most of DessiLBI's 2-rank overhead besides the collective itself.
- RAMDA/ProxGen `exact` and ProxSSI `input`: per tensor one SUM (float64) + one MAX (float32) all-reduce of G,
  then one all-reduce of 2G float64 per Newton iteration.
- RAMDA/ProxGen `pg` `input`: per tensor 6 setup all-reduces of G plus 3 per PG iteration (prox norms, smooth
  objective, psi). Latency-bound on a real network.
- The two bullets above are the `reference` backend's scheme. The `cpu` backend redistributes the solvers'
  split buckets to whole-group owners instead (`structsparse.distributed.owned_groups`): two all-to-alls per
  bucket per step and no all-reduce; each rank sends the rows it holds of the groups the other rank owns, of
  the gradient, parameter and state (float32: 20 B per element for RAMDA, 16 B for ProxGen/ProxSSI), and
  receives back the updated parameter and state (12 B): at 2 ranks (20 + 12) x 84,934,656 / 4 = 679,477,248 B
  for RAMDA and (16 + 12) x 84,934,656 / 4 = 594,542,592 B for ProxGen/ProxSSI per step per rank, the same
  for `pg` and `exact`. The owners run the single-process kernels on whole groups (bitwise the
  single-process result).
"""


def write_md(path: str, d: dict) -> None:
    m = d["meta"]
    lines = [
        "# Sharded steps: communication and 2-rank vs 1-rank step time",
        "",
        "Command: `PYTHONPATH=$PWD python bench/distributed.py --blocks "
        f"{m['blocks']} --warmup {m['warmup']} --steps {m['steps']}"
        + (f" --backend {m['backend']}" if m["backend"] != "reference" else "")
        + (f" --opts {' '.join(m['opts'])}" if m.get("opts") else "")
        + (" --quiet" if not m.get("shared", True) else "")
        + "`",
        "",
        f"Machine: {m['machine']}; torch {m['torch']}; backend `{m['backend']}`; "
        f"{m['threads_per_rank']} thread per rank; {m['date']}.",
        "",
        f"Parameter set: **{m['blocks']}** transformer block(s) (GPT-2 small has 12) of Linear weights "
        "(out, in) = (2304, 768), (768, 768), (3072, 768), (768, 3072), 7,077,888 parameters per block "
        f"({m['blocks'] * 7077888:,} in all), GroupLasso on all of them. Bytes scale linearly with the number "
        "of blocks (closed forms) and with blocks x iterations (solvers). PG solvers run with `max_iters=20` "
        "here.",
        "",
        "`all-reduces`, `bytes`: structsparse's own collectives per step per rank (payload; a ring all-reduce "
        "moves about 2(N-1)/N of it on the wire), excluding FSDP2's gradient reduce-scatter (the same for "
        "every optimizer) and the 4-byte non-finite check. An all-gather of the parameters would be 14.2 MB "
        f"per rank per step per block (fp32, 2 ranks; {14.155776 * m['blocks']:.0f} MB for this set); nothing "
        "here gathers.",
        "",
        "`ratio` = 2-rank / 1-rank step time (each rank steps half of the rows). "
        f"{m['warmup']} warm-up step(s), median of {m['steps']} timed step(s). "
        + (
            "**The machine was shared** while this was measured (other jobs ran concurrently on its 2 cores; "
            if m.get("shared", True)
            else "Nothing else ran on the machine (2 cores: the 2 ranks take one each; "
        )
        + f"load average {m['load_before']} before, {m['load_after']} after): "
        + ("timings are rough, the bytes are exact." if m.get("shared", True) else "the bytes are exact."),
        "",
        "| optimizer | grouping | 1 rank (s) | 2 ranks (s) | ratio | all-reduces/step | bytes/step/rank "
        "| all-to-alls/step | all-to-all bytes/step/rank |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['optimizer']} | {r['grouping']} | {r['step_s_1rank']:.3f} | {r['step_s_2ranks']:.3f} | "
            f"{r['time_ratio_2v1']:.2f} | {r['allreduce_calls_per_step']:.1f} | "
            f"{r['bytes_per_step_per_rank']:,.0f} | {r.get('alltoall_calls_per_step', 0.0):.1f} | "
            f"{r.get('alltoall_bytes_per_step_per_rank', 0.0):,.0f} |"
        )
    note = f"\n{m['note']}\n" if m.get("note") else ""
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + NOTES + note)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--opts", nargs="*", default=list(OPTS))
    ap.add_argument("--groupings", nargs="*", default=["input", "output"])
    ap.add_argument("--out", default="bench/results/distributed.json")
    ap.add_argument("--backend", default="reference", choices=["reference", "cpu"])
    ap.add_argument("--quiet", action="store_true", help="nothing else ran on the machine (said in the .md)")
    ap.add_argument(
        "--note", default="", help="a paragraph appended to the .md (e.g. how the machine was used)"
    )
    a = ap.parse_args()
    args = {
        "blocks": a.blocks,
        "warmup": a.warmup,
        "steps": a.steps,
        "opts": a.opts,
        "groupings": a.groupings,
        "backend": a.backend,
    }
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = {}
    for world in (1, 2):
        tmp = f"{a.out}.w{world}.tmp"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if world == 1:
            run(0, 1, port, args, tmp)
        else:
            mp.spawn(run, args=(world, port, args, tmp), nprocs=world, join=True)
        with open(tmp) as f:
            rows[world] = json.load(f)
        os.remove(tmp)
    table = []
    for r1, r2 in zip(rows[1], rows[2]):
        table.append(
            {
                "optimizer": r1["optimizer"],
                "grouping": r1["grouping"],
                "params": r1["params"],
                "step_s_1rank": r1["step_s"],
                "step_s_2ranks": r2["step_s"],
                "time_ratio_2v1": r2["step_s"] / r1["step_s"],
                "allreduce_calls_per_step": r2["allreduce_calls_per_step"],
                "bytes_per_step_per_rank": r2["bytes_per_step"],
                "alltoall_calls_per_step": r2.get("alltoall_calls_per_step", 0.0),
                "alltoall_bytes_per_step_per_rank": r2.get("alltoall_bytes_per_step", 0.0),
                "finite_check_bytes_per_step": r2["finite_check_bytes_per_step"],
            }
        )
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs"
        + ("" if a.quiet else " (shared with other jobs while measured: timings are noisy)"),
        "shared": not a.quiet,
        "opts": a.opts if a.opts != list(OPTS) else None,
        "torch": torch.__version__,
        "blocks": a.blocks,
        "warmup": a.warmup,
        "steps": a.steps,
        "load_before": load_before,
        "load_after": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "threads_per_rank": 1,
        "backend": a.backend,
        "note": a.note,
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": table}, f, indent=1)
    write_md(a.out.rsplit(".", 1)[0] + ".md", {"meta": meta, "rows": table})
    print(
        f"{'optimizer':14} {'grouping':8} {'1 rank s':>9} {'2 ranks s':>9} {'ratio':>6} {'calls':>6} {'bytes/step':>11}"
        f" {'a2a':>4} {'a2a bytes':>12}"
    )
    for r in table:
        print(
            f"{r['optimizer']:14} {r['grouping']:8} {r['step_s_1rank']:9.3f} {r['step_s_2ranks']:9.3f} "
            f"{r['time_ratio_2v1']:6.2f} {r['allreduce_calls_per_step']:6.1f} {r['bytes_per_step_per_rank']:11.0f}"
            f" {r['alltoall_calls_per_step']:4.1f} {r['alltoall_bytes_per_step_per_rank']:12.0f}"
        )


if __name__ == "__main__":
    main()
