"""Building param groups from a model."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .regularizers import Regularizer

#: layers whose weights are regularized by :func:`group_params`
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RECURRENT_LAYERS = (nn.LSTM, nn.GRU, nn.RNN)


def regularizable_weights(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``(name, weight)`` of every Linear/Conv1d/Conv2d/Conv3d weight and LSTM/GRU/RNN
    ``weight_ih_l*``/``weight_hh_l*``, each parameter once, in module order."""
    out: list[tuple[str, Tensor]] = []
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, WEIGHT_LAYERS):
            cands = [("weight", mod.weight)]
        elif isinstance(mod, RECURRENT_LAYERS):
            cands = [(n, p) for n, p in mod.named_parameters(recurse=False) if n.startswith("weight_")]
        else:
            continue
        for n, p in cands:
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{mname}.{n}" if mname else n, p))
    return out


def group_params(model: nn.Module, regularizer: Regularizer | None) -> list[dict[str, Any]]:
    """Param groups for a structsparse optimizer.

    The weights of Linear, Conv1d/2d/3d and LSTM/GRU/RNN layers that ``regularizer``'s grouping fits
    go to a group with that regularizer; every other parameter (biases, norm layers, embeddings,
    weights the grouping does not fit — e.g. Linear weights under ``"kernel"``) goes to a group
    with ``regularizer=None`` (stepped with ψ = 0). Raises ValueError when the grouping fits no
    layer of the model. Empty groups are left out.
    """
    if regularizer is not None and not isinstance(regularizer, Regularizer):
        raise ValueError(f"regularizer: expected a structsparse regularizer or None, got {regularizer!r}")
    cands = regularizable_weights(model)
    reg_ids: set[int] = set()
    if regularizer is not None:
        for _, p in cands:
            try:
                regularizer.view_shape(p.shape)
            except ValueError:
                continue
            reg_ids.add(id(p))
        if not reg_ids:
            raise ValueError(
                f"regularizer: {regularizer!r} fits no Linear/Conv/LSTM weight of {type(model).__name__}"
            )
    regularized, other, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (regularized if id(p) in reg_ids else other).append(p)
    groups = []
    if regularized:
        groups.append({"params": regularized, "regularizer": regularizer})
    if other:
        groups.append({"params": other, "regularizer": None})
    return groups
