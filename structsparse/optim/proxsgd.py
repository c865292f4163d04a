from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._optimizer import StructuredOptimizer, check_number
from ..structure import StructureMixin


class ProxSGD(StructureMixin, StructuredOptimizer):
    r"""Proximal SGD with momentum (Yang et al. 2019, as run in the RAMDA paper).

    .. code-block:: text

        input: lr, momentum m (c = 1 − m), regularizer ψ
        state: momentum_buffer b (starts at 0, so the first step gives b = c·g), step
        for each step:
            b ← (1 − c)·b + c·g
            W ← prox_{lr·ψ}(W − lr·b)

    :meth:`restart` does nothing (only lr is scaled at milestones).
    """

    algorithm = "proxsgd"
    tensor_state = ("momentum_buffer",)
    scalar_state = ("step",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        *,
        regularizer: Any = None,
        backend: str = "auto",
        skip_nonfinite: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, regularizer=regularizer)
        super().__init__(
            params,
            defaults,
            backend=backend,
            skip_nonfinite=skip_nonfinite,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], low=0.0)
        check_number("momentum", group["momentum"], low=0.0, high=1.0, high_open=True)

    def step_bucket(self, backend, group, params, grads, states) -> None:
        for st in states:
            st["step"] += 1
        backend.proxsgd_step(
            params,
            grads,
            [st["momentum_buffer"] for st in states],
            lr=float(group["lr"]),
            c=1.0 - float(group["momentum"]),
            reg=group["regularizer"],
        )
