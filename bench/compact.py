"""Compaction: parameters, MACs and CPU latency of a dense model and its compact form.

1. ResNet50 for CIFAR (bottleneck blocks 3-4-6-3, 32×32 inputs, 23.5 M parameters) with 50 % of
   the input-channel groups of every stage zero: in every block, half the input channels of conv2
   and conv3 (each its own random half), and in every residual stream (stem → stage 1, and the
   output of each stage) half the channels, zero in the input of every consumer of that stream
   (the blocks' conv1, the next stage's shortcut, the classifier) — the zero pattern a channel-wise
   group-sparse training leaves when it removes a stream channel. BatchNorm statistics random.
2. A small model trained by the command line (``structsparse train --save-model``, RAMDA, digits),
   compacted with ``structsparse.compact.compact_run``.

Latency: median eval-mode forward time, dense and compact interleaved (one pass of each per
repetition, so that the load of a shared machine falls on both alike), batch 1 and 64, with the
thread count given. Target: speedup at batch 64 ≥ 80 % of the MAC ratio. Results go to
bench/results/compact.{json,md}.

    PYTHONPATH=$PWD nice python bench/compact.py                    # ~10 min on a shared 2-core Xeon
    PYTHONPATH=$PWD nice python bench/compact.py --reps64 3 --skip-cli
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import structsparse as ss
from structsparse.compact import compact_run, compact_table, model_stats


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * self.expansion
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet50CIFAR(nn.Module):
    def __init__(self, num_classes: int = 10, blocks=(3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        cin, stages = 64, []
        for i, (n, mid) in enumerate(zip(blocks, (64, 128, 256, 512))):
            layers = []
            for j in range(n):
                layers.append(Bottleneck(cin, mid, 2 if i > 0 and j == 0 else 1))
                cin = mid * 4
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@torch.no_grad()
def half_zero(model: ResNet50CIFAR, seed: int = 0) -> None:
    """Zero 50 % of the input-channel groups of every stage (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def half(n: int) -> torch.Tensor:
        return torch.randperm(n, generator=g)[: n // 2]

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    stages = list(model.stages)
    # consumers of each residual stream: the stem's and each stage's output
    streams: list[list[nn.Module]] = []
    for i, stage in enumerate(stages):
        blocks = list(stage)
        head = [blocks[0].conv1] + (
            [blocks[0].shortcut[0]] if not isinstance(blocks[0].shortcut, nn.Identity) else []
        )
        if i == 0:
            streams.append(head)  # stem → stage 1
        else:
            streams[-1].extend(head)  # previous stage's output → this stage's first block
        streams.append([b.conv1 for b in blocks[1:]])
    streams[-1].append(model.fc)
    for consumers in streams:
        idx = half(consumers[0].weight.shape[1])
        for c in consumers:
            c.weight[:, idx] = 0
    for stage in stages:
        for b in stage:
            for conv in (b.conv2, b.conv3):
                conv.weight[:, half(conv.weight.shape[1])] = 0


def machine() -> str:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def resnet50(reps1: int, reps64: int) -> dict:
    torch.manual_seed(0)
    dense = ResNet50CIFAR().eval()
    half_zero(dense)
    x = torch.randn(64, 3, 32, 32)
    t0 = time.perf_counter()
    small = ss.compact(dense, x[:16])
    t_compact = time.perf_counter() - t0
    with torch.no_grad():
        err = float((dense(x) - small(x)).abs().max() / dense(x).abs().max())
    b1 = model_stats([dense, small], x, batches=(1,), reps=reps1, with_min=True)
    b64 = model_stats([dense, small], x, batches=(64,), reps=reps64, warmup=1, with_min=True)
    before = {**b1[0], **b64[0]}
    after = {**b1[1], **b64[1]}
    return {
        "before": before,
        "after": after,
        "max_rel_error_b64": err,
        "compact_seconds": t_compact,
        "kept_reasons": sorted({k["reason"] for k in small.compact_report.kept}),
    }


def cli_model(model: str, epochs: int, milestones: str, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "structsparse", "train", "--optimizer", "ramda", "--model", model,
            "--epochs", str(epochs), "--milestones", milestones, "--save-model", "--out", tmp,
            "--run-name", "run", "--no-plot", "-q", "--threads", "1",
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        s = compact_run(Path(tmp) / "run", reps=reps, echo=lambda _m: None)
    return {
        "command": " ".join(["structsparse"] + cmd[3:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: s[k] for k in ("before", "after", "max_rel_error")},
    }


_OUT = re.compile(r"--out \S+")  # the temporary run folder of a CLI command


def to_markdown(res: dict) -> str:
    r = res["resnet50"]
    b, a = r["before"], r["after"]
    mac_ratio = b["macs"] / a["macs"]
    speed64 = b["latency_ms_b64"] / a["latency_ms_b64"]
    speed64_min = b["latency_min_ms_b64"] / a["latency_min_ms_b64"]
    lines = [
        "# Compaction: dense vs compact",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {res['machine']}; torch {res['torch']}; {res['threads']} thread(s); {res['date']}. "
        f"**Shared** with other jobs while measured (load average {res['load_before']} before, "
        f"{res['load_after']} after): latencies are noisy; parameters and MACs are exact.",
        "",
        "## ResNet50-CIFAR, 50 % of the input-channel groups of every stage zero",
        "",
        compact_table(b, a),
        "",
        f"MAC ratio {mac_ratio:.2f}×; latency speedup at batch 64: {speed64:.2f}× from the medians = "
        f"{100 * speed64 / mac_ratio:.0f} % of the MAC ratio, {speed64_min:.2f}× from the minima = "
        f"{100 * speed64_min / mac_ratio:.0f} % (target ≥ 80 %). Outputs equal to "
        f"{r['max_rel_error_b64']:.1e} (relative, batch 64); compaction took {r['compact_seconds']:.1f} s. "
        f"Latency: median and minimum of {res['reps1']} (batch 1) and {res['reps64']} (batch 64) "
        "interleaved passes (dense, compact, dense, ...); other jobs only add time, so the minimum is "
        "the least disturbed pass.",
        "",
        "Channels kept with some zero structure: " + ("; ".join(r["kept_reasons"]) or "none") + ".",
        "",
    ]
    for c in res.get("cli", []):
        lines += [
            f"## Trained by the command line ({c['date']}): `{_OUT.sub('--out DIR', c['command'])}`",
            "",
            compact_table(c["before"], c["after"]),
            "",
            f"Outputs equal to {c['max_rel_error']:.1e} (relative) on 256 validation images.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps1", type=int, default=10)
    ap.add_argument("--reps64", type=int, default=3)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument(
        "--keep-cli",
        action="store_true",
        help="with --skip-cli: keep the CLI results of the existing compact.json",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    load0 = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    res = {
        "command": "PYTHONPATH=$PWD nice python bench/compact.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": ns.threads,
        "reps1": ns.reps1,
        "reps64": ns.reps64,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": load0,
    }
    res["resnet50"] = resnet50(ns.reps1, ns.reps64)
    print(compact_table(res["resnet50"]["before"], res["resnet50"]["after"]), flush=True)
    prev = Path(ns.out) / "compact.json"
    if ns.skip_cli and ns.keep_cli and prev.is_file():
        old = json.loads(prev.read_text())
        res["cli"] = [{"date": old.get("date", "?"), **c} for c in old.get("cli", [])]
    if not ns.skip_cli:
        res["cli"] = [cli_model("mlp", 30, "10,20", ns.reps1), cli_model("lenet5", 15, "5,10", ns.reps1)]
    res["load_after"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compact.json").write_text(json.dumps(res, indent=2) + "\n")
    md = to_markdown(res)
    (out / "compact.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
