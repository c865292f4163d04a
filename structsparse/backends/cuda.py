"""CUDA backend: the CUDA kernels of ``structsparse._C`` (csrc/cuda), one launch per bucket.

Same signatures as :mod:`.reference`. The ``torch.ops.structsparse.*`` ops dispatch on the
tensors' device, so the step functions and :func:`supports` are those of :mod:`.cpu` (argument
packing; NuclearNorm buckets are declined, and stepped on reference); this module only adds the
availability check, decided per op: a build that lacks one op's CUDA kernel still runs the others,
and ``backend="auto"`` then picks Triton for that op alone. What the kernels do:

- RMDA, RAMDA (``"pg"`` and ``"exact"``), ProxSGD, ProxGen (likewise), ProxSSI with no
  regularizer, GroupLasso on every grouping (the ``[A, G, B]`` view), L1, SparseGroupLasso,
  GroupMCP/MCP; DessiLBI with L1/GroupLasso and unpaired tensors (magnitude scaling delegates to
  the reference backend, as on CPU); fp32/fp64 parameters, and bf16/fp16 parameters with fp32
  state;
- the exact solves follow the reference's and the CPU kernels' rules with the scalar math of
  csrc/include/structsparse/math.h (docs/solvers.md): group LASSO/L1 by Newton, SparseGroupLasso
  by group LASSO's screening and Newton on the soft-thresholded ``P⊙Z``, MCP by its closed form
  (``mcp_weighted``), GroupMCP by Newton on ``s`` (``gmcp_next``) and, for nonconvex groups, the
  least objective among 0, ``X(s)`` and ``Z``;
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

import functools

import torch

from .. import ops
from . import cpu

__all__ = [
    "available",
    "compiled_cuda_ops",
    "has_cuda_kernels",
    "missing_cuda_kernels",
    "rmda_step",
    "ramda_step",
    "proxsgd_step",
    "proxgen_step",
    "proxssi_step",
    "dessilbi_step",
]

_NO_CUDA_BUILD = (
    "structsparse._C was built without CUDA kernels (needs a CUDA build of torch and a CUDA "
    "toolkit at build time; see docs/gpu.md)"
)


def compiled_cuda_ops() -> tuple[str, ...]:
    """The ops of :data:`structsparse.ops.CUDA_OPS` (the step ops) with a compiled CUDA kernel in
    the loaded extension. The Triton kernels that :mod:`structsparse.backends` registers under the
    CUDA key for ops without a compiled kernel do not count: those are ``backend="triton"``."""
    if not ops.loaded()[0]:
        return ()
    return tuple(
        name
        for name in ops.CUDA_OPS
        if name not in ops.TRITON_CUDA_OPS
        and torch._C._dispatch_has_kernel_for_dispatch_key(f"structsparse::{name}", "CUDA")
    )


def missing_cuda_kernels() -> tuple[str, ...]:
    """The step ops without a compiled CUDA kernel (all of them in a CPU-only build)."""
    have = compiled_cuda_ops()
    return tuple(name for name in ops.CUDA_OPS if name not in have)


def has_cuda_kernels(op: str | None = None) -> bool:
    """Whether step op ``op`` (e.g. ``"dessilbi_step"``) has a compiled CUDA kernel; without
    ``op``, whether every step op has one (a complete CUDA build)."""
    if op is None:
        return ops.loaded()[0] and not missing_cuda_kernels()
    return op in compiled_cuda_ops()


def available(op: str | None = None) -> tuple[bool, str]:
    """(True, "") when the CUDA kernels can run on this machine; with ``op``, that op's kernel.
    Decided per op: a build that lacks one op's kernel still runs the others."""
    ok, why = ops.loaded()
    if not ok:
        return False, why
    have = compiled_cuda_ops()
    if not have:
        return False, _NO_CUDA_BUILD
    if op is not None and op not in have:
        return False, f"structsparse._C has no compiled CUDA kernel for {op} (it has {', '.join(have)})"
    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""


def _per_op(name: str):
    """The :mod:`.cpu` step function ``name`` (the ops dispatch on the tensors' device), raising
    when the extension has no compiled CUDA kernel for it rather than running another one."""
    fn = getattr(cpu, name)

    @functools.wraps(fn)
    def step(*args, **kwargs):
        if not has_cuda_kernels(name):
            raise RuntimeError(f"backend='cuda': {available(name)[1]}")
        return fn(*args, **kwargs)

    return step


rmda_step = _per_op("rmda_step")
ramda_step = _per_op("ramda_step")
proxsgd_step = _per_op("proxsgd_step")
proxgen_step = _per_op("proxgen_step")
proxssi_step = _per_op("proxssi_step")
dessilbi_step = _per_op("dessilbi_step")
#: what the kernels run (the CUDA kernels share the cpu step functions and their limits)
supports = cpu.supports
