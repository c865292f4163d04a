"""Backends: executors of the algorithms of docs/math.md, all with the signatures of :mod:`.reference`.

``"reference"`` is pure PyTorch (the oracle); ``"cpu"``, ``"triton"`` and ``"cuda"`` are fused
kernels; ``"auto"`` picks the fastest available for the tensors' device and falls back to
``"reference"`` with one warning when an extension is missing. An explicit choice never falls
back silently: it raises when it cannot run.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")


def _register_triton_cuda_ops() -> None:
    """Register the Triton kernels as the CUDA kernels of the step ops that have no compiled one
    (:func:`.triton.register_cuda_ops`), once, when the backends are first imported; the result is
    recorded in ``ops.TRITON_CUDA_OPS`` / ``ops.TRITON_CUDA_SKIPPED``."""
    from .. import ops

    if not ops.loaded()[0]:
        return  # ops.TRITON_CUDA_SKIPPED already holds the extension's load error
    from .triton import register_cuda_ops

    ops.TRITON_CUDA_OPS, ops.TRITON_CUDA_SKIPPED = register_cuda_ops()


_register_triton_cuda_ops()

_warned: set[str] = set()


def check_backend(name: object) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown backend {name!r}; expected one of {BACKENDS}")
    return name  # type: ignore[return-value]


_loaded: dict[tuple[str, str | None], ModuleType] = {}


def _load(name: str, op: str | None = None) -> tuple[ModuleType | None, str]:
    """Import backend module ``name``; return (module or None, reason it is unavailable). ``op``:
    the step op to run (``"rmda_step"``, ...), for backends whose kernels are available per op.
    An available module is cached, so a step traced by ``torch.compile`` finds it without calling
    importlib; an unavailable one is asked again (its availability can depend on the environment)."""
    mod = _loaded.get((name, op))
    if mod is not None:
        return mod, ""
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        return None, str(e)
    ok, why = mod.available(op)
    if not ok:
        return None, why
    _loaded[(name, op)] = mod
    return mod, ""


def preload(name: str, device: torch.device, op: str | None = None) -> None:
    """Import the modules :func:`resolve` may pick for ``device`` and ``op`` (never raises or
    warns)."""
    if name == "auto":
        for cand in _auto_candidates(device):
            _load(cand, op)
    elif name != "reference":
        _load(name, op)


def _auto_candidates(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("cuda", "triton")
    if device.type == "cpu":
        return ("cpu",)
    return ()


def resolve(name: str, device: torch.device, op: str | None = None) -> ModuleType:
    """The backend module to run tensors on ``device`` with (see module docstring); ``op``, when
    given, is the step op the caller will run (availability can differ per op)."""
    from . import reference

    if name == "reference":
        return reference
    if name != "auto":
        mod, why = _load(name, op)
        if mod is None:
            raise RuntimeError(f"backend={name!r} is not available: {why}")
        return mod
    reasons = []
    for cand in _auto_candidates(device):
        mod, why = _load(cand, op)
        if mod is not None:
            return mod
        reasons.append(f"{cand}: {why}")
    key = f"{device.type}"
    if reasons and key not in _warned:
        _warned.add(key)
        warnings.warn(
            "structsparse: no fused backend for "
            f"{device.type} tensors ({'; '.join(reasons)}); using backend='reference'",
            RuntimeWarning,
            stacklevel=3,
        )
    return reference
