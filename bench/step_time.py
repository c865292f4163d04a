"""Step time of the structsparse optimizers per backend, against torch's fused AdamW and foreach SGD.

Two parameter sets: ResNet50 for CIFAR (23.5 M parameters: conv weights channel-wise group LASSO,
BN/bias unregularized) and a transformer block set (12 × Linear weights 768×2304, 768×768,
3072×768, 768×3072, input-wise group LASSO). For every optimizer × backend it reports the median
ms/step, the bytes the fused pass must move per parameter (the roofline: RMDA 24 B, RAMDA 32 B,
AdamW 28 B in fp32), the achieved GB/s, the % of a copy kernel's bandwidth over the same
working-set size, and the ratios to AdamW(fused=True) and SGD(momentum=0.9, foreach=True) measured
in the same run: each cpu optimizer's steps alternate with steps of the two baselines (each on its
own parameters), and its ratios are medians over those same rounds. Results go to bench/results/step_time_<set>.{json,md} with the CPU model,
thread count, torch version and the load average (start and end). The reference backend is timed
on --ref-reps steps, each round also one step of the cpu backend on its own parameters; the
cpu/reference speedup (a column) is the median of those rounds' ratios. Then the
peak-RSS check: 100 cpu steps per optimizer, peak RSS before/after (bench/results/rss.json).

    PYTHONPATH=$PWD python bench/step_time.py                 # both sets, all optimizers (~10 min)
    PYTHONPATH=$PWD python bench/step_time.py --set transformer --reps 20 --rss-steps 0

Rows beyond the default list: "RAMDA defaults" and "ProxGen defaults" (the library defaults,
solver="auto"), "RAMDA exact SGL", "RAMDA exact MCP", "RAMDA exact GroupMCP" (the exact solves of
SparseGroupLasso, MCP and GroupMCP), e.g.

    PYTHONPATH=$PWD python bench/step_time.py --backends cpu --rss-steps 0 --out bench/results/epyc \
        --optimizers "RAMDA defaults,RAMDA exact SGL,RAMDA exact MCP,RAMDA exact GroupMCP,ProxGen defaults"

The PG iterations per step of "RAMDA pg" and "ProxGen pg" (median and max per tensor, counted on
the reference backend, where every fused backend stops too): --pg-iters STEPS, e.g.

    PYTHONPATH=$PWD python bench/step_time.py --set transformer --pg-iters 3 --rss-steps 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import structsparse as ss
import structsparse.backends.cpu  # noqa: F401  (for ss.backends.cpu.available)

# bytes moved per parameter per step by a one-pass fused kernel, fp32 (reads + writes)
BYTES = {
    "RMDA": 24,  # g, W, W0, V -> W, V
    "RAMDA": 32,  # g, W, W0, V, U -> W, V, U
    "ProxSGD": 20,  # g, W, b -> W, b
    "ProxGen": 28,  # g, W, m, v -> W, m, v
    "ProxSSI": 28,
    "AdamW(fused)": 28,
    "SGD(foreach)": 20,
}


def resnet50_cifar_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of ResNet50 with the CIFAR stem (3×3 conv, no max-pool), 10 classes."""
    shapes: list[tuple[int, ...]] = [(64, 3, 3, 3), (64,), (64,)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]
            shapes += [(planes, planes, 3, 3), (planes,), (planes,)]
            shapes += [(4 * planes, planes, 1, 1), (4 * planes,), (4 * planes,)]
            if b == 0:
                shapes += [(4 * planes, inplanes, 1, 1), (4 * planes,), (4 * planes,)]
            inplanes = 4 * planes
    shapes += [(10, 2048), (10,)]
    return shapes


def transformer_shapes() -> list[tuple[int, ...]]:
    return [s for _ in range(12) for s in ((2304, 768), (768, 768), (3072, 768), (768, 3072))]


SETS = {"resnet50_cifar": resnet50_cifar_shapes, "transformer": transformer_shapes}


