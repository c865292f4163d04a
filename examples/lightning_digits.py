"""RAMDA in a PyTorch Lightning module, ending with exact zeros.

A small MLP on scikit-learn's digits, trained by ``lightning.Trainer`` with RAMDA and torch's
CosineAnnealingLR (stepped every iteration) returned from ``configure_optimizers``. A callback
calls ``optimizer.sparsify()`` when training ends, so the saved model holds exact zero groups
(input features of each Linear layer); it also logs the group sparsity of RAMDA's subproblem
solution each epoch (``group_sparsity(opt, of="solution")``).

    pip install lightning           # or: pip install structsparse[examples]
    PYTHONPATH=$PWD python examples/lightning_digits.py --epochs 10
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import structsparse as ss
from structsparse.data import load_digits


class DigitsMLP(L.LightningModule):
    def __init__(self, lr: float = 1e-2, lam: float = 1e-3, steps: int = 1000) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        groups = ss.group_params(self.net, ss.GroupLasso(hp.lam, grouping="input"))
        opt = ss.RAMDA(groups, lr=hp.lr, momentum=0.9, solver="exact")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Sparsify(L.Callback):
    """Logs the structure RAMDA has found each epoch; moves W onto it when training ends."""

    def on_train_epoch_end(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        pl_module.log("solution_group_sparsity", ss.group_sparsity(opt, of="solution"))

    def on_train_end(self, trainer, pl_module):
        self.zero_groups = trainer.optimizers[0].sparsify()


def loaders(seed: int = 0, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    d = load_digits(seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(d.x_train, d.y_train), batch_size=batch_size, shuffle=True, generator=gen
    )
    val = DataLoader(TensorDataset(d.x_val, d.y_val), batch_size=512)
    return train, val


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return hits / len(loader.dataset)


def run(epochs: int = 10, seed: int = 0, root: str | None = None) -> dict[str, float]:
    """Train; returns validation accuracy, group sparsity of the weights and the zero-group count."""
    L.seed_everything(seed, verbose=False)
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only cost
    train, val = loaders(seed)
    model = DigitsMLP(steps=epochs * len(train))
    cb = Sparsify()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            callbacks=[cb],
            default_root_dir=root or tmp,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, train, val)
    opt = trainer.optimizers[0]
    return {
        "val_acc": accuracy(model, val),
        "group_sparsity": ss.group_sparsity(model.net),
        "optimizer_group_sparsity": ss.group_sparsity(opt),
        "zero_groups": cb.zero_groups,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = run(a.epochs, a.seed)
    print(
        f"val acc {100 * r['val_acc']:.2f} %, group sparsity {100 * r['optimizer_group_sparsity']:.2f} % "
        f"({r['zero_groups']} zero groups)"
    )


if __name__ == "__main__":
    main()
