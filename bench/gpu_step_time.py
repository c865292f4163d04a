"""GPU step time of the fused structsparse optimizers versus torch's fused AdamW.

Usage::

    python bench/gpu_step_time.py [--backend triton|cuda] [--sizes 1e7 1e8 1e9] [--json out.json]

For each size N (parameters, fp32, in weight matrices of 2048×4096 plus the remainder) and each
algorithm it prints ms/step (median of CUDA-event timings), the achieved bandwidth under the
roofline byte model (bytes per parameter per step, below), that bandwidth as a percentage of the
device's measured copy bandwidth over the same working-set size, and the step time as a ratio to
``torch.optim.AdamW(fused=True)`` on the same parameters, all measured in the same process.
Without a CUDA GPU it exits with a message (status 2): see bench/GPU.md for the model.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

import torch

# bytes per parameter per step, fp32: reads + writes of param, grad and state (bench/GPU.md)
BYTES = {
    "copy": 8,
    "adamw_fused": 28,
    "sgd_momentum_foreach": 20,
    "rmda": 24,
    "ramda_exact": 32,
    "ramda_pg": 32,
    "proxsgd": 20,
    "proxgen_exact": 28,
    "proxssi": 28,
}
ROWS, COLS = 2048, 4096  # 'input' groups of 2048 elements: on chip at the default limit


def make_params(n: int, device: torch.device) -> list[torch.Tensor]:
    full, rest = divmod(n, ROWS * COLS)
    shapes = [(ROWS, COLS)] * full
    if rest:
        shapes.append((max(1, rest // COLS), COLS) if rest >= COLS else (rest,))
    ps = [torch.randn(s, device=device) * 0.02 for s in shapes]
    for p in ps:
        p.requires_grad_(True)
        p.grad = torch.randn_like(p) * 1e-3
    return ps


def make_optimizer(name: str, params, backend: str):
    import structsparse as ss

    reg = ss.GroupLasso(1e-6, "input")
    weights = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": weights, "regularizer": reg}] + ([{"params": rest}] if rest else [])
    if name == "adamw_fused":
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    if name == "sgd_momentum_foreach":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)
    if name == "rmda":
        return ss.RMDA(groups, lr=0.1, backend=backend)
    if name == "ramda_exact":
        return ss.RAMDA(groups, lr=1e-2, solver="exact", backend=backend)
    if name == "ramda_pg":
        return ss.RAMDA(groups, lr=1e-2, solver="pg", backend=backend)
    if name == "proxsgd":
        return ss.ProxSGD(groups, lr=0.1, backend=backend)
    if name == "proxgen_exact":
        return ss.ProxGen(groups, lr=1e-3, solver="exact", backend=backend)
    if name == "proxssi":
        return ss.ProxSSI(groups, lr=1e-3, backend=backend)
    raise ValueError(name)


def time_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bandwidth(n: int, warmup: int, iters: int) -> tuple[float, float]:
    """Copy over the working set of the largest algorithm (5 fp32 tensors of n): (ms, GB/s)."""
    src = torch.empty(n * 5 // 2, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup, iters)
    return ms, 2 * src.numel() * 4 / ms / 1e6


def bench_size(n: int, algs: list[str], backend: str, warmup: int, iters: int) -> list[dict]:
    dev = torch.device("cuda")
    rows = []
    copy_ms, copy_gbs = copy_bandwidth(n, warmup, iters)
    rows.append({"alg": "copy", "n": n, "ms": copy_ms, "gbs": copy_gbs})
    adamw_ms = None
    for alg in algs:
        params = make_params(n, dev)
        opt = make_optimizer(alg, params, backend)
        ms = time_ms(opt.step, warmup, iters)
        if alg == "adamw_fused":
            adamw_ms = ms
        rows.append({"alg": alg, "n": n, "ms": ms, "gbs": BYTES[alg] * n / ms / 1e6})
        del opt, params
        torch.cuda.empty_cache()
    for r in rows:
        r["pct_copy"] = 100 * r["gbs"] / copy_gbs
        r["x_adamw"] = r["ms"] / adamw_ms if adamw_ms else math.nan
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="triton", choices=["triton", "cuda"])
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e7, 1e8, 1e9])
    ap.add_argument("--algs", nargs="+", default=[a for a in BYTES if a != "copy"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--onchip-limit", type=int, help="triton: largest group held on chip (default 2048)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_step_time: no CUDA GPU available; nothing measured. "
            "The roofline model and expected times are in bench/GPU.md.",
            file=sys.stderr,
        )
        return 2
    if args.onchip_limit:
        from structsparse.triton_kernels import launch

        launch.ONCHIP_LIMIT = args.onchip_limit
    if "adamw_fused" not in args.algs:
        args.algs.insert(0, "adamw_fused")
    name = torch.cuda.get_device_name()
    free, _ = torch.cuda.mem_get_info()
    print(f"# device: {name}; torch {torch.__version__}; backend {args.backend}; fp32")
    print(f"{'algorithm':<22} {'params':>8} {'ms/step':>9} {'GB/s':>8} {'% copy':>7} {'x AdamW':>8}")
    all_rows = []
    for size in args.sizes:
        n = int(size)
        if 6 * 4 * n > 0.9 * free:  # params + grads + 3 state + copy buffers
            print(f"# skipping {n:.0e} params: needs ~{6 * 4 * n / 2**30:.0f} GiB, {free / 2**30:.0f} free")
            continue
        rows = bench_size(n, args.algs, args.backend, args.warmup, args.iters)
        for r in rows:
            print(
                f"{r['alg']:<22} {n:>8.0e} {r['ms']:>9.3f} {r['gbs']:>8.0f} "
                f"{r['pct_copy']:>6.0f}% {r['x_adamw']:>8.2f}"
            )
        all_rows += rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "backend": args.backend, "rows": all_rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
