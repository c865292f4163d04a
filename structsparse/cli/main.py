"""The ``structsparse`` command: train a model and see its structure; reproduce the papers' claims.

Subcommands (``structsparse <cmd> --help`` for all flags):

- ``train``: train one model with one optimizer; per-epoch log (JSON lines or CSV), a PNG of
  validation accuracy and structured sparsity versus epochs, a final table.
- ``identify``: the RMDA paper's synthetic structure-identification experiment (§5.1, Fig. 1):
  ground-truth group-sparse models, data labeled by them, every regularized optimizer run on them;
  per epoch the fraction of the true zero/nonzero group pattern recovered and the training error.
- ``ticket``: DessiLBI's early winning tickets: masks of Γ at early epochs, rewound and retrained,
  versus random masks of the same sparsity.
- ``compare``: several optimizers on one task with the same budget: a table like the papers'
  Table 1, sparsity and accuracy versus epochs, and the structure-stability figure.
- ``compact``: a trained run's model as a smaller dense model with the same outputs (the channels
  its structure made removable cut out), with parameters, MACs and CPU latency before and after.

Outputs go to ``runs/<run-name>/`` under the current directory, or under ``--out DIR``.
Bad input gives a one-line error on stderr and exit code 2.

Extending: optimizers are rows of :data:`structsparse.cli.optimizers.OPTIMIZERS` (see
:class:`~structsparse.cli.optimizers.OptimizerSpec`); a subcommand is a module of this package with
a ``register(subparsers)`` function, listed in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import structsparse as ss

from . import compact, compare, identify, ticket, train
from .common import CLIError
from .data import DataError

#: The subcommand table, in ``--help`` order: each module's ``register(subparsers)`` adds its parser
#: and sets ``func``. A new subcommand is one module with a ``register`` function plus one entry here.
SUBCOMMANDS: list[Callable[[Any], None]] = [
    train.register,
    identify.register,
    compare.register,
    ticket.register,
    compact.register,
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line on stderr (no usage dump), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        first = message.splitlines()[0] if message else "invalid arguments"
        self.exit(2, f"{self.prog}: error: {first} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="structsparse", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"structsparse {ss.__version__}")
    sub = p.add_subparsers(dest="command")
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    sub.metavar = "{" + ",".join(sub.choices) + "}"
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
