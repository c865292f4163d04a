"""The ``structsparse`` command: train a model and see its structure; reproduce the papers' claims.

Subcommands (``structsparse <cmd> --help`` for all flags):

- ``train``: train one model with one optimizer; per-epoch log (JSON lines or CSV), a PNG of
  validation accuracy and structured sparsity versus epochs, a final table.
- ``identify``: the RMDA paper's synthetic structure-identification experiment (§5.1, Fig. 1):
  ground-truth group-sparse models, data labeled by them, every regularized optimizer run on them;
  per epoch the fraction of the true zero/nonzero group pattern recovered and the training error.
- ``compare``: several optimizers on one task with the same budget: a table like the papers'
  Table 1, sparsity and accuracy versus epochs, and the structure-stability figure.

Outputs go to ``runs/<run-name>/`` under the current directory, or under ``--out DIR``.
Bad input gives a one-line error on stderr and exit code 2.

Extending: optimizers are rows of :data:`OPTIMIZERS` (see :class:`OptimizerSpec`) and subcommands
rows of :data:`SUBCOMMANDS`; a new optimizer (e.g. DessiLBI, whose structure is read from its Γ
tensors) or a new subcommand (e.g. ``ticket``) is one entry there, without touching the rest.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import structsparse as ss

from .data import DATASETS, DataError, Dataset, ground_truth_linear, load_dataset
from .distributed import broadcast_buffers, exit_process, init_from_env, rank_slice, shard_model
from .metrics import zero_groups
from .models import MODELS, build_model


class CLIError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSpec:
    """One row of the optimizer table.

    ``build(param_groups, hp)`` returns the optimizer; ``hp`` holds ``lr``, ``momentum``, ``eps``,
    ``solver``, ``weight_decay`` and ``backend`` (already merged with ``defaults``).
    ``regularized``: takes ``regularizer=`` in its param groups (``group_params``); otherwise a dense
    baseline (``torch.optim``) whose sparsity is measured on the model with ``--grouping``.
    ``dual_averaging``: stepped by :class:`structsparse.RestartScheduler` (restarts, c ramp);
    the others' lr is scaled at milestones (ProxSGD/ProxGen/ProxSSI by the same scheduler, dense
    baselines by ``torch.optim.lr_scheduler.MultiStepLR``).
    ``structure`` (optional): ``structure(optimizer, model)`` returns the ``(name, tensor, grouping)``
    triples whose zero pattern is the selected structure; default: the regularized parameters.
    An inverse-scale-space method such as DessiLBI (issue 6) sets it to read its ``Γ`` tensors.

    ``defaults`` are tuned for the short runs on the embedded ``digits`` data (a minute on two CPU
    cores); the papers' long-run values are in SPEC.md §10.
    """

    name: str
    build: Callable[[list[dict[str, Any]], dict[str, Any]], torch.optim.Optimizer]
    regularized: bool
    dual_averaging: bool
    defaults: dict[str, Any]
    structure: Callable[[torch.optim.Optimizer, nn.Module], list[tuple[str, Tensor, Any]]] | None = None
    help: str = ""
    #: optional ``epoch_metrics(optimizer, model, evaluate)`` → extra per-epoch log columns, where
    #: ``evaluate(model)`` returns the validation accuracy of a model (DessiLBI: sparsity of Γ and
    #: the accuracy of the sparse network ``W ⊙ 1[Γ ≠ 0]``).
    epoch_metrics: (
        Callable[[torch.optim.Optimizer, nn.Module, Callable[[nn.Module], float]], dict[str, Any]] | None
    ) = None


def _build_rmda(groups, hp):
    return ss.RMDA(groups, lr=hp["lr"], momentum=hp["momentum"], backend=hp["backend"])


def _build_ramda(groups, hp):
    return ss.RAMDA(
        groups,
        lr=hp["lr"],
        momentum=hp["momentum"],
        eps=hp["eps"],
        solver=hp["solver"],
        backend=hp["backend"],
    )


def _build_proxsgd(groups, hp):
    return ss.ProxSGD(groups, lr=hp["lr"], momentum=hp["momentum"], backend=hp["backend"])


def _build_proxgen(groups, hp):
    return ss.ProxGen(
        groups, lr=hp["lr"], weight_decay=hp["weight_decay"], solver=hp["solver"], backend=hp["backend"]
    )


def _build_proxssi(groups, hp):
    return ss.ProxSSI(groups, lr=hp["lr"], weight_decay=hp["weight_decay"], backend=hp["backend"])


def _build_dessilbi(groups, hp):
    return ss.DessiLBI(
        groups,
        lr=hp["lr"],
        kappa=hp["kappa"],
        nu=hp["nu"],
        momentum=hp["momentum"],
        weight_decay=hp["weight_decay"],
        backend=hp["backend"],
        magnitude_scaling=bool(hp.get("magnitude_scaling", False)),
    )


def _dessilbi_structure(opt: torch.optim.Optimizer, model: nn.Module) -> list[tuple[str, Tensor, Any]]:
    """DessiLBI's selected structure is the support of Γ (not of W, which stays dense). Before the
    first step Γ does not exist yet: an all-zero stand-in (the support starts empty)."""
    out = []
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        reg = g.get("regularizer")
        if reg is None:
            continue
        for p in g["params"]:
            gm = opt.state.get(p, {}).get("gamma")
            out.append((names.get(id(p), "?"), gm if gm is not None else torch.zeros_like(p), reg.grouping))
    return out


def _dessilbi_metrics(opt, model, evaluate) -> dict[str, Any]:
    """Sparsity of Γ and the validation accuracy of ``W ⊙ 1[Γ ≠ 0]``, evaluated on the model
    itself, masked in place and restored exactly (:func:`structsparse.lbi.masked`: no copy of the
    model, so FSDP2-sharded models under torchrun work too)."""
    from . import lbi

    mask = lbi.masks(model, opt, "weight")
    gamma_sparsity = lbi.gamma_sparsity(model, opt)
    with lbi.masked(model, mask):
        sparse_acc = evaluate(model)
    return {"gamma_sparsity": gamma_sparsity, "sparse_val_acc": sparse_acc}


def _build_sgd(groups, hp):
    return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


def _build_adamw(groups, hp):
    return torch.optim.AdamW(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])


_COMMON = dict(eps=None, solver="pg", weight_decay=0.0, kappa=None, nu=None)

#: The optimizer table. To add one, add a row (see ``dessilbi``: its structure is read from the Γ
#: tensors and it logs extra per-epoch columns); ``train`` and ``compare`` pick it up (their
#: ``--optimizer`` choices come from this table).
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "rmda": OptimizerSpec(
        "rmda",
        _build_rmda,
        True,
        True,
        dict(_COMMON, lr=0.1, momentum=0.9, lam=1e-3),
        help="RMDA (ss.RMDA)",
    ),
    "ramda": OptimizerSpec(
        "ramda",
        _build_ramda,
        True,
        True,
        dict(_COMMON, lr=1e-2, momentum=0.9, lam=1e-3, eps=1e-6, solver="exact"),
        help="RAMDA (ss.RAMDA)",
    ),
    "proxsgd": OptimizerSpec(
        "proxsgd",
        _build_proxsgd,
        True,
        False,
        dict(_COMMON, lr=0.1, momentum=0.9, lam=1e-3),
        help="proximal SGD with momentum (ss.ProxSGD)",
    ),
    "proxgen": OptimizerSpec(
        "proxgen",
        _build_proxgen,
        True,
        False,
        dict(_COMMON, lr=1e-3, momentum=None, lam=1e-3),
        help="ProxGen, AdamW base (ss.ProxGen)",
    ),
    "proxssi": OptimizerSpec(
        "proxssi",
        _build_proxssi,
        True,
        False,
        dict(_COMMON, lr=1e-3, momentum=None, lam=3e-5),
        help="ProxSSI (ss.ProxSSI)",
    ),
    "dessilbi": OptimizerSpec(
        "dessilbi",
        _build_dessilbi,
        True,
        False,
        dict(_COMMON, lr=0.1, momentum=0.9, lam=0.05, kappa=1.0, nu=10.0),
        structure=_dessilbi_structure,
        epoch_metrics=_dessilbi_metrics,
        help="DessiLBI (ss.DessiLBI); structure = support of Γ; λ is the threshold of Ω_λ",
    ),
    "sgd": OptimizerSpec(
        "sgd",
        _build_sgd,
        False,
        False,
        dict(_COMMON, lr=0.1, momentum=0.9, lam=None),
        help="dense torch.optim.SGD",
    ),
    "adamw": OptimizerSpec(
        "adamw",
        _build_adamw,
        False,
        False,
        dict(_COMMON, lr=1e-3, momentum=None, lam=None),
        help="dense AdamW",
    ),
}

REGULARIZERS = ("group_lasso", "l1", "sparse_group_lasso", "group_mcp", "mcp", "nuclear", "none")
GROUPINGS = ("input", "output", "kernel", "element")


def make_regularizer(name: str, lam: float, grouping: str, omega: float) -> ss.Regularizer | None:
    if name == "none":
        return None
    if name == "group_lasso":
        return ss.GroupLasso(lam, grouping=grouping)
    if name == "l1":
        return ss.L1(lam)
    if name == "sparse_group_lasso":
        return ss.SparseGroupLasso(lam, lam, grouping=grouping)
    if name == "group_mcp":
        return ss.GroupMCP(lam, omega, grouping=grouping)
    if name == "mcp":
        return ss.MCP(lam, omega)
    if name == "nuclear":
        return ss.NuclearNorm(lam)
    raise CLIError(f"--regularizer: unknown regularizer {name!r}; expected one of {', '.join(REGULARIZERS)}")


# ---------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"--device: invalid device {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {name!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: unsupported device type {dev.type!r}; expected cpu or cuda")
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _run_dir(base: str | None, name: str, unique: bool) -> Path:
    root = Path(base) if base else Path.cwd() / "runs"
    path = root / name
    if unique and path.exists():
        k = 1
        while (root / f"{name}-{k}").exists():
            k += 1
        path = root / f"{name}-{k}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out: cannot create {path}: {e.strerror}") from e
    return path


class _Log:
    """Per-epoch log written as JSON lines or CSV (flushed every row)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.f = open(path, "w", newline="")
        self.writer: csv.DictWriter | None = None

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.f.write(json.dumps(row) + "\n")
        else:
            if self.writer is None:
                self.writer = csv.DictWriter(self.f, fieldnames=list(row))
                self.writer.writeheader()
            self.writer.writerow(row)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(
        iterable, total=total, desc=desc, leave=False, unit="batch", file=sys.stderr, dynamic_ncols=True
    )


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(x: Any) -> str:
    return f"{100 * x:5.1f}%" if isinstance(x, float) else str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# structure of a trained model
