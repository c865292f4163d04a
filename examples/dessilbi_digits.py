"""DessiLBI on scikit-learn's digits (8×8) with a LeNet-style network.

Prints, per epoch, the test accuracy and the sparsity of Γ (inverse scale space: Γ starts empty and
its support grows), then the early "winning tickets": masks 1[Γ ≠ 0] taken at early epochs,
weights rewound to the initialization, retrained with SGD; versus random masks with the same number
of kept weights per layer (averaged over seeds), and the dense network retrained the same way.

    PYTHONPATH=$PWD python examples/dessilbi_digits.py            # a few minutes on 1 CPU core
    PYTHONPATH=$PWD python examples/dessilbi_digits.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from structsparse import lbi


class LeNet(nn.Module):
    """LeNet-style: two 3×3 conv layers with max-pooling, two fully connected layers."""

    def __init__(self, c1: int = 16, c2: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 4, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def loaders(seed: int, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = xtr.mean(), xtr.std()

    def ds(a, b):
        return TensorDataset(
            torch.tensor((a - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8), torch.tensor(b)
        )

    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(ds(xtr, ytr), batch_size=batch_size, shuffle=True, generator=gen),
        DataLoader(ds(xte, yte), batch_size=512),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10, help="DessiLBI epochs")
    ap.add_argument("--tickets", type=int, nargs="+", default=[2, 3, 4, 6], help="ticket epochs")
    ap.add_argument("--retrain-epochs", type=int, default=10)
    ap.add_argument("--lam", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--kappa", type=float, default=1.0)
    ap.add_argument("--nu", type=float, default=10.0)
    ap.add_argument("--level", default="weight", choices=lbi.LEVELS)
    ap.add_argument("--magnitude-scaling", action="store_true")
    ap.add_argument("--seeds", type=int, default=2, help="random-mask seeds")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if a.quick:
        a.epochs, a.tickets, a.retrain_epochs, a.seeds = 4, [1, 2], 3, 1
    torch.manual_seed(0)
    train, test = loaders(0)
    model = LeNet()
    t0 = time.perf_counter()
    res = lbi.winning_tickets(
        model,
        train,
        test,
        ticket_epochs=a.tickets,
        lbi_epochs=a.epochs,
        retrain_epochs=a.retrain_epochs,
        level=a.level,
        random_seeds=range(a.seeds),
        retrain_lr=0.05,
        retrain_milestones=[int(a.retrain_epochs * 0.7)],
        lam=a.lam,
        lr=a.lr,
        kappa=a.kappa,
        nu=a.nu,
        magnitude_scaling=a.magnitude_scaling,
        milestones=[int(a.epochs * 0.7)],
        backend="reference",
    )
    print(
        f"DessiLBI lam={a.lam} lr={a.lr} kappa={a.kappa} nu={a.nu} level={a.level} ms={a.magnitude_scaling}"
    )
    print("epoch  loss    test_acc  gamma_sparsity  mask_density")
    for h in res["lbi"]:
        print(
            f"{h['epoch']:5d}  {h['loss']:.4f}  {h['accuracy']:.4f}    {h['gamma_sparsity']:.4f}"
            f"          {h['density']:.4f}"
        )
    print(f"dense network retrained from init: acc {res['dense_accuracy']:.4f}")
    print("ticket_epoch  density  ticket_acc  random_acc(mean over seeds)  random per seed")
    for t in res["tickets"]:
        per = " ".join(f"{r:.4f}" for r in t["random_accuracy"])
        print(
            f"{t['epoch']:12d}  {t['density']:.4f}   {t['accuracy']:.4f}      {t['random_mean']:.4f}"
            f"                       {per}"
        )
    print(f"total time {time.perf_counter() - t0:.1f}s")
    if a.json:
        out = {k: v for k, v in res.items() if k != "init_state"}
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), **out}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
