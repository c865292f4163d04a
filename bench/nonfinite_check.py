"""Cost of the default NaN/Inf gradient check over a whole training iteration on CPU.

The check runs in post-accumulate-grad hooks during backward (each gradient read once, right after
it is produced) and step() only compares identities and versions. This script times, on a
ResNet-18-style CIFAR network (11.2 M parameters) at a small batch, the forward+backward and the
step separately, with the check on (``skip_nonfinite=True``, the default) and off, in rotation (one
iteration of each per round, so a neighbour's load hits both), for RMDA and ProxSGD (cpu backend).

    PYTHONPATH=$PWD python bench/nonfinite_check.py --reps 15 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

import structsparse as ss


def block(cin: int, cout: int, stride: int) -> nn.Module:
    class Basic(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.short(x))

    return Basic()


def resnet18_cifar() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [block(cin, cout, stride), block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def make(name: str, model: nn.Module, check: bool):
    groups = ss.group_params(model, ss.GroupLasso(1e-4))
    if name == "RMDA":
        return ss.RMDA(groups, lr=0.1, momentum=0.9, backend="cpu", skip_nonfinite=check)
    return ss.ProxSGD(groups, lr=0.1, momentum=0.9, backend="cpu", skip_nonfinite=check)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="bench/results/nonfinite_check.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    results = {"threads": torch.get_num_threads(), "batch": args.batch, "loadavg_start": os.getloadavg()}
    for name in ("RMDA", "ProxSGD"):
        runs = []
        for check in (True, False):
            torch.manual_seed(1)
            m = resnet18_cifar()
            runs.append((m, make(name, m, check), {"bwd": [], "step": []}))
        for r in range(args.reps + 2):
            for m, opt, ts in runs:
                opt.zero_grad()
                t0 = time.perf_counter()
                nn.functional.cross_entropy(m(x), y).backward()
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
                if r >= 2:
                    ts["bwd"].append(t1 - t0)
                    ts["step"].append(t2 - t1)
        (_, _, on), (_, _, off) = runs
        row = {
            k: {
                "on_ms": 1e3 * statistics.median(on[k]),
                "off_ms": 1e3 * statistics.median(off[k]),
                "ratio": statistics.median([a / b for a, b in zip(on[k], off[k])]),
            }
            for k in ("bwd", "step")
        }
        it_on = [a + b for a, b in zip(on["bwd"], on["step"])]
        it_off = [a + b for a, b in zip(off["bwd"], off["step"])]
        row["iteration_ratio"] = statistics.median([a / b for a, b in zip(it_on, it_off)])
        results[name] = row
        print(
            f"{name:8s} fwd+bwd {row['bwd']['on_ms']:8.1f} / {row['bwd']['off_ms']:8.1f} ms "
            f"(x{row['bwd']['ratio']:.3f})  step {row['step']['on_ms']:7.2f} / "
            f"{row['step']['off_ms']:7.2f} ms (x{row['step']['ratio']:.3f})  "
            f"iteration x{row['iteration_ratio']:.3f}   [check on / off]",
            flush=True,
        )
    results["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
