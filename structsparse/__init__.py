"""structsparse: regularized dual averaging optimizers (RMDA, RAMDA) and their baselines for
training structurally sparse networks, with fused kernels and a pure-PyTorch reference backend."""

from .compact import compact
from .factory import create_optimizer, make_regularizer
from .grouping import group_view
from .metrics import (
    StructureTracker,
    group_sparsity,
    kernel_sparsity,
    low_rank_level,
    unstructured_sparsity,
    zero_groups,
)
from .optim import RAMDA, RMDA, DessiLBI, ProxGen, ProxSGD, ProxSSI
from .params import group_params
from .regularizers import (
    L1,
    MCP,
    GroupLasso,
    GroupMCP,
    NuclearNorm,
    Regularizer,
    SparseGroupLasso,
)
from .schedule import RestartScheduler

__version__ = "0.1.0"

__all__ = [
    "RMDA",
    "RAMDA",
    "ProxSGD",
    "ProxGen",
    "ProxSSI",
    "DessiLBI",
    "GroupLasso",
    "L1",
    "SparseGroupLasso",
    "GroupMCP",
    "MCP",
    "NuclearNorm",
    "Regularizer",
    "group_params",
    "create_optimizer",
    "make_regularizer",
    "RestartScheduler",
    "group_sparsity",
    "unstructured_sparsity",
    "low_rank_level",
    "kernel_sparsity",
    "zero_groups",
    "StructureTracker",
    "group_view",
    "compact",
]
