"""The ``structsparse`` command (``python -m structsparse``); see :mod:`structsparse.cli.main`.

Modules: ``main`` (argument parsing and dispatch), one module per subcommand (``train``,
``compare``, ``identify``, ``ticket``), ``config`` (the shared flags and their validation),
``optimizers`` (the optimizer table), ``common`` and ``plotting`` (shared helpers), ``data`` and
``models`` (the data sets and networks the commands train on).
"""

from .common import CLIError
from .compare import run_compare
from .config import TRAIN_DEFAULTS
from .identify import conv_problem, linear_problem, pattern_correctness, run_identify, run_identify_one
from .main import SUBCOMMANDS, build_parser, main
from .optimizers import OPTIMIZERS, OptimizerSpec
from .ticket import run_ticket
from .train import run_train

__all__ = [
    "CLIError",
    "OPTIMIZERS",
    "OptimizerSpec",
    "SUBCOMMANDS",
    "TRAIN_DEFAULTS",
    "build_parser",
    "conv_problem",
    "linear_problem",
    "main",
    "pattern_correctness",
    "run_compare",
    "run_identify",
    "run_identify_one",
    "run_ticket",
    "run_train",
]
