"""What the Adam-based baselines (ProxGen, ProxSSI) share: hyperparameters, state and checks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._optimizer import StructuredOptimizer, check_number
from ..structure import StructureMixin


def check_adam_group(group: dict[str, Any]) -> None:
    check_number("lr", group["lr"], low=0.0)
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair)")
    check_number("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
    check_number("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
    check_number("eps", group["eps"], low=0.0, low_open=True)
    check_number("weight_decay", group["weight_decay"], low=0.0)


class AdamBased(StructureMixin, StructuredOptimizer):
    """Base of ProxGen and ProxSSI: AdamW moments ``m``, ``v`` and the step counter ``t`` of each
    tensor, the hyperparameters ``lr``, ``betas``, ``eps`` and ``weight_decay`` (plus a
    subclass's ``extra`` ones), and the step op's arguments that follow from them."""

    tensor_state = ("exp_avg", "exp_avg_sq")
    scalar_state = ("step",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        regularizer: Any,
        extra: dict[str, Any],
        flags: dict[str, Any],
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            weight_decay=weight_decay,
            **extra,
            regularizer=regularizer,
        )
        super().__init__(params, defaults, **flags)

    def validate_group(self, group: dict[str, Any]) -> None:
        check_adam_group(group)

    def advance(self, group: dict[str, Any], states: list[dict[str, Any]]) -> dict[str, Any]:
        """``t ← t + 1`` for each tensor of a bucket; returns the step op's Adam arguments
        (``exp_avgs``, ``exp_avg_sqs`` are passed positionally by the caller)."""
        for st in states:
            st["step"] += 1
        beta1, beta2 = group["betas"]
        return dict(
            steps=[st["step"] for st in states],
            lr=float(group["lr"]),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            reg=group["regularizer"],
        )