# ---------------------------------------------------------------------------------------------


def _structure(
    spec: OptimizerSpec, opt: torch.optim.Optimizer, model: nn.Module, grouping: Any
) -> list[tuple[str, Tensor, Any]]:
    """``(name, tensor, grouping)`` of the tensors whose zero groups are the learned structure."""
    if spec.structure is not None:
        return spec.structure(opt, model)
    names = {id(p): n for n, p in model.named_parameters()}
    if spec.regularized:
        out = []
        for g in opt.param_groups:
            reg = g.get("regularizer")
            if reg is None or isinstance(reg, ss.NuclearNorm):
                continue
            out += [(names.get(id(p), "?"), p, reg.grouping) for p in g["params"]]
        return out
    from .grouping import fits
    from .params import regularizable_weights

    return [(n, p, grouping) for n, p in regularizable_weights(model) if fits(grouping, p.shape)]


def _sparsities(struct: list[tuple[str, Tensor, Any]], model: nn.Module) -> dict[str, float]:
    from .grouping import group_view

    zero = total = wzero = wtotal = 0
    for _, p, gr in struct:
        z = zero_groups(p, gr)
        a, _, b = group_view(gr, p.shape)
        zero += int(z.sum())
        total += z.numel()
        wzero += int(z.sum()) * a * b
        wtotal += p.numel()
    out = {
        "group_sparsity": zero / total if total else 0.0,
        "weighted_group_sparsity": wzero / wtotal if wtotal else 0.0,
        "unstructured_sparsity": ss.unstructured_sparsity(model),
    }
    if any(p.dim() >= 3 for _, p, _ in struct):
        out["kernel_sparsity"] = ss.kernel_sparsity([p for _, p, _ in struct])
    return out


def _pattern(struct: list[tuple[str, Tensor, Any]]) -> list[Tensor]:
    return [zero_groups(p, gr).cpu() for _, p, gr in struct]


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

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
    milestones=[10, 20],
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
)


class _threads:
    """Set torch's intra-op thread count for the duration of a run (restored afterwards).

    ``None`` (auto): one thread for the small embedded/synthetic data sets, where the tensors are
    too small for intra-op parallelism to pay and a busy machine makes spinning threads very slow;
    torch's default otherwise."""

    def __init__(self, n: int | None, dataset: str) -> None:
        self.n = n if n is not None else (1 if dataset in ("digits", "synthetic") else None)

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def resolve_hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    """Merge the optimizer's defaults with the values given in ``cfg`` (``None`` = default)."""
    spec = OPTIMIZERS[cfg["optimizer"]]
    hp = dict(spec.defaults)
    for k in ("lr", "momentum", "eps", "solver", "weight_decay", "lam", "kappa", "nu"):
        if cfg.get(k) is not None:
            hp[k] = cfg[k]
    hp["backend"] = cfg["backend"]
    return hp


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> tuple[float, float]:
    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(y), bs):
            out = model(x[i : i + bs])
            loss += float(nn.functional.cross_entropy(out, y[i : i + bs], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + bs]).sum())
    n = max(len(y), 1)
    return loss / n, correct / n


