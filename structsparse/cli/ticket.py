"""``structsparse ticket``: DessiLBI's early winning tickets (:func:`structsparse.lbi.winning_tickets`)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .common import (
    CLIError,
    _md_table,
    _pct,
    _pick_device,
    _run_dir,
    _threads,
    check_backend,
    make_dir,
    save_figure,
    write_text,
)
from .data import DATASETS, load_dataset
from .models import MODELS, build_model
from .plotting import _plt


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

    from .. import lbi

    te = args["ticket_epochs"]
    if not te or min(te) < 1 or te != sorted(set(te)):
        raise CLIError(f"--ticket-epochs: expected increasing epochs >= 1, got {te}")
    lbi_epochs = args["lbi_epochs"] if args["lbi_epochs"] is not None else max(te)
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
    check_backend(args["backend"], args["device"])
    for k in ("lam", "lr", "kappa", "nu", "momentum", "retrain_lr", "retrain_weight_decay"):
        if not math.isfinite(args[k]):
            raise CLIError(f"--{k.replace('_', '-')}: expected a finite number, got {args[k]}")
    for k in ("retrain_lr", "retrain_weight_decay"):  # checked by SGD only after the DessiLBI run
        if args[k] < 0:
            raise CLIError(f"--{k.replace('_', '-')}: expected a value >= 0, got {args[k]}")
    if args.get("subset") is not None and args["subset"] < 1:
        raise CLIError(f"--subset: expected a positive number of examples, got {args['subset']}")
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
    make_dir(out_dir)
    write_text(out_dir / "table.md", text)
    write_text(
        out_dir / "ticket.json",
        json.dumps({"config": args, "time_s": elapsed, **res}, indent=2, default=str) + "\n",
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
        save_figure(fig, out_dir / "tickets.png", dpi=80)
        plt.close(fig)
    echo(f"{text}" if args["quiet"] else f"\n{text}\n({elapsed:.1f} s)")
    return res


def cmd_ticket(ns: argparse.Namespace) -> int:
    args = {k: v for k, v in vars(ns).items() if k != "func"}
    name = ns.run_name or f"ticket-{ns.dataset}-{ns.model}-s{ns.seed}"
    out_dir = _run_dir(ns.out, name, unique=ns.run_name is None, create=False)
    with _threads(ns.threads, ns.dataset):
        run_ticket(args, out_dir)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "ticket",
        help="DessiLBI early winning tickets: masks of Γ at early epochs, rewind, retrain, vs random masks",
        description="DessiLBI's early winning tickets: train with DessiLBI, take the masks 1[Γ ≠ 0] at "
        "early epochs, rewind the network (to its initialization or an early epoch), retrain the masked "
        "network with SGD, and compare with random masks of the same per-layer sparsity and with the "
        "dense network retrained the same way.",
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
    p.add_argument("-q", "--quiet", action="store_true", help="only the final tables")
    p.set_defaults(func=cmd_ticket)
