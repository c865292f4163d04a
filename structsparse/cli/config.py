"""The configuration of ``train`` and ``compare``: defaults, validation, and the flags both share."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .common import CLIError, check_backend
from .data import DATASETS
from .models import MODELS
from .optimizers import GROUPINGS, OPTIMIZERS, OPTION_KEYS, REGULARIZERS, make_regularizer, resolve_hparams

TRAIN_DEFAULTS: dict[str, Any] = dict(
    dataset="digits",
    data_dir="data",
    download=False,
    subset=None,
    model="mlp",
    optimizer="ramda",
    regularizer="group_lasso",
    grouping="input",
    lam=None,
    omega=4.0,
    lr=None,
    momentum=None,
    eps=None,
    solver=None,
    weight_decay=None,
    kappa=None,
    nu=None,
    epochs=30,
    milestones=None,  # None: at 1/3 and 2/3 of the epochs (see default_milestones)
    gamma=0.1,
    ramp="sqrt",
    batch_size=64,
    seed=0,
    device="auto",
    backend="auto",
    log_format="jsonl",
    out=None,
    run_name=None,
    threads=None,
    quiet=False,
    progress=True,
    plot=True,
    save_model=False,
    checkpoint_every=0,
    resume=None,
)

#: what ``--resume`` may change; every other setting is the saved run's
RESUME_KEYS = (
    "epochs",
    "checkpoint_every",
    "backend",
    "device",
    "threads",
    "quiet",
    "progress",
    "plot",
    "save_model",
    "out",
    "run_name",
    "resume",
)


def resume_config(run_dir: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a resumed run: the one saved in ``run_dir/config.json``, with the
    :data:`RESUME_KEYS` that ``given`` sets (to other than their defaults); any other setting in
    ``given`` that differs from both its default and the saved value is an error."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise CLIError(f"--resume: {run_dir} is not a run folder of structsparse train (no config.json)")
    saved = json.loads(path.read_text())
    cfg = {k: saved[k] for k in TRAIN_DEFAULTS if k in saved}
    for k, v in given.items():
        if k not in TRAIN_DEFAULTS or v == TRAIN_DEFAULTS[k]:
            continue
        if k in RESUME_KEYS:
            cfg[k] = v
        elif v != cfg.get(k):
            flag = "--" + k.replace("_", "-")
            raise CLIError(f"{flag}: {v!r} differs from the resumed run's {cfg.get(k)!r}; --resume keeps it")
    return cfg


def default_milestones(epochs: int) -> list[int]:
    """The milestones when none are given: at 1/3 and 2/3 of the run (10, 20 for 30 epochs), so the
    last stage is a third of the run whatever ``--epochs`` is; fewer for runs under 3 epochs."""
    return sorted({m for m in (epochs // 3, 2 * epochs // 3) if 0 < m < epochs})


def resolve_milestones(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``milestones`` filled in from ``epochs`` when not given (``None``)."""
    if cfg.get("milestones") is None:
        return {**cfg, "milestones": default_milestones(int(cfg["epochs"]))}
    return cfg


#: float flags that must be finite when given (their ranges are checked by the optimizers)
_FINITE = ("lam", "omega", "lr", "momentum", "eps", "weight_decay", "kappa", "nu", "gamma")


