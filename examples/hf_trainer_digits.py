"""RAMDA in a Hugging Face ``transformers.Trainer``, ending with exact zeros.

A small MLP on scikit-learn's digits, trained by ``Trainer(optimizers=(optimizer, scheduler))``
with RAMDA and torch's CosineAnnealingLR (the Trainer steps the scheduler every iteration and reads
``get_last_lr()``). A ``TrainerCallback`` calls ``optimizer.sparsify()`` when training ends, so the
model holds exact zero groups (input features of each Linear layer). Outputs go to a temporary
directory; nothing is reported or downloaded (``report_to=[]``, ``HF_HUB_OFFLINE=1``).

    pip install transformers accelerate     # or: pip install structsparse[examples]
    PYTHONPATH=$PWD python examples/hf_trainer_digits.py --epochs 10
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: the model and data are local
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import structsparse as ss  # noqa: E402
from structsparse.data import load_digits  # noqa: E402


class DigitsMLP(nn.Module):
    """Returns ``{"loss", "logits"}`` as the Trainer expects of a model given ``labels``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Digits(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class Sparsify(TrainerCallback):
    """Moves the weights onto the structure RAMDA has found when training ends."""

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        # the Trainer hands callbacks accelerate's wrapper; the structsparse optimizer is inside
        self.zero_groups = getattr(optimizer, "optimizer", optimizer).sparsify()


def run(epochs: int = 10, seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Train; returns validation accuracy, group sparsity and the zero-group count."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only cost
    d = load_digits(seed)
    model = DigitsMLP()
    opt = ss.RAMDA(
        ss.group_params(model, ss.GroupLasso(1e-3, grouping="input")), lr=1e-2, momentum=0.9, solver="exact"
    )
    steps = epochs * math.ceil(len(d.y_train) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    cb = Sparsify()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            max_grad_norm=0.0,  # no clipping: the plain RAMDA step
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            push_to_hub=False,
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=seed,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=Digits(d.x_train, d.y_train),
            optimizers=(opt, sched),
            callbacks=[cb],
        )
        trainer.train()
    model.eval()
    with torch.no_grad():
        acc = float((model(d.x_val)["logits"].argmax(1) == d.y_val).float().mean())
    return {
        "val_acc": acc,
        "group_sparsity": ss.group_sparsity(model),
        "zero_groups": cb.zero_groups,
        "last_lr": sched.get_last_lr()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = run(a.epochs, a.seed)
    print(
        f"val acc {100 * r['val_acc']:.2f} %, group sparsity {100 * r['group_sparsity']:.2f} % "
        f"({r['zero_groups']} zero groups)"
    )


if __name__ == "__main__":
    main()
