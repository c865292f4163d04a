"""The base of the dual-averaging optimizers (RMDA, RAMDA)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .._optimizer import StructuredOptimizer, check_number
from ..structure import StructureMixin


class DualAveraging(StructureMixin, StructuredOptimizer):
    """What RMDA and RAMDA share: the anchor ``W0`` (the point at the last restart), the step
    counter ``t`` and the weight sum ``α`` of each tensor, the hyperparameters ``lr`` and
    ``momentum`` (``c = 1 − momentum``), and the restart ``t ← 0, α ← 0, W0 ← W`` with every
    other tensor state (the sums ``V``, ``U``) zeroed (docs/math.md)."""

    scalar_state = ("step", "alpha")
    dual_averaging = True

    def validate_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], low=0.0)
        check_number("momentum", group["momentum"], low=0.0, high=1.0, high_open=True)

    def init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        super().init_state(p, state)
        state["anchor"].copy_(p.detach())

    def advance(self, group: dict[str, Any], states: list[dict[str, Any]]) -> dict[str, Any]:
        """``t ← t + 1;  α ← α + lr·sqrt(t)`` for each tensor of a bucket; returns the step op's
        arguments that follow from them: ``steps``, ``alphas``, ``lr`` and ``c``."""
        lr = float(group["lr"])
        for st in states:
            st["step"] += 1
            st["alpha"] += lr * math.sqrt(st["step"])
        return dict(
            steps=[st["step"] for st in states],
            alphas=[st["alpha"] for st in states],
            lr=lr,
            c=1.0 - float(group["momentum"]),
        )

    def restart(self) -> None:
        """Restart of every param group (lr untouched; docs/math.md):
        ``t ← 0, α ← 0, W0 ← W``, the gradient sums zeroed."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                st["step"] = 0
                st["alpha"] = 0.0
                st["anchor"].copy_(p.detach())
                for k in self.tensor_state:
                    if k != "anchor" and k in st:
                        st[k].zero_()
