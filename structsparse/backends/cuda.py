"""CUDA backend: the CUDA kernels of ``structsparse._C`` (csrc/cuda), one launch per bucket.

Same signatures as :mod:`.reference`. The ``torch.ops.structsparse.*`` ops dispatch on the
tensors' device, so the step functions are those of :mod:`.cpu` (argument packing, and the
delegation of NuclearNorm buckets — and of the exact solves (RAMDA/ProxGen ``"exact"``, ProxSSI)
with SparseGroupLasso, GroupMCP or MCP — to the reference backend); this module only adds the availability check. What the kernels do:

- RMDA, RAMDA (``"pg"``; ``"exact"`` for group LASSO), ProxSGD, ProxGen (likewise), ProxSSI with no
  regularizer, GroupLasso on every grouping (the ``[A, G, B]`` view), L1, SparseGroupLasso,
  GroupMCP/MCP; fp32/fp64 parameters, and bf16/fp16 parameters with fp32 state;
- one launch per bucket (per math dtype): every tensor is cut into work items — elements
  (no regularizer, one-element groups), one group per warp (≤ 128 elements), one group per block
  (≤ 1024), or one group per block in two phases (larger groups; solvers keep the group's arrays in
  a global workspace) — and a block finds its tensor in a device table;
- the PG solver stops **per group** (the reference's rule); Newton follows the CPU kernels' rule
  (csrc/include/structsparse/math.h: the larger of two lower bounds of the root as the start, a
  stop per group after a step below ``NEWTON_ULPS`` ulps of r or once an a-priori bound of the
  error left is below that); a PG result worse than the warm start gets the warm start back;
- fixed-order reductions (no atomics): bit-identical results run to run.
"""

from __future__ import annotations

import torch

from .. import ops
from .cpu import proxgen_step, proxsgd_step, proxssi_step, ramda_step, rmda_step

__all__ = ["available", "rmda_step", "ramda_step", "proxsgd_step", "proxgen_step", "proxssi_step"]


def has_cuda_kernels() -> bool:
    """True when the loaded extension registered compiled CUDA kernels for the step ops (the
    Triton kernels that :mod:`structsparse.ops` registers under the CUDA key when no compiled
    kernel exists do not count: those are ``backend="triton"``)."""
    if not ops.loaded()[0]:
        return False
    return all(
        name not in ops.TRITON_CUDA_OPS
        and torch._C._dispatch_has_kernel_for_dispatch_key(f"structsparse::{name}", "CUDA")
        for name in ops.STEP_OPS
    )


def available() -> tuple[bool, str]:
    ok, why = ops.loaded()
    if not ok:
        return False, why
    if not has_cuda_kernels():
        return False, (
            "structsparse._C was built without CUDA kernels (needs a CUDA build of torch and a CUDA "
            "toolkit at build time)"
        )
    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""