def _check_train_cfg(cfg: dict[str, Any]) -> None:
    """Validate a ``train`` configuration (with milestones resolved) before anything is created;
    raises :class:`CLIError` naming the flag."""
    if cfg["optimizer"] not in OPTIMIZERS:
        raise CLIError(
            f"--optimizer: unknown optimizer {cfg['optimizer']!r}; expected one of {', '.join(OPTIMIZERS)}"
        )
    if cfg["model"] not in MODELS:
        raise CLIError(f"--model: unknown model {cfg['model']!r}; expected one of {', '.join(MODELS)}")
    if cfg["dataset"] not in DATASETS:
        raise CLIError(
            f"--dataset: unknown data set {cfg['dataset']!r}; expected one of {', '.join(DATASETS)}"
        )
    if cfg["regularizer"] not in REGULARIZERS:
        raise CLIError(
            f"--regularizer: unknown regularizer {cfg['regularizer']!r}; expected one of {', '.join(REGULARIZERS)}"
        )
    if cfg["grouping"] not in GROUPINGS:
        raise CLIError(
            f"--grouping: unknown grouping {cfg['grouping']!r}; expected one of {', '.join(GROUPINGS)}"
        )
    if cfg.get("threads") is not None and cfg["threads"] < 1:
        raise CLIError(f"--threads: expected a positive thread count, got {cfg['threads']}")
    if cfg["epochs"] < 1:
        raise CLIError(f"--epochs: expected a positive number of epochs, got {cfg['epochs']}")
    if cfg["checkpoint_every"] < 0:
        raise CLIError(f"--checkpoint-every: expected a number of epochs >= 0, got {cfg['checkpoint_every']}")
    if cfg["batch_size"] < 1:
        raise CLIError(f"--batch-size: expected a positive batch size, got {cfg['batch_size']}")
    if cfg.get("subset") is not None and cfg["subset"] < 1:
        raise CLIError(f"--subset: expected a positive number of examples, got {cfg['subset']}")
    for k in _FINITE:
        v = cfg.get(k)
        if v is not None and not math.isfinite(float(v)):
            raise CLIError(f"--{k.replace('_', '-')}: expected a finite number, got {v}")
    if not cfg["gamma"] > 0:
        raise CLIError(f"--gamma: expected a factor > 0, got {cfg['gamma']}")
    if cfg.get("lam") is not None and cfg["lam"] < 0:
        raise CLIError(f"--lam: expected λ >= 0, got {cfg['lam']}")
    ms = cfg["milestones"]
    if any(m <= 0 for m in ms) or ms != sorted(set(ms)):
        raise CLIError(f"--milestones: expected increasing positive epochs, got {ms}")
    if (
        ms
        and ms[-1] >= cfg["epochs"]
        and cfg["ramp"] == "sqrt"
        and OPTIMIZERS[cfg["optimizer"]].dual_averaging
    ):
        raise CLIError(
            f"--milestones: the last milestone ({ms[-1]}) must come before the last epoch ({cfg['epochs']}) "
            "so the c ramp can reach 1"
        )
    if cfg["log_format"] not in ("jsonl", "csv"):
        raise CLIError(f"--log-format: expected jsonl or csv, got {cfg['log_format']!r}")
    if cfg["ramp"] not in ("sqrt", "geometric", None):
        raise CLIError(f"--ramp: expected sqrt, geometric or none, got {cfg['ramp']!r}")
    check_backend(cfg["backend"], cfg["device"], distributed=int(os.environ.get("WORLD_SIZE", "1")) > 1)
    _check_hparams(cfg)


def check_flags_used(cfg: dict[str, Any], optimizers: list[str]) -> None:
    """Refuse (:class:`CLIError`) an optimizer setting given in ``cfg`` that none of
    ``optimizers`` reads (``--solver`` with ``rmda``, ``--nu`` without ``dessilbi``, ``--lam``
    with only dense baselines or ``--regularizer none``): it would be ignored without a word."""
    specs = [OPTIMIZERS[o] for o in optimizers if o in OPTIMIZERS]
    names = ", ".join(optimizers)
    for k in OPTION_KEYS:
        if cfg.get(k) is None or any(s.options is None or k in s.options for s in specs):
            continue
        users = [o for o, s in OPTIMIZERS.items() if s.options is not None and k in s.options]
        raise CLIError(f"--{k.replace('_', '-')}: not used by {names} (used by {', '.join(users)})")
    if cfg.get("lam") is not None:
        if cfg.get("regularizer") == "none":
            raise CLIError("--lam: not used with --regularizer none")
        if not any(s.regularized for s in specs):
            raise CLIError(f"--lam: not used by {names} (dense, no regularizer)")


def _check_hparams(cfg: dict[str, Any]) -> None:
    """Build the optimizer on a stand-in parameter: its constructor's checks (lr, momentum, ε,
    solver and regularizer support, …) run before any output is created."""
    spec = OPTIMIZERS[cfg["optimizer"]]
    hp = resolve_hparams(cfg)
    p = torch.nn.Parameter(torch.zeros(2, 2))
    group: dict[str, Any] = {"params": [p]}
    if spec.regularized and cfg["regularizer"] != "none":
        lam = float(hp["lam"])
        group["regularizer"] = make_regularizer(cfg["regularizer"], lam, "input", float(cfg["omega"]))
    spec.build([group], hp)


