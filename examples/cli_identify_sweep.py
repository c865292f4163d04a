"""Hyperparameter sweep of the identification experiment's conv instance (``structsparse identify``).

Each argument is ``OPTIMIZER:LAMBDA[:key=value...]`` (keys: ``lr``, ``momentum``, ``epochs``, ...);
per run: the final pattern correctness against the generating ground truth, the training error,
and every third epoch's correctness. Example (from the repository root):

    python examples/cli_identify_sweep.py rmda:1.5e-3:lr=1 ramda:1.5e-3 proxsgd:1.5e-3:epochs=9
"""

import sys
import time

import torch

from structsparse.cli.config import default_milestones
from structsparse.cli.identify import conv_problem, run_identify_one


def main(specs: list[str]) -> None:
    torch.set_num_threads(1)
    prob = conv_problem(4000, 0)  # the command's default conv instance
    for spec in specs:
        name, lam, *rest = spec.split(":")
        hp = {k: float(v) for k, v in (kv.split("=", 1) for kv in rest)}
        epochs = int(hp.pop("epochs", 30))
        t0 = time.perf_counter()
        hist = run_identify_one(
            prob, name, float(lam), epochs, default_milestones(epochs), 128, 0, "reference", hp=hp
        )
        curve = [round(r["correctness"], 3) for r in hist]
        print(
            f"{spec}: final correctness {curve[-1]}, training error {hist[-1]['train_error']:.4f}, "
            f"every third epoch {curve[::3]} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
