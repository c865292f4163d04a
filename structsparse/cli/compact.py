"""``structsparse compact RUN_DIR``: the compact model of a ``structsparse train`` run (see
:func:`structsparse.compact.compact_run`); ``structsparse train --compact`` calls it at the end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import CLIError, _threads


def compact_after_train(
    run_dir: str | Path, threads: int | None, dataset: str, quiet: bool
) -> dict[str, Any]:
    """Compact a run folder just written (``train --compact``); prints the table unless quiet."""
    from ..compact import compact_run

    with _threads(threads, dataset):
        return compact_run(run_dir, echo=(lambda _m: None) if quiet else print)


def cmd_compact(ns: argparse.Namespace) -> int:
    """Turn the model of a ``structsparse train --save-model`` run into a smaller dense model with
    the same outputs: remove every channel/neuron whose consumers read zeros from it, or whose
    producers write zeros to it (its constant folded into the next layer's bias where exact).
    Writes RUN_DIR/compact/ (model.pt: state dict; model.pt2: torch.export program; report.json,
    report.md) and adds a dense-vs-compact table (parameters, MACs, CPU latency at batch 1 and 64,
    validation accuracy) to RUN_DIR/summary.md and summary.json."""
    from ..compact import compact_run

    if ns.reps < 1:
        raise CLIError(f"--reps: expected a positive number of timed passes, got {ns.reps}")
    run = Path(ns.run_dir)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise CLIError(f"{run}: no config.json (not a `structsparse train` run folder)")
    dataset = json.loads(cfg_path.read_text()).get("dataset", "")
    with _threads(ns.threads, dataset):
        compact_run(run, data_dir=ns.data_dir, reps=ns.reps, echo=(lambda _m: None) if ns.quiet else print)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "compact",
        help="turn a trained run's model into a smaller dense model with the same outputs",
        description=cmd_compact.__doc__,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `structsparse train --save-model`")
    p.add_argument("--data-dir", default=None, help="where the run's data set lives (default: the run's)")
    p.add_argument(
        "--reps", type=int, default=20, help="timed forward passes per latency (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on digits/synthetic, else torch's)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    p.set_defaults(func=cmd_compact)
