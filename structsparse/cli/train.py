"""``structsparse train``: one model, one optimizer; data-parallel with FSDP2 under ``torchrun``."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import structsparse as ss

from ..distributed import broadcast_buffers, exit_process, init_from_env, rank_slice, shard_model
from ..metrics import zero_groups
from . import checkpoint
from .common import (
    CLIError,
    _fmt,
    _Log,
    _md_table,
    _pct,
    _pick_device,
    _progress,
    _run_dir,
    _silent,
    _sync,
    _threads,
    save_torch,
    write_text,
)
from .config import (
    TRAIN_DEFAULTS,
    _add_common,
    _cfg,
    _check_train_cfg,
    check_flags_used,
    resolve_milestones,
    resume_config,
)
from .data import Dataset, load_dataset
from .models import build_model
from .optimizers import OPTIMIZERS, _pattern, _sparsities, _structure, make_regularizer, resolve_hparams
from .plotting import _plot_train


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


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _all_reduce_sum(*xs: float) -> tuple[float, ...]:
    import torch.distributed as dist

    t = torch.tensor(xs, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(float(v) for v in t)


def run_train(
    cfg: dict[str, Any],
    data: Dataset | None = None,
    out_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    summary_table: bool = True,
) -> dict[str, Any]:
    """Train one model as ``cfg`` says (keys of :data:`TRAIN_DEFAULTS`); write the log, plot and
    summary under ``out_dir`` and return the summary dict. ``cfg["quiet"]`` hides the progress
    and per-epoch lines; ``summary_table`` whether the final table is printed.

    ``cfg["checkpoint_every"] = N`` saves a checkpoint every N epochs and at the last one
    (:mod:`structsparse.cli.checkpoint`); ``cfg["resume"] = RUN_DIR`` continues that run from its
    checkpoint with its saved configuration (``cfg`` may change only :data:`RESUME_KEYS`; the
    other keys it gives must equal the saved ones), and a finished run just reports again."""
    if cfg.get("resume"):
        out_dir = Path(cfg["resume"])
        cfg = resume_config(out_dir, cfg)
    cfg = resolve_milestones({**TRAIN_DEFAULTS, **cfg})
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
        from ..grouping import fits
        from ..params import regularizable_weights

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

    gen = torch.Generator().manual_seed(cfg["seed"])
    start, book = 0, {"history": [], "last_change": 0, "step_total": 0.0, "steps_total": 0, "time": 0.0}
    if cfg["resume"]:
        assert out_dir is not None
        if not checkpoint.exists(out_dir, world):
            raise CLIError(f"--resume: no checkpoint in {out_dir} (train with --checkpoint-every N)")
        start, book = checkpoint.load(out_dir, model, opt, sched, gen, rank, world)
        if start > cfg["epochs"]:
            raise CLIError(f"--epochs: the checkpoint is of epoch {start}, after --epochs {cfg['epochs']}")
    if lead:
        out_dir = out_dir or _run_dir(
            cfg["out"],
            cfg["run_name"] or f"{cfg['dataset']}-{cfg['model']}-{cfg['optimizer']}-s{cfg['seed']}",
            unique=cfg["run_name"] is None,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in cfg.items() if k not in ("quiet", "progress", "resume")}
        config["hparams"] = {k: v for k, v in hp.items()}
        config["data"] = repr(data)
        config["world_size"] = world
        write_text(out_dir / "config.json", json.dumps(config, indent=2, default=str) + "\n")
        log_path = out_dir / f"log.{cfg['log_format']}"
        log: _Log | None = _Log(log_path, cfg["log_format"], keep=start if cfg["resume"] else None)
    else:
        log = None
    if world > 1 and cfg["checkpoint_every"]:
        import torch.distributed as dist

        box = [str(out_dir)]  # the run folder is named by rank 0; DCP writes into it from every rank
        dist.broadcast_object_list(box, src=0)
        out_dir = Path(box[0])

    xt, yt = data.x_train.to(dev), data.y_train.to(dev)
    xv, yv = data.x_val.to(dev), data.y_val.to(dev)
    bs, n = cfg["batch_size"], len(yt)
    nb = math.ceil(n / bs)
    struct = _structure(spec, opt, model, cfg["grouping"])
    prev_pattern = _pattern(struct)
    last_change, history = book["last_change"], list(book["history"])
    step_total, steps_total = book["step_total"], book["steps_total"]
    quiet = cfg["quiet"]
    if not quiet:
        hps = ", ".join(f"{k}={hp[k]}" for k in ("lr", "momentum", "lam") if hp.get(k) is not None)
        par = f"; FSDP2 data-parallel over {world} ranks (gloo)" if world > 1 else ""
        echo(f"{data!r}; model {cfg['model']}; {spec.name} ({hps}){par}; output {out_dir}")
    c0 = 1.0 - float(hp["momentum"]) if spec.dual_averaging else 1.0
    if c0 < 1 and cfg["ramp"] == "sqrt" and not quiet:
        if not cfg["milestones"]:
            echo(
                f"note: the sqrt ramp of c = 1 − momentum starts at the last milestone and this run has "
                f"none: c stays {c0:g} and W will hold no exact zeros (give --milestones, or --momentum 0)"
            )
        else:
            after = nb * (cfg["epochs"] - cfg["milestones"][-1])
            if c0 * math.sqrt(after) < 1:
                echo(
                    f"note: c = 1 − momentum ramps to 1 only {math.ceil(1 / c0**2)} iterations after the "
                    f"last milestone, and this run has {after}: W will hold no exact zeros (add epochs "
                    "or move the milestones earlier)"
                )
    elif c0 < 1 and cfg["ramp"] is None and not quiet:
        echo(f"note: --ramp none: c stays {c0:g} and W will hold no exact zeros (give --momentum 0)")
    if start and not quiet:
        echo(f"resumed from the checkpoint of epoch {start}")
    t_start = time.perf_counter() - book["time"]
    extra_keys = list(book.get("extra_keys", []))
    for epoch in range(start + 1, cfg["epochs"] + 1):
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
        extra_keys = list(extra)
        every = cfg["checkpoint_every"]
        if every and (epoch % every == 0 or epoch == cfg["epochs"]):
            assert out_dir is not None
            book = {
                "history": history,
                "last_change": last_change,
                "step_total": step_total,
                "steps_total": steps_total,
                "time": time.perf_counter() - t_start,
                "extra_keys": extra_keys,
            }
            checkpoint.save(out_dir, epoch, model, opt, sched, gen, book, rank, world)
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
        **{k: last[k] for k in extra_keys},
    }
    model_sd = _full_state_dict(model, world) if cfg["save_model"] else None  # collective
    if lead:
        assert out_dir is not None
        if model_sd is not None:
            save_torch(model_sd, out_dir / "model.pt")
        write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        table = _train_table(summary)
        write_text(out_dir / "summary.md", table + "\n")
        if cfg["plot"]:
            _plot_train(history, out_dir / "curves.png", f"{data.name} / {cfg['model']} / {spec.name}")
        if summary_table:
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


def cmd_train(ns: argparse.Namespace) -> int:
    """Train one model and report its structure. Under ``torchrun`` (``WORLD_SIZE > 1``) the model
    is sharded with FSDP2 on CPU (gloo) and each rank takes its share of every global batch; rank 0
    prints and writes the outputs; accuracy and structure are global."""
    import torch.distributed as dist

    cfg = _cfg(ns)
    if not ns.resume:  # a resumed run keeps its saved settings (resume_config checks the flags)
        check_flags_used(cfg, [cfg["optimizer"]])
    if ns.compact:
        cfg["save_model"] = True
    try:
        with _threads(ns.threads, ns.dataset):
            summary = run_train(cfg)
        if ns.compact and (not dist.is_initialized() or dist.get_rank() == 0):
            from .compact import compact_after_train

            compact_after_train(summary["run_dir"], ns.threads, ns.dataset, ns.quiet)
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_available() and dist.is_initialized():
        exit_process()  # rank 0 has written and closed its outputs
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one model and report its structure",
        description="Train one model with one optimizer and report its structure: a per-epoch log, "
        "accuracy and structured sparsity versus epochs, a final table. Under torchrun "
        "(WORLD_SIZE > 1) the model is sharded with FSDP2 on CPU (gloo); rank 0 prints and writes.",
    )
    _add_common(p, with_optimizer=True)
    p.add_argument(
        "--save-model",
        action="store_true",
        help="also write model.pt (the trained state_dict, gathered to full tensors under torchrun)",
    )
    p.add_argument(
        "--compact",
        action="store_true",
        help="also write the compact model (compact/ in the run folder; implies --save-model) and "
        "add its parameters, MACs and CPU latency to the summary (needs structsparse[compact])",
    )
    p.set_defaults(func=cmd_train)