def _evaluate_sharded(
    model: nn.Module, x: Tensor, y: Tensor, bs: int, rank: int, world: int
) -> tuple[float, float]:
    """:func:`_evaluate` data-parallel: each rank scores its share of ``(x, y)`` (the same number
    of forward calls on every rank: FSDP2 all-gathers inside each), loss and hits are all-reduced;
    the global result on every rank."""
    import torch.distributed as dist

    if world == 1:
        return _evaluate(model, x, y, bs)
    mine = rank_slice(len(y), rank, world)
    xs, ys = x[mine], y[mine]
    model.eval()
    tot = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, -(-len(y) // world), bs):  # ceil(n/world): the largest share
            out = model(xs[i : i + bs])
            tot[0] += float(nn.functional.cross_entropy(out, ys[i : i + bs], reduction="sum"))
            tot[1] += int((out.argmax(1) == ys[i : i + bs]).sum())
    dist.all_reduce(tot)
    n = max(len(y), 1)
    return float(tot[0]) / n, float(tot[1]) / n


def _full_state_dict(model: nn.Module, world: int) -> dict[str, Tensor]:
    """The model's state_dict as full CPU tensors (gathered from the FSDP2 shards on rank 0 —
    a collective — when ``world > 1``; other ranks get an empty dict)."""
    if world == 1:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _init_parallel(cfg: dict[str, Any]) -> tuple[int, int]:
    """``(rank, world)``; under ``torchrun`` (``WORLD_SIZE > 1``) joins the gloo process group and
    checks that the configuration can be trained data-parallel with FSDP2."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if cfg["device"] not in ("auto", "cpu"):
        raise CLIError(
            f"--device {cfg['device']!r}: data-parallel training under torchrun runs on CPU (gloo); "
            "use --device cpu"
        )
    return init_from_env("gloo")


def _silent(_msg: str) -> None:
    """``echo`` of the ranks other than 0."""


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _all_reduce_sum(*xs: float) -> tuple[float, ...]:
    import torch.distributed as dist

    t = torch.tensor(xs, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(float(v) for v in t)


def _check_train_cfg(cfg: dict[str, Any]) -> None:
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
    if cfg["batch_size"] < 1:
        raise CLIError(f"--batch-size: expected a positive batch size, got {cfg['batch_size']}")
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


def run_train(
    cfg: dict[str, Any],
    data: Dataset | None = None,
    out_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model as ``cfg`` says (keys of :data:`TRAIN_DEFAULTS`); write the log, plot and
    summary under ``out_dir`` and return the summary dict."""
    cfg = {**TRAIN_DEFAULTS, **cfg}
    _check_train_cfg(cfg)
    # under torchrun (WORLD_SIZE > 1): FSDP2 data parallelism, rank 0 prints and writes
    rank, world = _init_parallel(cfg)
    lead = rank == 0
    if not lead:
        echo = _silent
    spec = OPTIMIZERS[cfg["optimizer"]]
    hp = resolve_hparams(cfg)
    dev = _pick_device("cpu" if world > 1 else cfg["device"])
    torch.manual_seed(cfg["seed"])
    if data is None:
        for turn in (True, False) if world > 1 else (True,):  # rank 0 downloads first
            if lead == turn or world == 1:
                data = load_dataset(
                    cfg["dataset"],
                    cfg["data_dir"],
                    download_missing=cfg["download"] and lead,
                    seed=cfg["seed"],
                    subset=cfg["subset"],
                )
            if world > 1:
                _barrier()
    assert data is not None
    model = build_model(cfg["model"], data.input_shape, data.num_classes).to(dev)
    if world > 1:
        # the same initial model on every rank (same seed), then each rank keeps its dim-0 shards
        shard_model(model)
    if spec.regularized:
        if cfg["regularizer"] == "none":
            reg = None
        else:
            reg = make_regularizer(cfg["regularizer"], float(hp["lam"]), cfg["grouping"], float(cfg["omega"]))
        try:
            groups = ss.group_params(model, reg)
        except ValueError as e:
            raise CLIError(f"--grouping {cfg['grouping']!r} with --model {cfg['model']!r}: {e}") from e
    else:
        from .grouping import fits
        from .params import regularizable_weights

        if not any(fits(cfg["grouping"], p.shape) for _, p in regularizable_weights(model)):
            raise CLIError(
                f"--grouping {cfg['grouping']!r}: model {cfg['model']!r} has no layer with such groups"
            )
        groups = [{"params": list(model.parameters())}]
        hp["lam"] = None
    opt = spec.build(groups, hp)
    if spec.regularized:
        sched: Any = ss.RestartScheduler(opt, cfg["milestones"], cfg["gamma"], ramp=cfg["ramp"])
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg["milestones"], cfg["gamma"])

    if lead:
        out_dir = out_dir or _run_dir(
            cfg["out"],
            cfg["run_name"] or f"{cfg['dataset']}-{cfg['model']}-{cfg['optimizer']}-s{cfg['seed']}",
            unique=cfg["run_name"] is None,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in cfg.items() if k not in ("quiet", "progress")}
        config["hparams"] = {k: v for k, v in hp.items()}
        config["data"] = repr(data)
        config["world_size"] = world
        (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        log: _Log | None = _Log(out_dir / f"log.{cfg['log_format']}", cfg["log_format"])
    else:
        log = None

    xt, yt = data.x_train.to(dev), data.y_train.to(dev)
    xv, yv = data.x_val.to(dev), data.y_val.to(dev)
    bs, n = cfg["batch_size"], len(yt)
    nb = math.ceil(n / bs)
    gen = torch.Generator().manual_seed(cfg["seed"])
    struct = _structure(spec, opt, model, cfg["grouping"])
    prev_pattern = _pattern(struct)
    last_change, history = 0, []
    step_total, steps_total = 0.0, 0
    quiet = cfg["quiet"]
    if not quiet:
        hps = ", ".join(f"{k}={hp[k]}" for k in ("lr", "momentum", "lam") if hp.get(k) is not None)
        par = f"; FSDP2 data-parallel over {world} ranks (gloo)" if world > 1 else ""
        echo(f"{data!r}; model {cfg['model']}; {spec.name} ({hps}){par}; output {out_dir}")
    if spec.dual_averaging and cfg["ramp"] == "sqrt" and not quiet:
        c0 = 1.0 - float(hp["momentum"])
        after = nb * (cfg["epochs"] - (cfg["milestones"][-1] if cfg["milestones"] else cfg["epochs"]))
        if c0 < 1 and c0 * math.sqrt(max(after, 0)) < 1:
            echo(
                f"note: c = 1 − momentum ramps to 1 only {math.ceil(1 / c0**2)} iterations after the last "
                f"milestone, and this run has {after}: W will hold no exact zeros (add epochs or milestones)"
            )
    t_start = time.perf_counter()
    for epoch in range(1, cfg["epochs"] + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(dev)
        loss_sum = correct = 0.0
        step_time = 0.0
        it = _progress(
            range(nb), nb, f"epoch {epoch}/{cfg['epochs']}", cfg["progress"] and not quiet and lead
        )
        for b in it:
            idx = perm[b * bs : (b + 1) * bs]  # the global batch (same permutation on every rank)
            nglob = len(idx)
            if world > 1:
                idx = idx[rank_slice(nglob, rank, world)]  # this rank's share
            x, y = xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            out = model(x)
            if world > 1:
                # sum over my share · world / B: FSDP2 averages gradients over ranks, which gives
                # the gradient of the global batch mean; the logged loss is this rank's share
                loss = nn.functional.cross_entropy(out, y, reduction="sum") * (world / nglob)
            else:
                loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            _sync(dev)
            s0 = time.perf_counter()
            opt.step()
            _sync(dev)
            step_time += time.perf_counter() - s0
            if spec.regularized:
                sched.step_iteration()
            loss_sum += loss.item() * (nglob / world if world > 1 else len(y))
            correct += int((out.argmax(1) == y).sum())
        sched.step()
        if world > 1:
            loss_sum, correct = _all_reduce_sum(loss_sum, correct)
            broadcast_buffers(model)  # BatchNorm statistics: rank 0's, as DDP
        val_loss, val_acc = _evaluate_sharded(model, xv, yv, 1024, rank, world)
        if spec.structure is not None:  # e.g. Γ tensors, created at the first step
            struct = _structure(spec, opt, model, cfg["grouping"])
        pattern = _pattern(struct)
        changed = any(not torch.equal(a, b) for a, b in zip(pattern, prev_pattern))
        if changed:
            last_change = epoch
        prev_pattern = pattern
        sp = _sparsities(struct, model)
        extra = {}
        if spec.epoch_metrics is not None:
            extra = spec.epoch_metrics(
                opt, model, lambda m: _evaluate_sharded(m, xv, yv, 1024, rank, world)[1]
            )
        step_total += step_time
        steps_total += nb
        g0 = opt.param_groups[0]
        row = {
            "epoch": epoch,
            "lr": g0["lr"],
            "c": (1.0 - g0["momentum"]) if spec.dual_averaging else None,
            "train_loss": loss_sum / n,
            "train_acc": correct / n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            **sp,
            **extra,
            "pattern_changed": changed,
            "epoch_time": time.perf_counter() - t0,
            "step_time_ms": 1e3 * step_time / nb,
        }
        if log is not None:
            log.write(row)
        history.append(row)
        if not quiet:
            echo(
                f"epoch {epoch:3d}/{cfg['epochs']}  loss {row['train_loss']:.4f}  train {100 * row['train_acc']:5.1f}%  "
                f"val {100 * val_acc:5.1f}%  group sparsity {100 * sp['group_sparsity']:5.1f}%  "
                f"weighted {100 * sp['weighted_group_sparsity']:5.1f}%  "
                + "".join(f"{k.replace('_', ' ')} {_fmt(v)}  " for k, v in extra.items())
                + f"{row['epoch_time']:.1f}s"
            )
    if log is not None:
        log.close()
    total_time = time.perf_counter() - t_start

    layers = []
    for name, p, gr in struct:
        z = zero_groups(p, gr)
        layers.append(
            {
                "layer": name,
                "shape": list(p.shape),
                "grouping": str(gr),
                "kept": int((~z).sum()),
                "groups": z.numel(),
            }
        )
    last = history[-1]
    summary = {
        "run_dir": str(out_dir),
        "optimizer": spec.name,
        "model": cfg["model"],
        "dataset": data.name,
        "epochs": cfg["epochs"],
        "world_size": world,
        "hparams": {k: v for k, v in hp.items() if k != "backend"},
        "val_acc": last["val_acc"],
        "train_loss": last["train_loss"],
        "group_sparsity": last["group_sparsity"],
        "weighted_group_sparsity": last["weighted_group_sparsity"],
        "kernel_sparsity": last.get("kernel_sparsity"),
        "unstructured_sparsity": last["unstructured_sparsity"],
        "last_pattern_change": last_change,
        "mean_step_ms": 1e3 * step_total / max(steps_total, 1),
        "total_time_s": total_time,
        "layers": layers,
        **{k: last[k] for k in extra},
    }
    model_sd = _full_state_dict(model, world) if cfg["save_model"] else None  # collective
    if lead:
        assert out_dir is not None
        if model_sd is not None:
            torch.save(model_sd, out_dir / "model.pt")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        table = _train_table(summary)
        (out_dir / "summary.md").write_text(table + "\n")
        if cfg["plot"]:
            _plot_train(history, out_dir / "curves.png", f"{data.name} / {cfg['model']} / {spec.name}")
        if not quiet:
            echo(table)
    return {**summary, "history": history}


def _train_table(s: dict[str, Any]) -> str:
    rows = [
        ("validation accuracy", _pct(s["val_acc"])),
        ("group sparsity", _pct(s["group_sparsity"])),
        ("weighted group sparsity", _pct(s["weighted_group_sparsity"])),
    ]
    if s.get("kernel_sparsity") is not None:
        rows.append(("kernel sparsity", _pct(s["kernel_sparsity"])))
    rows += [
        ("unstructured sparsity", _pct(s["unstructured_sparsity"])),
    ]
    if s.get("gamma_sparsity") is not None:  # DessiLBI: the sparsities above are Γ's
        rows += [
            ("sparsity of Γ (zero entries)", _pct(s["gamma_sparsity"])),
            ("validation accuracy of W ⊙ 1[Γ ≠ 0]", _pct(s["sparse_val_acc"])),
        ]
    rows += [
        ("last epoch the zero pattern changed", s["last_pattern_change"]),
        ("mean optimizer step", f"{s['mean_step_ms']:.2f} ms"),
        ("total time", f"{s['total_time_s']:.1f} s"),
    ]
    t1 = _md_table(["metric", "value"], rows)
    t2 = _md_table(
        ["layer", "shape", "grouping", "kept groups"],
        [
            (x["layer"], "×".join(map(str, x["shape"])), x["grouping"], f"{x['kept']}/{x['groups']}")
            for x in s["layers"]
        ],
    )
    return f"{t1}\n\n{t2}"


def _plot_train(history: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = _plt()
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(ep, [100 * r["val_acc"] for r in history], label="validation")
    ax[0].plot(ep, [100 * r["train_acc"] for r in history], "--", label="training")
    ax[0].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax[0].legend()
    ax[1].plot(ep, [100 * r["group_sparsity"] for r in history], label="group")
    ax[1].plot(ep, [100 * r["weighted_group_sparsity"] for r in history], label="weighted group")
    if "kernel_sparsity" in history[-1]:
        ax[1].plot(ep, [100 * r["kernel_sparsity"] for r in history], ":", label="kernel")
    ax[1].set(xlabel="epoch", ylabel="sparsity (%)", title="structured sparsity")
    ax[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


def run_compare(
    cfg: dict[str, Any],
    optimizers: Sequence[str],
    overrides: dict[str, dict[str, Any]],
    out_dir: Path,
    echo=print,
    sweeps: dict[str, list[float]] | None = None,
    target_acc: float | None = None,
):
    """Run every optimizer on one task with the same budget. ``sweeps[o]``: λ values to try for
    ``o``; then each optimizer is represented by its sweep run with the highest group sparsity among
    those reaching ``target_acc`` (default: the lowest of the optimizers' best accuracies − 1 point),
    i.e. the table compares sparsity at matched accuracy."""
    for o in optimizers:
        if o not in OPTIMIZERS:
            raise CLIError(
                f"--optimizers: unknown optimizer {o!r}; expected names from {', '.join(OPTIMIZERS)}"
            )
    for o in overrides:
        if o not in optimizers:
            raise CLIError(f"--set: optimizer {o!r} is not in --optimizers")
    cfg = {**TRAIN_DEFAULTS, **cfg}
    _check_train_cfg({**cfg, "optimizer": optimizers[0]})
    data = load_dataset(
        cfg["dataset"],
        cfg["data_dir"],
        download_missing=cfg["download"],
        seed=cfg["seed"],
        subset=cfg["subset"],
    )
    sweeps = sweeps or {}
    for o in sweeps:
        if o not in optimizers:
            raise CLIError(f"--lams: optimizer {o!r} is not in --optimizers")
        if not OPTIMIZERS[o].regularized:
            raise CLIError(f"--lams: {o!r} is a dense baseline without λ")
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
            r = run_train(
                {**sub, "quiet": True, "progress": cfg["progress"] and not cfg["quiet"]},
                data,
                out_dir / o if lam is None else out_dir / o / f"lam{lam:g}",
            )
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
    (out_dir / "table.md").write_text(f"{title}\n\n{table}\n{extra_md}")
    summary = {o: {k: v for k, v in r.items() if k != "history"} for o, r in results.items()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg["plot"]:
        _plot_compare(results, out_dir, title, cfg["epochs"])
    if not cfg["quiet"]:
        echo(f"\n{title}\n\n{table}{extra_md}")
    return results


def _plot_compare(results: dict[str, dict[str, Any]], out_dir: Path, title: str, epochs: int) -> None:
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for o, r in results.items():
        ep = [h["epoch"] for h in r["history"]]
        ax[0].plot(ep, [100 * h["group_sparsity"] for h in r["history"]], label=o)
        ax[1].plot(ep, [100 * h["weighted_group_sparsity"] for h in r["history"]], label=o)
        ax[2].plot(ep, [100 * h["val_acc"] for h in r["history"]], label=o)
    ax[0].set(xlabel="epoch", ylabel="%", title="group sparsity")
    ax[1].set(xlabel="epoch", ylabel="%", title="weighted group sparsity")
    ax[2].set(xlabel="epoch", ylabel="%", title="validation accuracy")
    ax[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_dir / "sparsity_vs_epochs.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(results)))
    names = list(results)
    for i, o in enumerate(names):
        ch = [h["epoch"] for h in results[o]["history"] if h["pattern_changed"]]
        ax.scatter(ch, [i] * len(ch), marker="|", s=120, color="tab:gray")
        last = results[o]["last_pattern_change"]
        ax.scatter([last], [i], marker="o", color="tab:red", zorder=3)
        ax.annotate(f"{last}", (last, i), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, epochs + 1)
    ax.set(xlabel="epoch", title="epochs where the zero pattern changed (red: last change)")
    fig.tight_layout()
    fig.savefig(out_dir / "stability.png", dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# identify (RMDA paper §5.1, Fig. 1)
# ---------------------------------------------------------------------------------------------

#: per-optimizer settings of the identification runs (the four regularized optimizers compared
#: with RMDA use fixed-stage lr decay only; RMDA/RAMDA restart at each milestone and ramp c → 1).
IDENTIFY_HP: dict[str, dict[str, Any]] = {
    "rmda": dict(lr=0.1, momentum=0.9),
    "ramda": dict(lr=0.05, momentum=0.9),
    "proxsgd": dict(lr=0.1, momentum=0.9),
    "proxgen": dict(lr=1e-2),
    "proxssi": dict(lr=1e-2),
}
#: per-problem overrides: on the conv net RMDA's lr 0.1 (→ 1e-3 after the milestones) does not reach
#: the regularized stationary point in 30 epochs (ends at 54.5 % of its pattern, training error below
#: the stationary point's); lr 0.5, 1 and 2 all reach 100 % (measured, docs/cli/identify.md).
IDENTIFY_HP_PROBLEM: dict[str, dict[str, dict[str, Any]]] = {"conv": {"rmda": dict(lr=1.0)}}


@dataclass
class IdentifyProblem:
    """A ground-truth model, its data, and how to build a fresh trainable copy near it."""

    name: str
    x: Tensor
    y: Tensor
    truth: list[tuple[Tensor, Any]]  # (ground-truth tensor, grouping)
    make_model: Callable[[], nn.Module]
    weights: Callable[[nn.Module], list[Tensor]]
    extra: dict[str, Any] = field(default_factory=dict)


def linear_problem(n: int, d: int, classes: int, zero: int, seed: int) -> IdentifyProblem:
    """Multinomial logistic regression on ``x ~ N(0, I_d)`` labeled by a linear model whose
    columns are group-sparse (``zero`` of the ``d`` input features are irrelevant); ``n ≫ d``."""
    w, b = ground_truth_linear(d, classes, zero, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x @ w.T + b).argmax(1)

    def make():
        torch.manual_seed(seed + 2)
        m = nn.Linear(d, classes)
        with torch.no_grad():
            m.weight.mul_(0.1)
        return m

    return IdentifyProblem(
        "logistic regression", x.float(), y, [(w.float(), "input")], make, lambda m: [m.weight]
    )


class _ConvNet(nn.Module):
    """One convolutional layer, tanh, one fully connected layer (the RMDA paper's small NN)."""

    def __init__(self, cin: int, cout: int, hw: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.fc = nn.Linear(cout * hw * hw, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def conv_problem(
    n: int,
    seed: int,
    cin: int = 6,
    cout: int = 4,
    hw: int = 2,
    classes: int = 3,
    noise: float = 0.05,
    norm: float = 3.0,
) -> IdentifyProblem:
    """A small conv net whose conv layer ignores half its input channels and whose FC layer ignores
    half its input features; every nonzero input-wise group has norm ``norm``. The data are labeled by
    it with *soft* labels, the ground truth's class probabilities (cross-entropy against them), so the
    model is well specified: the ground truth minimizes the unregularized loss exactly, and with a
    moderate λ the regularized problem's stationary point near it keeps its zero/nonzero group pattern
    (verified by :func:`stationary_point`). Training starts at the ground truth plus
    ``noise``·N(0, 1) (the paper starts all methods close to the ground truth)."""
    g = torch.Generator().manual_seed(seed)
    truth = _ConvNet(cin, cout, hw, classes)
    with torch.no_grad():
        for p in truth.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        truth.conv.bias.mul_(0.1)
        truth.fc.bias.mul_(0.1)
        cw, fw = truth.conv.weight, truth.fc.weight
        cw.div_(cw.pow(2).sum((0, 2, 3), keepdim=True).sqrt()).mul_(norm)
        fw.div_(fw.norm(dim=0, keepdim=True)).mul_(norm)
        cw[:, torch.randperm(cin, generator=g)[: cin // 2]] = 0
        fw[:, torch.randperm(fw.shape[1], generator=g)[: fw.shape[1] // 2]] = 0
    x = torch.randn(n, cin, hw, hw, generator=g)
    with torch.no_grad():
        y = truth(x).softmax(1)
    state = {k: v.clone() for k, v in truth.state_dict().items()}

    def make():
        m = _ConvNet(cin, cout, hw, classes)
        gg = torch.Generator().manual_seed(seed + 3)
        with torch.no_grad():
            m.load_state_dict(state)
            for p in m.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gg))
        return m

    tw = [(truth.conv.weight.detach().clone(), "input"), (truth.fc.weight.detach().clone(), "input")]
    return IdentifyProblem("convolutional network", x, y, tw, make, lambda m: [m.conv.weight, m.fc.weight])


def pattern_correctness(weights: Sequence[Tensor], truth: Sequence[tuple[Tensor, Any]]) -> float:
    """Fraction of groups whose zero/nonzero status equals the ground truth's."""
    ok = total = 0
    for w, (t, gr) in zip(weights, truth):
        a, b = zero_groups(w, gr), zero_groups(t, gr)
        ok += int((a == b).sum())
        total += a.numel()
    return ok / total


def pattern_agreement(weights: Sequence[Tensor], reference: Sequence[Tensor]) -> float:
    """Fraction of ``"input"`` groups whose zero/nonzero status equals ``reference`` (bool per group)."""
    ok = total = 0
    for w, b in zip(weights, reference):
        a = zero_groups(w, "input")
        ok += int((a == b).sum())
        total += a.numel()
    return ok / total


def _functional_forward(model: nn.Module, x: Tensor) -> Callable[..., Tensor]:
    """A float64 functional forward of the identification models over fixed data (the conv layer as
    one GEMM over the unfolded input: ~4x faster than ``nn.Conv2d`` in float64 on a CPU)."""
    if isinstance(model, nn.Linear):
        return lambda w, b: x @ w.T + b
    if isinstance(model, _ConvNet):
        n, cin, hh, ww = x.shape
        k = model.conv.kernel_size[0]
        cols = nn.functional.unfold(x, k, padding=model.conv.padding[0])  # [n, cin·k·k, hh·ww]
        cols = cols.permute(1, 0, 2).reshape(cin * k * k, -1).contiguous()

        def fwd(cw, cb, fw, fb):
            co = cw.shape[0]
            h = torch.tanh(cw.reshape(co, -1) @ cols + cb[:, None])
            return h.view(co, n, hh * ww).transpose(0, 1).reshape(n, co * hh * ww) @ fw.T + fb

        return fwd
    raise TypeError(f"no functional forward for {type(model).__name__}")


@dataclass
class StationaryPoint:
    """The reference of the identification experiment: a stationary point of
    ``mean CE + Σ_layers λ Σ_g w_g ‖W_g‖`` found by a full-batch float64 solve."""

    zero: list[Tensor]  # per regularized tensor, bool per group: zero at the stationary point
    iterations: int
    objective: float
    residual: float  # ‖x − prox(x − ∇f/L)‖·L at the end (0 at a stationary point)
    zero_margin: float  # max over zero groups of ‖∇_g f‖/(λ w_g) (< 1: strictly inside the zero set)
    min_nonzero_norm: float  # smallest nonzero group norm
    agreement_with_truth: float  # pattern correctness of the stationary point w.r.t. the generating truth
    train_error: float
    seconds: float


def stationary_point(
    prob: IdentifyProblem, lam: float, max_iters: int = 3000, tol: float = 1e-9
) -> StationaryPoint:
    """Accelerated proximal gradient (FISTA, backtracking, adaptive restart), float64, full batch,
    started at the common start point ``prob.make_model()``, stopped when the prox-gradient residual
    is below ``tol``. Its zero/nonzero group pattern is the reference every optimizer is measured
    against (computed once per instance; the regularized problem's own stationary structure)."""
    t0 = time.perf_counter()
    model = prob.make_model().double()
    params = list(model.parameters())
    wid = {id(w) for w in prob.weights(model)}
    mask = [id(p) in wid for p in params]
    x = prob.x.double()
    y = prob.y if prob.y.dtype == torch.long else prob.y.double()
    fwd = _functional_forward(model, x)
    reg = ss.GroupLasso(lam, grouping="input")
    ce = nn.functional.cross_entropy

    def f(vals):
        with torch.no_grad():
            return float(ce(fwd(*vals), y))

    def fg(vals):
        vs = [v.detach().requires_grad_() for v in vals]
        loss = ce(fwd(*vs), y)
        return float(loss.detach()), [g.detach() for g in torch.autograd.grad(loss, vs)]

    def r(vals):
        return sum(float(reg.value(v)) for v, m in zip(vals, mask) if m)

    def prox(vals, step):
        return [reg.prox(v, step) if m else v for v, m in zip(vals, mask)]

    xk = [p.detach().clone() for p in params]
    yk = [v.clone() for v in xk]
    tk, lip, res, it = 1.0, 1.0, float("inf"), 0
    fprev = f(xk) + r(xk)
    for k in range(1, max_iters + 1):
        it = k
        fy, gy = fg(yk)
        while True:
            xn = prox([a - b / lip for a, b in zip(yk, gy)], 1.0 / lip)
            d = [a - b for a, b in zip(xn, yk)]
            fx = f(xn)
            quad = sum(float((a * b).sum()) for a, b in zip(gy, d)) + lip / 2 * sum(
                float((a * a).sum()) for a in d
            )
            if fx <= fy + quad + 1e-14:
                break
            lip *= 2
        res = lip * math.sqrt(sum(float((a * a).sum()) for a in d))
        fnew = fx + r(xn)
        if fnew > fprev:  # adaptive restart of the momentum
            tk, yk = 1.0, [v.clone() for v in xk]
            continue
        tn = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
        yk = [a + (tk - 1) / tn * (a - b) for a, b in zip(xn, xk)]
        xk, tk, fprev, lip = xn, tn, fnew, lip / 1.2
        if res < tol:
            break
    _, g = fg(xk)
    zero, margin, min_nz = [], 0.0, float("inf")
    for v, gv, m in zip(xk, g, mask):
        if not m:
            continue
        z = zero_groups(v, "input")
        gcount = z.numel()
        dims = _group_dims(v)
        norms = v.pow(2).sum(dims).sqrt().reshape(-1)
        gnorm = gv.pow(2).sum(dims).sqrt().reshape(-1) / (lam * math.sqrt(v.numel() / gcount))
        zero.append(z)
        if z.any():
            margin = max(margin, float(gnorm[z].max()))
        if (~z).any():
            min_nz = min(min_nz, float(norms[~z].min()))
    ws = [v for v, m in zip(xk, mask) if m]
    yl = y if y.dtype == torch.long else y.argmax(1)
    with torch.no_grad():
        err = float((fwd(*xk).argmax(1) != yl).double().mean())
    return StationaryPoint(
        zero,
        it,
        fprev,
        res,
        margin,
        min_nz,
        pattern_correctness(ws, prob.truth),
        err,
        time.perf_counter() - t0,
    )


def _group_dims(w: Tensor) -> tuple[int, ...]:
    """Dims over which an ``"input"`` group's norm is taken (SPEC §1)."""
    return (0,) if w.dim() == 2 else (0,) + tuple(range(2, w.dim()))


def run_identify_one(
    prob: IdentifyProblem,
    opt_name: str,
    lam: float,
    epochs: int,
    milestones: Sequence[int],
    batch_size: int,
    seed: int,
    backend: str = "auto",
    hp: dict[str, Any] | None = None,
    gamma: float = 0.1,
    reference: Sequence[Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train ``opt_name`` on ``prob``; per epoch the pattern correctness (w.r.t. ``reference``, the
    stationary point's zero groups, when given; else w.r.t. the generating ground truth), the
    agreement with the generating ground truth, and the training error."""
    spec = OPTIMIZERS[opt_name]
    model = prob.make_model()
    reg = ss.GroupLasso(lam, grouping="input")
    wts = {id(p) for p in prob.weights(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in wts], "regularizer": reg},
        {"params": [p for p in model.parameters() if id(p) not in wts], "regularizer": None},
    ]
    h = {**spec.defaults, **IDENTIFY_HP.get(opt_name, {}), **(hp or {}), "backend": backend}
    opt = spec.build(groups, h)
    sched = ss.RestartScheduler(opt, milestones, gamma, ramp="sqrt")
    gen = torch.Generator().manual_seed(seed)
    n = len(prob.y)
    ylab = prob.y if prob.y.dtype == torch.long else prob.y.argmax(1)
    out = []
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(prob.x[idx]), prob.y[idx]).backward()
            opt.step()
            sched.step_iteration()
        sched.step()
        with torch.no_grad():
            err = float((model(prob.x).argmax(1) != ylab).float().mean())
        ws = prob.weights(model)
        truth_c = pattern_correctness(ws, prob.truth)
        out.append(
            {
                "epoch": epoch,
                "correctness": truth_c if reference is None else pattern_agreement(ws, reference),
                "truth_correctness": truth_c,
                "train_error": err,
            }
        )
    return out


IDENTIFY_OPTIMIZERS = ("rmda", "ramda", "proxsgd", "proxgen", "proxssi")


def run_identify(args: dict[str, Any], out_dir: Path, echo=print) -> dict[str, Any]:
    opts = args["optimizers"]
    for o in opts:
        if o not in OPTIMIZERS or not OPTIMIZERS[o].regularized:
            raise CLIError(
                f"--optimizers: {o!r} is not a regularized optimizer; expected names from {', '.join(IDENTIFY_OPTIMIZERS)}"
            )
    ms = args["milestones"]
    if any(m <= 0 for m in ms) or ms != sorted(set(ms)) or (ms and ms[-1] >= args["epochs"]):
        raise CLIError(f"--milestones: expected increasing positive epochs before the last epoch, got {ms}")
    problems = []
    if "linear" in args["problems"]:
        problems.append(
            (
                "linear",
                linear_problem(
                    args["n"], args["features"], args["classes"], (3 * args["features"]) // 4, args["seed"]
                ),
                args["lam"],
            )
        )
    if "conv" in args["problems"]:
        problems.append(("conv", conv_problem(args["n"], args["seed"]), args["lam_conv"]))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    refs: dict[str, dict[str, Any]] = {}
    for key, prob, lam in problems:
        results[key] = {}
        sp = stationary_point(prob, lam, max_iters=args["ref_iters"])
        refs[key] = {k: v for k, v in sp.__dict__.items() if k != "zero"}
        refs[key]["nonzero_groups"] = [(~z).int().tolist() for z in sp.zero]
        if not args["quiet"]:
            echo(
                f"{prob.name}: reference pattern = stationary point of CE + λ·group LASSO (λ {lam:g}), "
                f"float64 full-batch FISTA from the common start, {sp.iterations} its, residual "
                f"{sp.residual:.1e}, max ‖∇_g f‖/(λw_g) on zero groups {sp.zero_margin:.3f}, "
                f"min nonzero group norm {sp.min_nonzero_norm:.3f}; agreement with the generating ground "
                f"truth {_pct(sp.agreement_with_truth)}; training error {_pct(sp.train_error)} "
                f"({sp.seconds:.1f}s)"
            )
        for o in opts:
            t0 = time.perf_counter()
            hist = run_identify_one(
                prob,
                o,
                lam,
                args["epochs"],
                ms,
                args["batch_size"],
                args["seed"],
                args["backend"],
                hp=IDENTIFY_HP_PROBLEM.get(key, {}).get(o),
                reference=sp.zero,
            )
            results[key][o] = hist
            if not args["quiet"]:
                echo(
                    f"{prob.name:22s} {o:8s} final pattern correctness {_pct(hist[-1]['correctness']):>9s}  "
                    f"training error {_pct(hist[-1]['train_error']):>8s}  ({time.perf_counter() - t0:.1f}s)"
                )
    rows = []
    for key, prob, lam in problems:
        for o in opts:
            h = results[key][o]
            exact_from = None
            for r in reversed(h):
                if r["correctness"] < 1.0:
                    break
                exact_from = r["epoch"]
            rows.append(
                [
                    prob.name,
                    o,
                    f"{lam:g}",
                    _pct(h[-1]["correctness"]),
                    _pct(max(r["correctness"] for r in h)),
                    "-" if exact_from is None else exact_from,
                    _pct(h[-1]["train_error"]),
                ]
            )
    header = [
        "problem",
        "optimizer",
        "λ",
        "final pattern correctness (vs stationary point)",
        "best",
        "exact from epoch (to the end)",
        "final training error",
    ]
    table = _md_table(header, rows)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "identify.json").write_text(
        json.dumps({"config": args, "reference": refs, "results": results}, indent=2, default=str) + "\n"
    )
    if args["plot"]:
        _plot_identify(results, {k: p.name for k, p, _ in problems}, out_dir / "identify.png")
    if not args["quiet"]:
        echo("\n" + table)
    return results


def _plot_identify(results, names, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
    for ax, (key, res) in zip(axes[0], results.items()):
        ax2 = ax.twinx()
        for i, (o, h) in enumerate(res.items()):
            col = f"C{i}"
            ep = [r["epoch"] for r in h]
            ax.plot(ep, [100 * r["correctness"] for r in h], color=col, label=f"{o} (pattern)")
            ax2.plot(
                ep, [100 * r["train_error"] for r in h], "--", color=col, alpha=0.6, label=f"{o} (error)"
            )
        ax.set(xlabel="epoch", ylabel="group pattern correctness (%)", title=names[key], ylim=(0, 102))
        ax2.set_ylabel("training error (%) (dashed)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------


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
    g.add_argument("--eps", type=float, default=None, help="RAMDA ε (default 1e-6)")
    g.add_argument(
        "--solver", choices=("pg", "exact"), default=None, help="RAMDA/ProxGen subproblem solver (default pg)"
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="ProxGen/ProxSSI/DessiLBI/dense baselines (default 0)",
    )
    g.add_argument("--kappa", type=float, default=None, help="DessiLBI damping κ (default 1)")
    g.add_argument("--nu", type=float, default=None, help="DessiLBI coupling ν (default 10)")
    g.add_argument("--epochs", type=int, default=d["epochs"], help="default: %(default)s")
    g.add_argument(
        "--milestones",
        type=_milestones,
        default=d["milestones"],
        help="epochs of lr decay + restart, e.g. 10,20 (default: 10,20; 'none')",
    )
    g.add_argument(
        "--gamma", type=float, default=d["gamma"], help="lr factor at each milestone (default: %(default)s)"
    )
    g.add_argument(
        "--ramp",
        type=_ramp,
        default=d["ramp"],
        help="c ramp of RMDA/RAMDA: sqrt (after the last milestone), geometric, none",
    )
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="default: %(default)s")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--device", default=d["device"], help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument(
        "--backend",
        default=d["backend"],
        choices=("auto", "reference", "cpu", "triton", "cuda"),
        help="structsparse backend",
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
    g.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG plots")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no per-epoch lines")


def _cfg(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k in TRAIN_DEFAULTS}


def cmd_train(ns: argparse.Namespace) -> int:
    """Train one model and report its structure. Under ``torchrun`` (``WORLD_SIZE > 1``) the model
    is sharded with FSDP2 on CPU (gloo) and each rank takes its share of every global batch; rank 0
    prints and writes the outputs; accuracy and structure are global."""
    import torch.distributed as dist

    try:
        with _threads(ns.threads, ns.dataset):
            run_train(_cfg(ns))
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_available() and dist.is_initialized():
        exit_process()  # rank 0 has written and closed its outputs
    return 0


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
    cfg = _cfg(ns)
    opts = [o.strip() for o in ns.optimizers.split(",") if o.strip()]
    if not opts:
        raise CLIError("--optimizers: empty list")
    name = ns.run_name or f"compare-{ns.dataset}-{ns.model}-s{ns.seed}"
    out_dir = _run_dir(ns.out, name, unique=ns.run_name is None)
    with _threads(ns.threads, ns.dataset):
        target = None if ns.target_acc is None else ns.target_acc / (100 if ns.target_acc > 1 else 1)
        run_compare(
            cfg,
            opts,
            _parse_sets(ns.set or []),
            out_dir,
            sweeps=_parse_lams(ns.lams or []),
            target_acc=target,
        )
    return 0


def cmd_identify(ns: argparse.Namespace) -> int:
    args = {k: v for k, v in vars(ns).items() if k != "func"}
    args["optimizers"] = [o.strip() for o in ns.optimizers.split(",") if o.strip()]
    args["problems"] = [p.strip() for p in ns.problems.split(",") if p.strip()]
    for p in args["problems"]:
        if p not in ("linear", "conv"):
            raise CLIError(f"--problems: unknown problem {p!r}; expected linear and/or conv")
    for k in ("n", "features", "classes", "epochs", "batch_size", "threads"):
        if k == "threads" and args[k] is None:
            continue
        if args[k] < 1 or (k == "features" and args[k] < 2) or (k == "classes" and args[k] < 2):
            raise CLIError(f"--{k.replace('_', '-')}: invalid value {args[k]}")
    torch.manual_seed(ns.seed)
    out_dir = _run_dir(ns.out, ns.run_name or f"identify-s{ns.seed}", unique=ns.run_name is None)
    with _threads(ns.threads, "synthetic"):
        run_identify(args, out_dir)
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train one model and report its structure", description=cmd_train.__doc__
    )
    _add_common(p, with_optimizer=True)
    p.add_argument(
        "--save-model",
        action="store_true",
        help="also write model.pt (the trained state_dict, gathered to full tensors under torchrun)",
    )
    p.set_defaults(func=cmd_train)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="several optimizers, same budget: table, sparsity and stability plots")
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


def _add_identify(sub) -> None:
    p = sub.add_parser("identify", help="synthetic structure identification (RMDA paper §5.1, Fig. 1)")
    p.add_argument("--problems", default="linear,conv", help="linear and/or conv (default: %(default)s)")
    p.add_argument("--optimizers", default=",".join(IDENTIFY_OPTIMIZERS), help="default: %(default)s")
    p.add_argument("--n", type=int, default=4000, help="training examples (default: %(default)s)")
    p.add_argument(
        "--features", type=int, default=32, help="logistic regression input features (default: %(default)s)"
    )
    p.add_argument(
        "--classes", type=int, default=3, help="logistic regression classes (default: %(default)s)"
    )
    p.add_argument(
        "--lam",
        type=float,
        default=2e-2,
        help="group LASSO weight, logistic regression (default: %(default)s)",
    )
    p.add_argument(
        "--lam-conv", type=float, default=1.5e-3, help="group LASSO weight, conv net (default: %(default)s)"
    )
    p.add_argument(
        "--ref-iters",
        type=int,
        default=3000,
        help="iterations of the full-batch float64 solve giving the reference pattern (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=30, help="default: %(default)s")
    p.add_argument("--milestones", type=_milestones, default=[10, 20], help="default: 10,20")
    p.add_argument(
        "--gamma", type=float, default=0.1, help="lr factor at each milestone (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "cpu", "triton", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1)")
    p.add_argument("--out", default=None, metavar="DIR")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_identify)


# ---------------------------------------------------------------------------------------------
# ticket (DessiLBI early "winning tickets", issue 6)
# ---------------------------------------------------------------------------------------------


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.replace(",", " ").split()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e


def _rewind(s: str) -> str | int:
    if s == "init":
        return s
    try:
        return int(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected 'init' or an epoch number, got {s!r}") from e


def run_ticket(args: dict[str, Any], out_dir: Path, echo=print) -> dict[str, Any]:
    """DessiLBI tickets (:func:`structsparse.lbi.winning_tickets`): masks ``1[Γ ≠ 0]`` at early
    epochs, rewind, retrain with SGD; versus random masks of the same per-layer sparsity."""
    from torch.utils.data import DataLoader, TensorDataset

    from . import lbi

    te = args["ticket_epochs"]
    if not te or min(te) < 1 or te != sorted(set(te)):
        raise CLIError(f"--ticket-epochs: expected increasing epochs >= 1, got {te}")
    lbi_epochs = args["lbi_epochs"] or max(te)
    if lbi_epochs < max(te):
        raise CLIError(f"--lbi-epochs: {lbi_epochs} is before the last ticket epoch {max(te)}")
    rw = args["rewind"]
    if rw != "init" and not 0 <= rw <= te[0]:
        raise CLIError(f"--rewind: expected 'init' or an epoch in [0, {te[0]}], got {rw}")
    for k in ("retrain_epochs", "batch_size"):
        if args[k] < 1:
            raise CLIError(f"--{k.replace('_', '-')}: expected a positive value, got {args[k]}")
    if args["model"] not in MODELS:
        raise CLIError(f"--model: unknown model {args['model']!r}; expected one of {', '.join(MODELS)}")
    dev = _pick_device(args["device"])
    data = load_dataset(
        args["dataset"],
        args["data_dir"],
        download_missing=args["download"],
        seed=args["seed"],
        subset=args["subset"],
    )
    torch.manual_seed(args["seed"])
    model = build_model(args["model"], data.input_shape, data.num_classes)
    gen = torch.Generator().manual_seed(args["seed"])
    train = DataLoader(
        TensorDataset(data.x_train, data.y_train), batch_size=args["batch_size"], shuffle=True, generator=gen
    )
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=1024)
    if not args["quiet"]:
        echo(
            f"{data!r}; model {args['model']}; DessiLBI lam={args['lam']} lr={args['lr']} kappa={args['kappa']} "
            f"nu={args['nu']} level={args['level']}; tickets at epochs {te}; output {out_dir}"
        )
    t0 = time.perf_counter()
    res = lbi.winning_tickets(
        model,
        train,
        val,
        ticket_epochs=te,
        lbi_epochs=lbi_epochs,
        retrain_epochs=args["retrain_epochs"],
        level=args["level"],
        rewind_to=rw,
        random_seeds=args["random_seeds"],
        retrain_lr=args["retrain_lr"],
        retrain_weight_decay=args["retrain_weight_decay"],
        device=dev,
        lam=args["lam"],
        lr=args["lr"],
        kappa=args["kappa"],
        nu=args["nu"],
        momentum=args["momentum"],
        magnitude_scaling=args["magnitude_scaling"],
        conv_grouping="output",
        backend=args["backend"],
    )
    elapsed = time.perf_counter() - t0
    res.pop("init_state", None)
    rows_lbi = [
        [h["epoch"], f"{h['loss']:.4f}", _pct(h["accuracy"]), _pct(h["gamma_sparsity"]), _pct(h["density"])]
        for h in res["lbi"]
    ]
    t_lbi = _md_table(
        ["epoch", "loss", "val acc (dense W)", "sparsity of Γ", f"mask density ({args['level']})"], rows_lbi
    )
    rows = [
        [
            t["epoch"],
            _pct(t["sparsity"]),
            _pct(t["density"]),
            _pct(t["accuracy"]),
            _pct(t["random_mean"]),
            " ".join(f"{100 * a:.1f}" for a in t["random_accuracy"]),
            " ".join(f"{100 * v:.1f}" for v in t["layers"].values()),
        ]
        for t in res["tickets"]
    ]
    layer_names = list(res["tickets"][0]["layers"]) if res["tickets"] else []
    t_tk = _md_table(
        [
            "ticket epoch",
            "sparsity",
            "density",
            "ticket acc (retrained)",
            "random mask acc (mean)",
            "random per seed",
            "kept % per layer (" + ", ".join(layer_names) + ")",
        ],
        rows,
    )
    dense = res["dense_accuracy"]
    text = (
        f"DessiLBI run ({lbi_epochs} epochs):\n\n{t_lbi}\n\n"
        f"Tickets: rewind to {rw}, retrained {args['retrain_epochs']} epochs with SGD (lr {args['retrain_lr']}); "
        f"dense network retrained the same way: {_pct(dense)}\n\n{t_tk}\n"
    )
    (out_dir / "table.md").write_text(text)
    (out_dir / "ticket.json").write_text(
        json.dumps({"config": args, "time_s": elapsed, **res}, indent=2, default=str) + "\n"
    )
    if args["plot"]:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        sp = [100 * t["sparsity"] for t in res["tickets"]]
        ax.plot(sp, [100 * t["accuracy"] for t in res["tickets"]], "o-", label="DessiLBI ticket")
        ax.plot(
            sp, [100 * t["random_mean"] for t in res["tickets"]], "s--", label="random mask, same sparsity"
        )
        for t in res["tickets"]:
            ax.annotate(f"ep {t['epoch']}", (100 * t["sparsity"], 100 * t["accuracy"]), fontsize=7)
        if dense is not None:
            ax.axhline(100 * dense, color="gray", ls=":", label="dense")
        ax.set(xlabel="sparsity (% of masked weights removed)", ylabel="validation accuracy (%)")
        ax.set_title(f"{data.name} / {args['model']}: early tickets", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "tickets.png", dpi=80)
        plt.close(fig)
    if not args["quiet"]:
        echo(f"\n{text}\n({elapsed:.1f} s)")
    return res


def cmd_ticket(ns: argparse.Namespace) -> int:
    args = {k: v for k, v in vars(ns).items() if k != "func"}
    name = ns.run_name or f"ticket-{ns.dataset}-{ns.model}-s{ns.seed}"
    out_dir = _run_dir(ns.out, name, unique=ns.run_name is None)
    with _threads(ns.threads, ns.dataset):
        run_ticket(args, out_dir)
    return 0


def _add_ticket(sub) -> None:
    p = sub.add_parser(
        "ticket",
        help="DessiLBI early winning tickets: masks of Γ at early epochs, rewind, retrain, vs random masks",
    )
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true")
    p.add_argument("--subset", type=int, default=None, metavar="N")
    p.add_argument("--model", default="lenet5", choices=MODELS, help="default: %(default)s")
    p.add_argument("--lam", type=float, default=0.05, help="threshold λ of Ω_λ (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="DessiLBI lr (default: %(default)s)")
    p.add_argument("--kappa", type=float, default=1.0, help="default: %(default)s")
    p.add_argument("--nu", type=float, default=10.0, help="default: %(default)s")
    p.add_argument("--momentum", type=float, default=0.9, help="default: %(default)s")
    p.add_argument("--magnitude-scaling", action="store_true", help="the paper's eq. 14-15 variant")
    p.add_argument(
        "--level", default="weight", choices=("weight", "filter", "group", "layer"), help="mask units"
    )
    p.add_argument(
        "--ticket-epochs",
        type=_ints,
        default=[2, 3, 4, 6],
        help="epochs whose masks are tickets (default 2,3,4,6)",
    )
    p.add_argument(
        "--lbi-epochs", type=int, default=None, help="DessiLBI epochs (default: last ticket epoch)"
    )
    p.add_argument("--retrain-epochs", type=int, default=8, help="default: %(default)s")
    p.add_argument(
        "--retrain-lr", type=float, default=0.05, help="SGD lr of the retraining (default: %(default)s)"
    )
    p.add_argument("--retrain-weight-decay", type=float, default=5e-4, help="default: %(default)s")
    p.add_argument("--rewind", type=_rewind, default="init", help="'init' or an early epoch (default: init)")
    p.add_argument("--random-seeds", type=_ints, default=[0, 1], help="random-mask seeds (default 0,1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "cpu", "triton", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on digits)")
    p.add_argument("--out", default=None, metavar="DIR")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_ticket)


#: The subcommand table: ``(add_parser(subparsers))`` per command. A new subcommand (e.g. ``ticket``
#: for DessiLBI's early-stopped winning tickets, issue 6) is one more function here.
SUBCOMMANDS: list[Callable[[Any], None]] = [_add_train, _add_identify, _add_compare, _add_ticket]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="structsparse", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--version", action="version", version=f"structsparse {ss.__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,identify,compare,ticket}")
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(f"structsparse: note: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``structsparse`` console script; returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    old = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and ns.command != "train":
            raise CLIError("only `structsparse train` runs data-parallel under torchrun (WORLD_SIZE > 1)")
        return ns.func(ns)
    except (CLIError, DataError, ValueError) as e:
        if os.environ.get("STRUCTSPARSE_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"structsparse {ns.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("structsparse: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = old


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