def make_params(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.05)
        p.grad = torch.randn(s, generator=gen) * 0.01
        ps.append(p)
    return ps


def make_opt(name: str, backend: str, params):
    weights = [p for p in params if p.dim() >= 2]
    others = [p for p in params if p.dim() < 2]

    def groups(lam, reg=None):
        g = [{"params": weights, "regularizer": reg or ss.GroupLasso(lam, "input")}]
        if others:
            g.append({"params": others, "regularizer": None})
        return g

    if name == "AdamW(fused)":
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    if name == "SGD(foreach)":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)
    if name.endswith(" nocheck"):  # the same step without the NaN/Inf gradient check
        opt = make_opt(name[: -len(" nocheck")], backend, params)
        opt.skip_nonfinite = False
        return opt
    if name == "RMDA":
        return ss.RMDA(groups(2e-4), lr=0.1, momentum=0.9, backend=backend)
    if name == "RAMDA defaults":  # ss.RAMDA(params) but for the regularizer: solver="auto" (exact)
        return ss.RAMDA(groups(5e-7), backend=backend)
    if name.startswith("RAMDA exact "):  # the exact solves of the other regularizers (ω: the CLI's)
        reg = {
            "SGL": ss.SparseGroupLasso(5e-8, 5e-7, "input"),
            "MCP": ss.MCP(5e-7, 4.0),
            "GroupMCP": ss.GroupMCP(5e-7, 4.0, "input"),
        }[name.split(" ")[2]]
        return ss.RAMDA(groups(5e-7, reg), lr=1e-2, momentum=0.99, solver="exact", backend=backend)
    if name == "ProxGen defaults":  # solver="auto" (exact)
        return ss.ProxGen(groups(1e-6), backend=backend)
    if name.startswith("RAMDA"):
        solver = "exact" if "exact" in name else "pg"
        return ss.RAMDA(groups(5e-7), lr=1e-2, momentum=0.99, solver=solver, backend=backend)
    if name == "ProxSGD":
        return ss.ProxSGD(groups(4e-5), lr=0.1, momentum=0.9, backend=backend)
    if name.startswith("ProxGen"):
        solver = "exact" if "exact" in name else "pg"
        return ss.ProxGen(groups(1e-6), lr=1e-3, solver=solver, backend=backend)
    if name == "ProxSSI":
        return ss.ProxSSI(groups(1e-6), lr=1e-3, backend=backend)
    raise ValueError(name)


def time_interleaved(opts, reps: int, warmup: int) -> list[list[float]]:
    """Step times of several optimizers (each on its own parameters) taken in rotation, one step
    of each per round: their ratios then share whatever load the machine had during the round
    (this machine's neighbours move the absolute times by 10-25 % from minute to minute)."""
    for _ in range(warmup):
        for o in opts:
            o.step()
    out: list[list[float]] = [[] for _ in opts]
    for _ in range(reps):
        for o, ts in zip(opts, out):
            t0 = time.perf_counter()
            o.step()
            ts.append(time.perf_counter() - t0)
    return out


def copy_time(nbytes: int, reps: int) -> float:
    """Time of the faster of two copies over a working set of nbytes (medians): ``dst.copy_(src)``
    (nbytes/2 read, nbytes/2 written; the stores also read dst for ownership) and the in-place
    ``x.add_(y)`` (x, y of nbytes/3 each read, x written back: the access pattern of an optimizer
    step, no ownership reads)."""
    n = nbytes // 8
    src, dst = torch.randn(n), torch.empty(n)
    m = nbytes // 12
    x, y = torch.randn(m), torch.randn(m)

    def med(f):
        for _ in range(2):
            f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    return min(med(lambda: dst.copy_(src)), med(lambda: x.add_(y)))


