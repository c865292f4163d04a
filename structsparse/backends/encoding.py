"""The one encoding of a regularizer for the fused kernels.

Every fused path (the C++ and CUDA kernels through the ``structsparse::*_step`` ops, and the
Triton kernels) receives a regularizer as ``(reg, reg_params)``: ``reg`` is ``"none"``,
``"group_lasso"`` (GroupLasso and L1), ``"sparse_group_lasso"`` or ``"group_mcp"`` (GroupMCP
and MCP), and ``reg_params`` is ``[lam, lam2, omega]`` — for SparseGroupLasso ``lam`` is the
elementwise λ1 and ``lam2`` the group λ2; for the others ``lam2`` is 0; ``omega`` is GroupMCP's
concavity (1 otherwise). The same layout is the ops' schema (structsparse/ops.py).
"""

from __future__ import annotations

from ..regularizers import GroupLasso, GroupMCP, Regularizer, SparseGroupLasso

#: the ``reg`` strings, in the order of the kernels' integer codes (0..3)
REG_KINDS = ("none", "group_lasso", "sparse_group_lasso", "group_mcp")


def encode(reg: Regularizer | None) -> tuple[str, list[float]] | None:
    """``(reg, [lam, lam2, omega])`` of ``reg`` for the kernels; None for a regularizer no fused
    kernel implements (NuclearNorm: an SVD; unknown regularizers)."""
    if reg is None:
        return "none", [0.0, 0.0, 1.0]
    if isinstance(reg, GroupLasso):  # also L1
        return "group_lasso", [reg.lam, 0.0, 1.0]
    if isinstance(reg, SparseGroupLasso):
        return "sparse_group_lasso", [reg.lam_l1, reg.lam_group, 1.0]
    if isinstance(reg, GroupMCP):  # also MCP
        return "group_mcp", [reg.lam, 0.0, reg.omega]
    return None


def unsupported(backend: str, op: str, reg: Regularizer | None, detail: str = "") -> ValueError:
    """The error of a backend's step function called on a bucket its ``supports`` declines (the
    optimizers route those to the reference backend before calling)."""
    what = type(reg).__name__ if reg is not None else "no regularizer"
    return ValueError(
        f"backend {backend!r}: {op} has no fused kernel for {what}{detail}; check "
        f"structsparse.backends.{backend}.supports() first or use backend='reference'"
    )