def _milestones(s: str) -> list[int]:
    if s.strip().lower() in ("", "none"):
        return []
    try:
        return [int(v) for v in s.replace(",", " ").split()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {s!r}") from e


def _ramp(s: str) -> str | None:
    if s == "none":
        return None
    if s not in ("sqrt", "geometric"):
        raise argparse.ArgumentTypeError(f"expected sqrt, geometric or none, got {s!r}")
    return s


def _add_common(p: argparse.ArgumentParser, *, with_optimizer: bool) -> None:
    d = TRAIN_DEFAULTS
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--dataset", default=d["dataset"], choices=DATASETS, help="data set (default: %(default)s, embedded)"
    )
    g.add_argument(
        "--data-dir",
        default=d["data_dir"],
        help="where mnist/fashion-mnist/cifar files live (torchvision layout)",
    )
    g.add_argument("--download", action="store_true", help="download a missing data set (needs network)")
    g.add_argument("--subset", type=int, default=None, metavar="N", help="use only N training examples")
    g.add_argument("--model", default=d["model"], choices=MODELS, help="default: %(default)s")
    g = p.add_argument_group("optimization")
    if with_optimizer:
        g.add_argument(
            "--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS), help="default: %(default)s"
        )
    g.add_argument(
        "--regularizer", default=d["regularizer"], choices=REGULARIZERS, help="default: %(default)s"
    )
    g.add_argument(
        "--grouping",
        default=d["grouping"],
        choices=GROUPINGS,
        help="default: %(default)s (channel/column-wise)",
    )
    g.add_argument("--lam", type=float, default=None, help="regularization weight λ (default: per optimizer)")
    g.add_argument("--omega", type=float, default=d["omega"], help="ω of (group) MCP (default: %(default)s)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    g.add_argument(
        "--momentum", type=float, default=None, help="momentum; 1 − c for RMDA/RAMDA (default: per optimizer)"
    )
    g.add_argument("--eps", type=float, default=None, help="RAMDA ε (default: 1e-6)")
    g.add_argument(
        "--solver",
        choices=("auto", "pg", "exact"),
        default=None,
        help="subproblem solver of RAMDA and ProxGen: exact (screening and Newton on a group's norm; "
        "every regularizer but nuclear), pg (the papers' proximal gradient) or auto (exact where the "
        "regularizer has one, else pg) (default: auto for RAMDA; pg for ProxGen, the setting of the "
        "published comparisons in docs/cli.md)",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="ProxGen/ProxSSI/DessiLBI/dense baselines (default: 0)",
    )
    g.add_argument("--kappa", type=float, default=None, help="DessiLBI damping κ (default: 1)")
    g.add_argument(
        "--nu",
        type=float,
        default=None,
        help="DessiLBI coupling ν (default: 10, for the short digits runs; the library's DessiLBI "
        "default is 100)",
    )
    g.add_argument("--epochs", type=int, default=d["epochs"], help="default: %(default)s")
    g.add_argument(
        "--milestones",
        type=_milestones,
        default=d["milestones"],
        help="epochs of lr decay and restart, e.g. 10,20, or 'none' (default: at 1/3 and 2/3 of "
        "--epochs: 10,20 for 30 epochs)",
    )
    g.add_argument(
        "--gamma", type=float, default=d["gamma"], help="lr factor at each milestone (default: %(default)s)"
    )
    g.add_argument(
        "--ramp",
        type=_ramp,
        default=d["ramp"],
        help="c ramp of RMDA/RAMDA: sqrt (c = min(c₀·sqrt(i), 1), i = iterations after the last "
        "milestone), geometric (c ← min(c/γ, 1) at each milestone) or none (default: sqrt)",
    )
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="default: %(default)s")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--device", default=d["device"], help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument(
        "--backend",
        default=d["backend"],
        choices=("auto", "reference", "cpu", "triton", "cuda"),
        help="structsparse backend (default: auto, the fused kernels of the device, else reference)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on digits/synthetic, else torch's)",
    )
    g.add_argument("--log-format", default=d["log_format"], choices=("jsonl", "csv"))
    g.add_argument("--out", default=None, metavar="DIR", help="parent folder of the run (default: ./runs)")
    g.add_argument("--run-name", default=None)
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="save a checkpoint every N epochs and at the last one (default: 0, none)",
    )
    g.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoint, bit for bit, with its saved settings "
        "(--epochs may extend it); for compare, the comparison in RUN_DIR (finished runs are kept)",
    )
    g.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG plots")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar, no per-epoch lines (the final table is still printed)",
    )


def _cfg(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k in TRAIN_DEFAULTS}