class AddStep:
    """The in-place ``x.add_(y)`` over a working set of nbytes (x, y of nbytes/3 each: the access
    pattern of an optimizer step) as a ``step()``, to be timed in rotation with an optimizer."""

    def __init__(self, nbytes: int):
        m = nbytes // 12
        self.x, self.y = torch.randn(m), torch.randn(m)

    def step(self) -> None:
        self.x.add_(self.y)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_set(set_name: str, reps: int, ref_reps: int, optimizers, backends) -> dict:
    shapes = SETS[set_name]()
    n = sum(int(torch.Size(s).numel()) for s in shapes)
    rows = []
    copies: dict[int, float] = {}
    base: dict[str, float] = {}
    # the baselines stay alive: every cpu optimizer is timed in rotation with them
    baselines = {b: make_opt(b, "torch", make_params(shapes)) for b in ("AdamW(fused)", "SGD(foreach)")}
    for name in ["AdamW(fused)", "SGD(foreach)", *optimizers]:
        bks = (
            ["torch"]
            if "(" in name
            else [b for b in backends if b == "cpu"]
            if "nocheck" in name
            else backends
        )
        for backend in bks:
            r = ref_reps if backend == "reference" else reps
            params = make_params(shapes)
            opt = make_opt(name, backend, params)
            pair = ref_pair = None
            key = name.split(" ")[0]
            bpp = BYTES[key]
            if backend == "cpu":
                # in rotation with the baselines and with x.add_(y) over the same working set:
                # ratios (and % of copy) compare medians over the same rounds, so a neighbour's
                # load that comes and goes hits both sides
                add = AddStep(bpp * n)
                ts, ta, tsg, tc = time_interleaved([opt, *baselines.values(), add], r, warmup=3)
                pair = (statistics.median(ta), statistics.median(tsg))
                del add
                cp = statistics.median(tc)
                pct = 100 * cp / statistics.median(ts)
            else:
                if backend == "reference" and "cpu" in backends:
                    # in rotation with the cpu backend's step (its own parameters): the speedup
                    # is the median of the per-round ratios, so a slow minute of the host hits
                    # both sides
                    twin = make_opt(name, "cpu", make_params(shapes))
                    ts, tw = time_interleaved([opt, twin], r, warmup=1)
                    ref_pair = (statistics.median(tw), statistics.median([a / b for a, b in zip(ts, tw)]))
                    del twin
                else:
                    ts = time_interleaved([opt], r, warmup=1 if backend == "reference" else 3)[0]
                cp = copy_time(bpp * n, 10)
                pct = 100 * cp / statistics.median(ts)
            med = statistics.median(ts)
            row = {
                "optimizer": name,
                "backend": backend,
                "ms_per_step": med * 1e3,
                "bytes_per_param": bpp,
                "GB_per_s": bpp * n / med / 1e9,
                "pct_of_copy": pct,
                "copy_GB_per_s": bpp * n / cp / 1e9,
                "reps": r,
            }
            if pair is not None:
                row["x_adamw_fused"] = med / pair[0]
                row["x_sgd_foreach"] = med / pair[1]
                row["adamw_ms_same_rounds"] = pair[0] * 1e3
                row["sgd_ms_same_rounds"] = pair[1] * 1e3
            if ref_pair is not None:
                row["cpu_ms_same_rounds"] = ref_pair[0] * 1e3
                row["speedup_same_rounds"] = ref_pair[1]
            if name in ("AdamW(fused)", "SGD(foreach)"):
                base[name] = med
            rows.append(row)
            copies[bpp] = row["copy_GB_per_s"]
            print(
                f"{set_name:15s} {name:14s} {backend:9s} {med * 1e3:9.2f} ms  "
                f"{row['GB_per_s']:6.1f} GB/s  {row['pct_of_copy']:5.1f}% of copy",
                flush=True,
            )
            del opt, params
    # (a cpu row exists only when "cpu" is a backend, and then its reference row has the ratio)
    ref = {r["optimizer"]: r["speedup_same_rounds"] for r in rows if "speedup_same_rounds" in r}
    for row in rows:
        row.setdefault("x_adamw_fused", row["ms_per_step"] / 1e3 / base["AdamW(fused)"])
        row.setdefault("x_sgd_foreach", row["ms_per_step"] / 1e3 / base["SGD(foreach)"])
        if row["backend"] == "cpu" and row["optimizer"] in ref:
            row["speedup_vs_reference"] = ref[row["optimizer"]]
    return {
        "set": set_name,
        "n_params": n,
        "rows": rows,
        "copy_GB_per_s": copies,
        "loadavg_end": list(os.getloadavg()),
    }


