"""Exact zeros from a plain training loop with torch's CosineAnnealingLR: train, then ``sparsify()``.

Trains the ``structsparse train`` main job's model (``--model mlp``, or ``lenet5``) on the embedded
digits data with the command's optimizer defaults, data split, batch order and seed, but with
``torch.optim.lr_scheduler.CosineAnnealingLR`` stepped every iteration instead of
:class:`structsparse.RestartScheduler`, then calls ``opt.sparsify()`` and reports validation accuracy
and group sparsity. ``--compare`` also runs the command's own RestartScheduler job for reference
(the table of docs/sparsity.md).

    PYTHONPATH=$PWD python examples/sparsify_digits.py --optimizer ramda
    PYTHONPATH=$PWD python examples/sparsify_digits.py --optimizer rmda --model lenet5 --compare
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import torch
from torch import nn

import structsparse as ss
from structsparse.data import load_dataset
from structsparse.models import build_model

#: the ``structsparse train`` main job's optimizers (its defaults on digits), group LASSO on the
#: input features of every Linear/Conv weight
OPTIMIZERS: dict[str, tuple[type, dict[str, Any], float]] = {
    "ramda": (ss.RAMDA, dict(lr=1e-2, momentum=0.9, eps=1e-6, solver="exact"), 1e-3),
    "rmda": (ss.RMDA, dict(lr=0.1, momentum=0.9), 1e-3),
    "proxsgd": (ss.ProxSGD, dict(lr=0.1, momentum=0.9), 1e-3),
}
EPOCHS, BATCH_SIZE, MILESTONES, GAMMA = 30, 64, [10, 20], 0.1


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(
    optimizer: str = "ramda",
    model_name: str = "mlp",
    schedule: str = "cosine",
    keep: str | None = None,
    epochs: int = EPOCHS,
    lam: float | None = None,
    seed: int = 0,
    backend: str = "auto",
) -> dict[str, Any]:
    """The main job with ``schedule="cosine"`` (CosineAnnealingLR stepped every iteration, to 0
    at the last step) or ``"restart"`` (RestartScheduler: milestones 10, 20, γ 0.1, sqrt ramp of
    c, as the command), then ``sparsify(keep)``. Returns validation accuracy and group sparsity
    before and after, the zero-group count, the model and the optimizer."""
    cls, hp, default_lam = OPTIMIZERS[optimizer]
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only cost
    torch.manual_seed(seed)
    data = load_dataset("digits", seed=seed)
    model = build_model(model_name, data.input_shape, data.num_classes)
    reg = ss.GroupLasso(default_lam if lam is None else lam, grouping="input")
    opt = cls(ss.group_params(model, reg), **hp, backend=backend)
    n = len(data.y_train)
    nb = math.ceil(n / BATCH_SIZE)
    if schedule == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * nb)
        per_iteration, per_epoch = sched.step, lambda: None
    elif schedule == "restart":
        sched = ss.RestartScheduler(opt, MILESTONES, GAMMA, ramp="sqrt")
        per_iteration, per_epoch = sched.step_iteration, sched.step
    else:
        raise ValueError(f"schedule: expected 'cosine' or 'restart', got {schedule!r}")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for b in range(nb):
            idx = perm[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            per_iteration()
        per_epoch()
    before = {
        "val_acc": accuracy(model, data.x_val, data.y_val),
        "group_sparsity": ss.group_sparsity(opt),
        "solution_group_sparsity": ss.group_sparsity(opt, of="solution"),
    }
    zero = opt.sparsify(keep)  # exact zeros: W moves onto the structure of W̃
    return {
        "optimizer": optimizer,
        "model": model_name,
        "schedule": schedule,
        "keep": keep or opt.default_keep,
        "before": before,
        "val_acc": accuracy(model, data.x_val, data.y_val),
        "group_sparsity": ss.group_sparsity(opt),
        "zero_groups": zero,
        "model_obj": model,
        "optimizer_obj": opt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizer", default="ramda", choices=list(OPTIMIZERS))
    ap.add_argument("--model", default="mlp", choices=["mlp", "lenet5"])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--lam", type=float, default=None, help="group LASSO weight (default: the main job's)")
    ap.add_argument("--keep", default=None, choices=["solution", "mask"])
    ap.add_argument("--compare", action="store_true", help="also run the RestartScheduler job")
    a = ap.parse_args()
    for schedule in ("cosine", "restart") if a.compare else ("cosine",):
        r = train(a.optimizer, a.model, schedule, a.keep, a.epochs, a.lam)
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("_obj")}))


if __name__ == "__main__":
    main()
