"""The structsparse custom ops (``torch.ops.structsparse.*``) and their fake implementations.

The schemas are defined in C++ (``csrc/library.cpp``) and loaded with the extension
``structsparse._C``; device kernels register under the same names (CPU: ``csrc/cpu``; CUDA: the
compiled ``csrc/cuda`` kernels when the extension was built with CUDA, else the Triton kernels,
registered from Python at import when CUDA and triton are available). The fake
(meta) implementations below let ``torch.compile`` trace a step that calls them: every step op
mutates its parameter and state lists in place (``Tensor(a!)[]`` in the schema) and returns
nothing.

Schemas (one bucket of tensors per call; ``views`` holds ``[A, G, B]`` per tensor, docs/math.md §1;
``reg`` is ``"none"``, ``"group_lasso"``, ``"sparse_group_lasso"`` or ``"group_mcp"`` and
``reg_params`` is ``[lam, lam2, omega]``)::

    rmda_step(Tensor(a!)[] params, Tensor[] grads, Tensor[] anchors, Tensor(b!)[] grad_sums,
              SymInt[] steps, float[] alphas, int[] views, float lr, float c, str reg,
              float[] reg_params) -> ()
    ramda_step(Tensor(a!)[] params, Tensor[] grads, Tensor[] anchors, Tensor(b!)[] grad_sums,
               Tensor(c!)[] sq_grad_sums, SymInt[] steps, float[] alphas, int[] views, float lr,
               float c, float eps, str reg, float[] reg_params, str solver, int max_iters,
               float rtol) -> ()
    proxsgd_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] views,
                 float lr, float c, str reg, float[] reg_params) -> ()
    proxgen_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs,
                 Tensor(c!)[] exp_avg_sqs, SymInt[] steps, int[] views, float lr, float beta1,
                 float beta2, float eps, float weight_decay, str reg, float[] reg_params,
                 str solver, int max_iters, float rtol) -> ()
    proxssi_step(<as proxgen_step without solver, max_iters, rtol>) -> ()
    dessilbi_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers,
                  Tensor(c!)[] zs, Tensor(d!)[] gammas, int[] views, float lr, float kappa,
                  float nu, float momentum, float weight_decay, str reg, float[] reg_params) -> ()
    all_finite(Tensor[] tensors) -> bool
    cpu_isa() -> str
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

#: Why the extension is absent when the package was installed without it: pip builds in an isolated
#: environment without torch unless told otherwise, and setup.py then skips the extension.
NOT_BUILT = (
    "structsparse._C is not built (installed without its C++ extension, e.g. by `pip install .` "
    "in pip's isolated build environment); to build it: pip install --no-build-isolation ."
)


def _load_extension() -> str | None:
    """Import ``structsparse._C`` (which registers the ops); None, or why it is unavailable. A
    missing module is told apart from one that fails to load: importing a missing submodule of a
    package still initializing reads as a circular import, which it is not."""
    name = f"{__package__}._C"
    if importlib.util.find_spec(name) is None:
        return NOT_BUILT
    try:
        importlib.import_module(name)
    except ImportError as e:  # an ABI mismatch (built against another torch), a missing library
        return f"structsparse._C could not be imported ({e}); rebuild it: pip install --no-build-isolation ."
    return None


_LOAD_ERROR: str | None = _load_extension()

STEP_OPS = ("rmda_step", "ramda_step", "proxsgd_step", "proxgen_step", "proxssi_step", "dessilbi_step")
#: Ops that have a CUDA kernel in a CUDA build of the extension (csrc/cuda/ops.cpp); the
#: sharded twins and ``all_finite`` are CPU-only (on CUDA the optimizers check gradients with
#: ``torch._foreach_norm``). .ci/cuda_build_check asserts that each of these is registered.
CUDA_OPS = STEP_OPS
#: CPU-only sharded twins (FSDP2): the plain op's arguments + ``int[] split, float[] group_weights,
#: int phase, Tensor(x!) sums`` (see csrc/library.cpp and structsparse/backends/cpu.py)
SHARDED_OPS = ("rmda_step_sharded", "proxsgd_step_sharded", "dessilbi_step_sharded")

#: Step ops whose CUDA kernel is the Triton backend's (registered when :mod:`structsparse.backends`
#: is imported — ``import structsparse`` does — if CUDA and triton are available and the extension
#: has no compiled CUDA kernel for them; see :func:`structsparse.backends.triton.register_cuda_ops`).
#: A check for *compiled* CUDA kernels (``torch._C._dispatch_has_kernel_for_dispatch_key(op,
#: "CUDA")``) must exclude these names. This module, the lowest layer, only holds the record.
TRITON_CUDA_OPS: tuple[str, ...] = ()
#: Why no Triton CUDA kernel was registered ("" when some were).
TRITON_CUDA_SKIPPED: str = ""


def loaded() -> tuple[bool, str]:
    """(True, "") when the extension and its ops are available, else (False, reason)."""
    if _LOAD_ERROR is not None:
        return False, _LOAD_ERROR
    return True, ""


def _fake_step(*args, **kwargs) -> None:
    """Fake kernel of every step op: in-place on its inputs, nothing to allocate."""
    return None


def _fake_all_finite(tensors) -> object:
    """Fake kernel of ``all_finite``: the answer depends on the data, so it is an unbacked
    symbolic bool (a graph can compute it; branching on it breaks the graph, and raises under
    ``fullgraph=True``; the optimizers' check under torch.compile does not branch)."""
    return torch.library.get_ctx().new_dynamic_size(min=0, max=1) == 1


@torch.library.custom_op("structsparse::flag_value", mutates_args=())
def flag_value(flag: torch.Tensor) -> int:
    """1 when the boolean 0-d tensor ``flag`` is true, else 0, as a host int. Under torch.compile
    it is an unbacked symbolic int (the value depends on the data): the optimizers' NaN/Inf check
    computes the host step counters from it without a graph break (the op reads ``flag``, a sync
    on an accelerator)."""
    return int(bool(flag))


@flag_value.register_fake
def _fake_flag_value(flag: torch.Tensor) -> object:
    return torch.library.get_ctx().new_dynamic_size(min=0, max=1)


if _LOAD_ERROR is None:
    for _name in STEP_OPS + SHARDED_OPS:
        torch.library.register_fake(f"structsparse::{_name}")(_fake_step)
    torch.library.register_fake("structsparse::all_finite")(_fake_all_finite)
else:
    TRITON_CUDA_SKIPPED = _LOAD_ERROR