def _peak_rss_kib() -> int:
    """This process's peak RSS in KiB: VmHWM (Linux; the high-water mark of this address space,
    reset by exec) or ru_maxrss, which a child started by fork + exec inherits from its parent (a
    benchmark parent holding GBs of tensors would mask the child's own peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_one(name: str, steps: int) -> dict:
    params = make_params(transformer_shapes()[:4])
    opt = make_opt(name, "cpu", params)
    for _ in range(5):
        opt.step()
    before = _peak_rss_kib()
    for _ in range(steps):
        opt.step()
    after = _peak_rss_kib()
    return {"steps": steps, "peak_rss_kib_before": before, "peak_rss_kib_after": after}


def rss_check(
    steps: int = 100, names=("RMDA", "ProxSGD", "RAMDA exact", "RAMDA pg", "ProxGen exact", "ProxSSI")
) -> dict:
    """Peak RSS (VmHWM, KiB) after 5 warm-up steps and after 100 more, per cpu optimizer, on 4
    transformer weights (9.4 M parameters, input grouping), each in a fresh process (the peak is a
    process-wide maximum). Flat = no per-step allocation proportional to the model (a leak or a
    per-step model-sized buffer would raise the peak)."""
    out = {}
    for name in names:
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import step_time as s; "
            "print(json.dumps(s._rss_one(sys.argv[2], int(sys.argv[3]))))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).parent), name, str(steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[name] = r
        print(
            f"peak RSS {name:14s} {r['peak_rss_kib_before']} KiB -> {r['peak_rss_kib_after']} KiB after {steps} steps",
            flush=True,
        )
    return out


def to_markdown(res: dict, meta: dict) -> str:
    lines = [
        f"### {res['set']} ({res['n_params'] / 1e6:.1f} M parameters)",
        "",
        f"Command: `{meta['command']}`" if meta.get("command") else "",
        "",
        f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, kernels {meta['isa']}"
        + (f"; {meta['date']}" if meta.get("date") else ""),
        "",
        f"load average at start {meta['loadavg_start']}, at end {res['loadavg_end']}",
        "",
        "| optimizer | backend | reps | ms/step | B/param | GB/s | % of copy | × AdamW fused | × SGD foreach "
        "| cpu speedup vs reference | ms in the same rounds: AdamW / SGD (cpu rows), cpu (reference rows) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        sp = f"{r['speedup_vs_reference']:.1f}" if "speedup_vs_reference" in r else ""
        same = (
            f"{r['adamw_ms_same_rounds']:.2f} / {r['sgd_ms_same_rounds']:.2f}"
            if "adamw_ms_same_rounds" in r
            else f"cpu {r['cpu_ms_same_rounds']:.2f}"
            if "cpu_ms_same_rounds" in r
            else ""
        )
        lines.append(
            f"| {r['optimizer']} | {r['backend']} | {r['reps']} | {r['ms_per_step']:.2f} | {r['bytes_per_param']} | "
            f"{r['GB_per_s']:.1f} | {r['pct_of_copy']:.0f} | {r['x_adamw_fused']:.2f} | "
            f"{r['x_sgd_foreach']:.2f} | {sp} | {same} |"
        )
    lines += [
        "",
        "cpu rows: timed in rotation with AdamW(fused) and SGD(foreach) (one step of each per round, "
        "each on its own parameters); their ratios are medians of the same rounds. The torch rows "
        "are timed alone. Reference rows: in rotation with the cpu backend's step (its own "
        "parameters); the cpu speedup vs reference is the median of those rounds' ratios.",
        "",
        "copy: the in-place `x.add_(y)` over the same working set (B/param × parameters), timed in "
        "the same rotation as each cpu row (reference rows: the faster of `dst.copy_(src)` and "
        "`x.add_(y)`, timed alone); the GB/s of the last row of each size: "
        + ", ".join(f"{k} B/param {v:.1f} GB/s" for k, v in sorted(res["copy_GB_per_s"].items())),
    ]
    return "\n".join(lines) + "\n"


def pg_iterations(set_name: str, steps: int, names=("RAMDA pg", "ProxGen pg")) -> dict:
    """PG iterations per step of the pg rows: ``steps`` steps of each optimizer on the reference
    backend (the fused backends stop every group at the reference's iteration), the counts of
    each tensor's non-screened groups collected with ``reference.pg_iteration_counts()``. Per step
    and tensor: median and max over its groups; printed: per step, the median over tensors of the
    per-tensor medians, the largest per-tensor max and the groups' total."""
    from structsparse.backends import reference

    shapes = SETS[set_name]()
    out: dict = {}
    for name in names:
        opt = make_opt(name, "reference", make_params(shapes))
        per_step = []
        for t in range(1, steps + 1):
            with reference.pg_iteration_counts() as got:
                opt.step()
            rows = []
            for shape, c in got:
                c = c[c > 0]  # screened groups: no iteration
                if c.numel():
                    rows.append(
                        {
                            "shape": list(shape),
                            "median": float(c.median()),
                            "max": int(c.max()),
                            "groups": int(c.numel()),
                        }
                    )
            med = statistics.median(r["median"] for r in rows) if rows else 0.0
            mx = max((r["max"] for r in rows), default=0)
            total = sum(r["groups"] for r in rows)
            print(
                f"{set_name:15s} {name:11s} step {t}: per-tensor median iterations: median {med:.0f} "
                f"over {len(rows)} tensors; per-tensor max: largest {mx}; {total} groups iterated",
                flush=True,
            )
            per_step.append({"step": t, "median_of_medians": med, "max": mx, "tensors": rows})
        out[name] = per_step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=[*SETS, "all"], default="all")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--ref-reps", type=int, default=3)
    ap.add_argument("--backends", default="cpu,reference")
    ap.add_argument(
        "--optimizers",
        default="RMDA,RMDA nocheck,RAMDA exact,RAMDA pg,ProxSGD,ProxSGD nocheck,ProxGen exact,ProxGen pg,ProxSSI",
    )
    ap.add_argument("--rss-steps", type=int, default=100, help="steps of the peak-RSS check (0: skip)")
    ap.add_argument("--rss-only", action="store_true", help="only the peak-RSS check")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument(
        "--pg-iters",
        type=int,
        default=0,
        metavar="STEPS",
        help="only the PG iteration counts of RAMDA pg and ProxGen pg over STEPS steps "
        "(median and max per tensor, reference backend; pg_iters_<set>.json)",
    )
    args = ap.parse_args()
    meta = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "isa": torch.ops.structsparse.cpu_isa() if ss.backends.cpu.available()[0] else "n/a",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": "PYTHONPATH=$PWD python bench/step_time.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    sets = [] if args.rss_only else list(SETS) if args.set == "all" else [args.set]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.pg_iters > 0:
        for s in sets:
            res = {"set": s, "meta": meta, "counts": pg_iterations(s, args.pg_iters)}
            (out / f"pg_iters_{s}.json").write_text(json.dumps(res, indent=1))
        return
    for s in sets:
        res = run_set(s, args.reps, args.ref_reps, args.optimizers.split(","), args.backends.split(","))
        res["meta"] = meta
        (out / f"step_time_{s}.json").write_text(json.dumps(res, indent=1))
        md = to_markdown(res, meta)
        (out / f"step_time_{s}.md").write_text(md)
        print(md)
    if args.rss_steps > 0:
        rss = rss_check(args.rss_steps)
        (out / "rss.json").write_text(json.dumps({**rss, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
