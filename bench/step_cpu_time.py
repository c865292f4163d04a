"""Thread CPU time per step of cpu-backend optimizers on the ResNet50-CIFAR parameter set, each step
followed by one AdamW(fused) step on its own parameters, one thread.

``time.thread_time`` does not count the time a process waits for a CPU, so on a shared, loaded
machine (where wall-clock step times swing by 10×) two builds can still be compared: run this in
alternating processes of each build and compare the medians and the ratios to AdamW.

    PYTHONPATH=$PWD python bench/step_cpu_time.py "RMDA nocheck,ProxSGD nocheck,RAMDA exact nocheck" 8
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_time as stb  # noqa: E402


def main() -> None:
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else ["RMDA nocheck", "ProxSGD nocheck"]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    torch.set_num_threads(1)
    shapes = stb.resnet50_cifar_shapes()
    out = []
    for name in names:
        ps, qs = stb.make_params(shapes), stb.make_params(shapes)
        opt = stb.make_opt(name, "cpu", ps)
        adamw = torch.optim.AdamW(qs, lr=1e-3, fused=True)
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p) * 1e-2
            q.grad = torch.randn_like(q) * 1e-2
        ts, ratios = [], []
        for k in range(steps + 3):  # 3 warm-up steps
            t0 = time.thread_time()
            opt.step()
            t1 = time.thread_time()
            adamw.step()
            t2 = time.thread_time()
            if k >= 3:
                ts.append(t1 - t0)
                ratios.append((t1 - t0) / (t2 - t1))
        out.append(f"{name}: {statistics.median(ts) * 1e3:.2f} ms, ×{statistics.median(ratios):.3f} AdamW")
    print(" | ".join(out))


if __name__ == "__main__":
    main()
