"""lr × λ grid for `structsparse compare` on digits / LeNet5 (the CLI sweeps λ only).

Usage (from the repository root):
    python examples/cli_compare_grid.py SETUP run OUT WORKER NWORKERS   # one 1-thread process per worker
    python examples/cli_compare_grid.py SETUP report OUT                # table.md, plots, summary.json

SETUP 45: 45 epochs, milestones 15,30; SETUP 60: 60 epochs, milestones 20,40 (lr × 0.1; RMDA/RAMDA restart there and ramp c → 1), batch 64,
seed 0, group LASSO, the CLI's per-optimizer defaults otherwise. Selection as in `compare --lams`: each
optimizer is reported at its sparsest (lr, λ) whose final validation accuracy reaches the lowest of the
optimizers' best accuracies − 1 point.
"""

import json
import sys
from pathlib import Path

import torch

from structsparse.cli.common import _md_table, _pct
from structsparse.cli.config import TRAIN_DEFAULTS
from structsparse.cli.data import load_dataset
from structsparse.cli.plotting import _plot_compare
from structsparse.cli.train import run_train

SETUPS = {  # name: (epochs, milestones, {optimizer: (lrs, λs)})
    "45": (
        45,
        [15, 30],
        {
            "rmda": ([0.1, 0.3], [1e-3, 2e-3]),
            "ramda": ([0.01, 0.03], [5e-4, 1e-3]),
            "proxsgd": ([0.1, 0.03], [1e-3, 2e-3]),
            "proxgen": ([1e-3, 3e-4], [1e-3, 2e-3]),
            "proxssi": ([1e-3, 3e-4], [1e-4, 2e-4]),
        },
    ),
    "60": (
        60,
        [20, 40],
        {
            "rmda": ([0.03, 0.1, 0.3], [1e-3, 1.5e-3, 2e-3]),
            "ramda": ([0.003, 0.01, 0.03], [5e-4, 1e-3, 1.5e-3]),
            "proxsgd": ([0.03, 0.1, 0.3], [1e-3, 1.5e-3, 2e-3]),
            "proxgen": ([3e-4, 1e-3, 3e-3], [5e-4, 1e-3, 1.5e-3]),
            "proxssi": ([3e-4, 1e-3, 3e-3], [5e-5, 1e-4, 1.5e-4]),
        },
    ),
}
EPOCHS, MILESTONES, GRID = SETUPS["45"]


def points():
    # the middle lr (the CLI default where there are three) first, so that a cut-short run is still useful
    per = (
        {
            o: [
                (o, lr, lam)
                for i, lr in sorted(enumerate(lrs), key=lambda x: x[0] != len(lrs) // 2)
                for lam in lams
            ]
            for o, (lrs, lams) in GRID.items()
        }
        if len(next(iter(GRID.values()))[0]) == 3
        else {o: [(o, lr, lam) for lr in lrs for lam in lams] for o, (lrs, lams) in GRID.items()}
    )
    n = max(len(v) for v in per.values())
    return [
        per[o][k] for k in range(n) for o in GRID if k < len(per[o])
    ]  # round k: every optimizer's k-th point


def run(out: Path, worker: int, nworkers: int) -> None:
    torch.set_num_threads(1)
    cfg = {**TRAIN_DEFAULTS, "model": "lenet5", "epochs": EPOCHS, "milestones": MILESTONES}
    data = load_dataset("digits", "data", download_missing=False, seed=0, subset=None)
    for i, (o, lr, lam) in enumerate(points()):
        if i % nworkers != worker:
            continue
        d = out / o / f"lr{lr:g}-lam{lam:g}"
        if (d / "result.json").exists():
            continue
        r = run_train(
            {**cfg, "optimizer": o, "lr": lr, "lam": lam, "quiet": True, "progress": False}, data, d
        )
        (d / "result.json").write_text(json.dumps(r, default=str) + "\n")
        print(
            f"{o} lr={lr:g} λ={lam:g}: val {r['val_acc']:.4f} gs {r['group_sparsity']:.4f} "
            f"wgs {r['weighted_group_sparsity']:.4f} last {r['last_pattern_change']} "
            f"step {r['mean_step_ms']:.1f}ms {r['total_time_s']:.0f}s",
            flush=True,
        )


def report(out: Path) -> None:
    runs = {o: [] for o in GRID}
    for f in sorted(out.glob("*/*/result.json")):
        r = json.loads(f.read_text())
        runs[r["optimizer"]].append(r)
    runs = {o: v for o, v in runs.items() if v}
    target = min(max(r["val_acc"] for r in v) for v in runs.values()) - 0.01
    sel = {}
    for o, v in runs.items():
        ok = [r for r in v if r["val_acc"] >= target]
        sel[o] = max(ok, key=lambda r: r["group_sparsity"]) if ok else max(v, key=lambda r: r["val_acc"])
    pct = _pct
    rows = [
        [
            o,
            f"{r['hparams']['lr']:g}",
            f"{r['hparams']['lam']:g}",
            pct(r["val_acc"]),
            pct(r["group_sparsity"]),
            pct(r["weighted_group_sparsity"]),
            pct(r.get("kernel_sparsity")),
            r["last_pattern_change"],
            f"{r['mean_step_ms']:.2f}",
            f"{r['total_time_s']:.1f}",
        ]
        for o, r in sel.items()
    ]
    table = _md_table(
        [
            "optimizer",
            "lr",
            "λ",
            "validation accuracy",
            "group sparsity",
            "weighted group sparsity",
            "kernel sparsity",
            "last pattern change (epoch)",
            "step (ms)",
            "time (s)",
        ],
        rows,
    )
    grows = [
        [
            o,
            f"{r['hparams']['lr']:g}",
            f"{r['hparams']['lam']:g}",
            pct(r["val_acc"]),
            pct(r["group_sparsity"]),
            pct(r["weighted_group_sparsity"]),
            r["last_pattern_change"],
            f"{r['mean_step_ms']:.2f}",
            "←" if r is sel[o] else "",
        ]
        for o, v in runs.items()
        for r in sorted(v, key=lambda r: (r["hparams"]["lr"], r["hparams"]["lam"]))
    ]
    gtable = _md_table(
        [
            "optimizer",
            "lr",
            "λ",
            "val acc",
            "group sparsity",
            "weighted",
            "last change",
            "step (ms)",
            "selected",
        ],
        grows,
    )
    title = (
        f"digits / lenet5, {EPOCHS} epochs, milestones {MILESTONES}; per optimizer the sparsest (lr, λ) "
        f"with validation accuracy ≥ {100 * target:.2f} %"
    )
    (out / "table.md").write_text(f"{title}\n\n{table}\n\nlr × λ grid:\n\n{gtable}\n")
    (out / "summary.json").write_text(
        json.dumps({o: {k: v for k, v in r.items() if k != "history"} for o, r in sel.items()}, indent=2)
        + "\n"
    )
    _plot_compare(sel, out, title.split(";")[0], EPOCHS)
    print(f"{title}\n\n{table}\n\nlr × λ grid:\n\n{gtable}")


if __name__ == "__main__":
    EPOCHS, MILESTONES, GRID = SETUPS[sys.argv.pop(1)]  # first argument: setup name (45 or 60)
    if sys.argv[1] == "run":
        run(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        report(Path(sys.argv[2]))
