"""``structsparse compare``: several optimizers on one task with the same budget, optional λ sweeps
reported at matched accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import checkpoint
from .common import CLIError, _md_table, _pct, _run_dir, _threads, make_dir, write_text
from .config import TRAIN_DEFAULTS, _add_common, _cfg, _check_train_cfg, check_flags_used, resolve_milestones
from .data import load_dataset
from .optimizers import OPTIMIZERS, OPTION_KEYS
from .plotting import _plot_compare
from .train import run_train


def run_compare(
    cfg: dict[str, Any],
    optimizers: Sequence[str],
    overrides: dict[str, dict[str, Any]],
    out_dir: Path,
    echo=print,
    sweeps: dict[str, list[float]] | None = None,
    target_acc: float | None = None,
    resume: bool = False,
):
    """Run every optimizer on one task with the same budget. ``sweeps[o]``: λ values to try for
    ``o``; then each optimizer is represented by its sweep run with the highest group sparsity among
    those reaching ``target_acc`` (default: the lowest of the optimizers' best accuracies − 1 point),
    i.e. the table compares sparsity at matched accuracy. ``out_dir`` is created once the input
    is valid and the data are loaded. ``resume``: runs of ``out_dir`` with a checkpoint
    (``checkpoint_every``) continue from it, or only report again when finished."""
    for o in optimizers:
        if o not in OPTIMIZERS:
            raise CLIError(
                f"--optimizers: unknown optimizer {o!r}; expected names from {', '.join(OPTIMIZERS)}"
            )
    for o in overrides:
        if o not in optimizers:
            raise CLIError(f"--set: optimizer {o!r} is not in --optimizers")
        spec = OPTIMIZERS.get(o)
        for k in overrides[o]:
            unused = (
                k in OPTION_KEYS and spec is not None and spec.options is not None and k not in spec.options
            )
            if unused or (k == "lam" and spec is not None and not spec.regularized):
                raise CLIError(f"--set: {o}.{k}: {o} does not use {k}")
    cfg = resolve_milestones({**TRAIN_DEFAULTS, **cfg})
    for o in optimizers:
        _check_train_cfg({**cfg, "optimizer": o, **overrides.get(o, {})})
    sweeps = sweeps or {}
    for o in sweeps:
        if o not in optimizers:
            raise CLIError(f"--lams: optimizer {o!r} is not in --optimizers")
        if not OPTIMIZERS[o].regularized:
            raise CLIError(f"--lams: {o!r} is a dense baseline without λ")
    data = load_dataset(
        cfg["dataset"],
        cfg["data_dir"],
        download_missing=cfg["download"],
        seed=cfg["seed"],
        subset=cfg["subset"],
    )
    make_dir(out_dir)
    if not resume:
        setup = dict(
            cfg=cfg, optimizers=list(optimizers), overrides=overrides, sweeps=sweeps, target_acc=target_acc
        )
        write_text(out_dir / "compare.json", json.dumps(setup, indent=2) + "\n")
    runs: dict[str, list[dict[str, Any]]] = {}
    for o in optimizers:
        lams = sweeps.get(o) or [None]
        runs[o] = []
        for lam in lams:
            sub = {**cfg, "optimizer": o, **overrides.get(o, {})}
            if lam is not None:
                sub["lam"] = lam
            if not cfg["quiet"]:
                echo(f"== {o}" + ("" if lam is None else f" λ={lam:g}"))
            run_dir = out_dir / o if lam is None else out_dir / o / f"lam{lam:g}"
            quiet = {"quiet": True, "progress": cfg["progress"] and not cfg["quiet"]}
            if resume and checkpoint.exists(run_dir, 1):
                r = run_train({"resume": str(run_dir), **quiet}, data, run_dir, summary_table=False)
            else:
                r = run_train({**sub, **quiet}, data, run_dir, summary_table=False)
            runs[o].append(r)
            if not cfg["quiet"]:
                echo(
                    f"   val {_pct(r['val_acc'])}  group sparsity {_pct(r['group_sparsity'])}  "
                    f"weighted {_pct(r['weighted_group_sparsity'])}  last change epoch {r['last_pattern_change']}  "
                    f"{r['total_time_s']:.1f}s"
                )
    # matched accuracy: per optimizer, the sweep run with the highest group sparsity whose accuracy
    # reaches the target (default: the lowest of the optimizers' best accuracies, minus 1 point)
    target = target_acc
    if target is None and any(len(v) > 1 for v in runs.values()):
        target = min(max(r["val_acc"] for r in v) for v in runs.values()) - 0.01
    results = {}
    for o, v in runs.items():
        ok = [r for r in v if target is None or r["val_acc"] >= target]
        results[o] = max(ok, key=lambda r: r["group_sparsity"]) if ok else max(v, key=lambda r: r["val_acc"])
    sweep_table = None
    if any(len(v) > 1 for v in runs.values()):
        srows = [
            [
                o,
                f"{r['hparams']['lam']:g}",
                _pct(r["val_acc"]),
                _pct(r["group_sparsity"]),
                _pct(r["weighted_group_sparsity"]),
                r["last_pattern_change"],
                "←" if r is results[o] else "",
            ]
            for o, v in runs.items()
            for r in v
        ]
        sweep_table = _md_table(
            ["optimizer", "λ", "val acc", "group sparsity", "weighted", "last change", "selected"], srows
        )
    header = ["optimizer", "lr", "λ", "validation accuracy", "group sparsity", "weighted group sparsity"]
    has_kernel = any(r.get("kernel_sparsity") is not None for r in results.values())
    if has_kernel:
        header.append("kernel sparsity")
    header += ["last pattern change (epoch)", "step (ms)", "time (s)"]
    rows = []
    for o, r in results.items():
        row = [
            o,
            f"{r['hparams']['lr']:g}",
            "-" if r["hparams"].get("lam") is None else f"{r['hparams']['lam']:g}",
        ]
        row += [_pct(r["val_acc"]), _pct(r["group_sparsity"]), _pct(r["weighted_group_sparsity"])]
        if has_kernel:
            row.append(_pct(r.get("kernel_sparsity")))
        row += [r["last_pattern_change"], f"{r['mean_step_ms']:.2f}", f"{r['total_time_s']:.1f}"]
        rows.append(row)
    table = _md_table(header, rows)
    title = f"{cfg['dataset']} / {cfg['model']}, {cfg['epochs']} epochs, milestones {cfg['milestones']}"
    if target is not None:
        title += f"; per-optimizer λ: the sparsest run with validation accuracy ≥ {100 * target:.2f} %"
    extra_md = "" if sweep_table is None else f"\n\nλ sweep:\n\n{sweep_table}\n"
    write_text(out_dir / "table.md", f"{title}\n\n{table}\n{extra_md}")
    summary = {o: {k: v for k, v in r.items() if k != "history"} for o, r in results.items()}
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if cfg["plot"]:
        _plot_compare(results, out_dir, title, cfg["epochs"])
    echo(f"\n{title}\n\n{table}{extra_md}")
    return results


def _parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for it in items:
        try:
            lhs, val = it.split("=", 1)
            opt, key = lhs.split(".", 1)
        except ValueError as e:
            raise CLIError(f"--set: expected OPTIMIZER.KEY=VALUE, got {it!r}") from e
        if key not in ("lr", "lam", "momentum", "eps", "weight_decay", "solver", "kappa", "nu"):
            raise CLIError(
                f"--set: unknown key {key!r} (lr, lam, momentum, eps, weight_decay, solver, kappa, nu)"
            )
        try:
            v: Any = val if key == "solver" else float(val)
        except ValueError as e:
            raise CLIError(f"--set: {it!r}: value is not a number") from e
        out.setdefault(opt, {})[key] = v
    return out


def _parse_lams(items: Sequence[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for it in items:
        try:
            opt, vals = it.split("=", 1)
            lams = [float(v) for v in vals.split(",") if v.strip()]
        except ValueError as e:
            raise CLIError(f"--lams: expected OPTIMIZER=λ1,λ2,..., got {it!r}") from e
        if not lams or any(not (math.isfinite(v) and v >= 0) for v in lams):
            raise CLIError(f"--lams: expected nonnegative λ values, got {it!r}")
        out[opt.strip()] = lams
    return out


def cmd_compare(ns: argparse.Namespace) -> int:
    if ns.resume:
        return _resume_compare(ns)
    cfg = _cfg(ns)
    opts = [o.strip() for o in ns.optimizers.split(",") if o.strip()]
    if not opts:
        raise CLIError("--optimizers: empty list")
    if all(o in OPTIMIZERS for o in opts):  # else run_compare names the unknown one
        check_flags_used(cfg, opts)
    if ns.target_acc is not None and not (math.isfinite(ns.target_acc) and 0 < ns.target_acc <= 100):
        raise CLIError(f"--target-acc: expected an accuracy in (0, 100] (% or fraction), got {ns.target_acc}")
    name = ns.run_name or f"compare-{ns.dataset}-{ns.model}-s{ns.seed}"
    out_dir = _run_dir(ns.out, name, unique=ns.run_name is None, create=False)
    sets, lams = _parse_sets(ns.set or []), _parse_lams(ns.lams or [])
    with _threads(ns.threads, ns.dataset):
        target = None if ns.target_acc is None else ns.target_acc / (100 if ns.target_acc > 1 else 1)
        run_compare(cfg, opts, sets, out_dir, sweeps=lams, target_acc=target)
    return 0


def _resume_compare(ns: argparse.Namespace) -> int:
    out_dir = Path(ns.resume)
    path = out_dir / "compare.json"
    if not path.is_file():
        raise CLIError(f"--resume: {out_dir} is not a folder of structsparse compare (no compare.json)")
    setup = json.loads(path.read_text())
    cfg = {**setup["cfg"], "quiet": ns.quiet, "progress": ns.progress, "plot": ns.plot}
    with _threads(ns.threads, cfg["dataset"]):
        run_compare(
            cfg,
            setup["optimizers"],
            setup["overrides"],
            out_dir,
            sweeps=setup["sweeps"],
            target_acc=setup["target_acc"],
            resume=True,
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="several optimizers, same budget: table, sparsity and stability plots",
        description="Train several optimizers on one task with the same budget and compare them: a "
        "table (validation accuracy, group sparsities, last epoch the zero pattern changed), sparsity "
        "and accuracy versus epochs, and the structure-stability figure. With --lams each optimizer is "
        "reported at its sparsest λ reaching the target accuracy.",
    )
    _add_common(p, with_optimizer=False)
    p.add_argument(
        "--optimizers",
        default="rmda,ramda,proxsgd,proxgen,proxssi",
        help="comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="OPT.KEY=VALUE",
        help="per-optimizer setting, e.g. rmda.lam=2e-3 (repeatable)",
    )
    p.add_argument(
        "--lams",
        action="append",
        metavar="OPT=L1,L2,...",
        help="λ sweep for one optimizer (repeatable); each optimizer is then reported at its sparsest λ "
        "reaching the target accuracy",
    )
    p.add_argument(
        "--target-acc",
        type=float,
        default=None,
        help="accuracy (%% or fraction) for the λ selection (default: lowest per-optimizer best − 1 point)",
    )
    p.set_defaults(func=cmd_compare)
