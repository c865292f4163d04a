"""Build an optimizer from a name and options: one line for configs (Hydra, timm-style)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .optim import RAMDA, RMDA, DessiLBI, ProxGen, ProxSGD, ProxSSI
from .params import group_params
from .regularizers import L1, MCP, GroupLasso, GroupMCP, NuclearNorm, Regularizer, SparseGroupLasso

#: optimizer names accepted by :func:`create_optimizer`
OPTIMIZERS: dict[str, type] = {
    "rmda": RMDA,
    "ramda": RAMDA,
    "proxsgd": ProxSGD,
    "proxgen": ProxGen,
    "proxssi": ProxSSI,
    "dessilbi": DessiLBI,
}
#: regularizer names accepted by :func:`create_optimizer`
REGULARIZERS: dict[str, type[Regularizer]] = {
    "group_lasso": GroupLasso,
    "l1": L1,
    "sparse_group_lasso": SparseGroupLasso,
    "group_mcp": GroupMCP,
    "mcp": MCP,
    "nuclear": NuclearNorm,
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def make_regularizer(
    regularizer: str | Regularizer | None,
    lam: float | None = None,
    grouping: Any = None,
    **options: Any,
) -> Regularizer | None:
    """A regularizer from a name in :data:`REGULARIZERS` (or one given as is, or None).

    ``lam`` is the weight λ (``lam_group`` of ``"sparse_group_lasso"``, which also needs
    ``lam_l1=``); ``grouping`` the grouping (default ``"input"``; not for ``"l1"``, ``"mcp"``,
    ``"nuclear"``); ``options`` the regularizer's other fields (``omega=`` of the MCP family).
    """
    if regularizer is None or isinstance(regularizer, Regularizer):
        extra = {k: v for k, v in (("lam", lam), ("grouping", grouping)) if v is not None}
        if extra or options:
            what = "regularizer=None" if regularizer is None else f"a {type(regularizer).__name__}"
            raise ValueError(f"{', '.join(sorted({**extra, **options}))}: not used with {what}")
        return regularizer
    if not isinstance(regularizer, str) or _key(regularizer) not in REGULARIZERS:
        raise ValueError(
            f"regularizer: unknown regularizer {regularizer!r}; expected one of "
            f"{sorted(REGULARIZERS)}, a structsparse Regularizer or None"
        )
    cls = REGULARIZERS[_key(regularizer)]
    if lam is None:
        raise ValueError(f"lam: regularizer {regularizer!r} needs a weight lam")
    kwargs = dict(options)
    kwargs["lam_group" if cls is SparseGroupLasso else "lam"] = lam
    if grouping is not None:
        kwargs["grouping"] = grouping
    fields = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not an option of {cls.__name__} (its options: {', '.join(fields)})"
        )
    missing = [
        n for n, p in inspect.signature(cls).parameters.items() if p.default is p.empty and n not in kwargs
    ]
    if missing:
        raise ValueError(f"{', '.join(missing)}: {cls.__name__} needs {', '.join(missing)}=")
    return cls(**kwargs)


def create_optimizer(
    model: nn.Module,
    name: str,
    lam: float | None = None,
    grouping: Any = None,
    regularizer: str | Regularizer | None = "group_lasso",
    *,
    regularizer_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A structsparse optimizer for ``model`` from a name and options.

    ``name`` is one of :data:`OPTIMIZERS` (case-insensitive). The regularizer is built by
    :func:`make_regularizer` from ``regularizer`` (a name, a :class:`Regularizer`, or None),
    ``lam``, ``grouping`` and ``regularizer_options``; the param groups by
    :func:`structsparse.group_params` (the Linear/Conv/recurrent weights the grouping fits are
    regularized, every other parameter is not). ``kwargs`` go to the optimizer (``lr``,
    ``momentum``, ``backend``, ...); an option the optimizer does not have raises ValueError.

    Example::

        opt = structsparse.create_optimizer(model, "ramda", lam=1e-3, grouping="input", lr=0.01)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(name, str) or _key(name) not in OPTIMIZERS:
        raise ValueError(f"name: unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[_key(name)]
    accepted = [n for n in inspect.signature(cls).parameters if n not in ("params", "regularizer")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not an option of {cls.__name__} (its options: {', '.join(accepted)})"
        )
    reg = make_regularizer(regularizer, lam, grouping, **(regularizer_options or {}))
    return cls(group_params(model, reg), **kwargs)
