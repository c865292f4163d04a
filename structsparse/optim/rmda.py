from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from .._optimizer import StructuredOptimizer, check_number
from ..structure import StructureMixin


class RMDA(StructureMixin, StructuredOptimizer):
    r"""Regularized Modernized Dual Averaging (Huang & Lee, ICLR 2022).

    .. code-block:: text

        input: lr, momentum m (c = 1 − m), regularizer ψ (per param group, λ inside ψ)
        state: anchor W0 (the point at the last restart), grad_sum V, step t, alpha α
        for each step:
            t ← t + 1;  s = lr·sqrt(t);  α ← α + s
            V ← V + s·g
            W̃ = prox_{(α/sqrt t)·ψ}(W0 − V/sqrt t)
            W ← (1 − c)·W + c·W̃

    ``momentum`` follows torch/MADGRAD: momentum 0.9 is the paper's c = 0.1. Param groups with
    ``regularizer=None`` step with ψ = 0. Call :meth:`restart` (or use
    :class:`structsparse.RestartScheduler`) at each stage milestone.

    Args:
        params: parameters or param groups (dicts may set ``regularizer`` and any hyperparameter).
        lr: learning rate ``η`` (>= 0).
        momentum: ``1 − c`` in ``[0, 1)``.
        regularizer: default regularizer of groups that do not set one.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
        skip_nonfinite: skip (and count in ``skipped_steps``) a step whose gradients hold NaN/Inf.
        maximize, foreach, capturable, differentiable: torch.optim's flags (docs/optimizers.md):
            ``maximize`` steps on ``-grad``; ``foreach`` has no effect; the other two must be False.
    """

    algorithm = "rmda"
    tensor_state = ("anchor", "grad_sum")
    scalar_state = ("step", "alpha")
    dual_averaging = True

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

    def init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        super().init_state(p, state)
        state["anchor"].copy_(p.detach())

    def step_bucket(self, backend, group, params, grads, states) -> None:
        lr = float(group["lr"])
        for st in states:
            st["step"] += 1
            st["alpha"] += lr * math.sqrt(st["step"])
        backend.rmda_step(
            params,
            grads,
            [st["anchor"] for st in states],
            [st["grad_sum"] for st in states],
            steps=[st["step"] for st in states],
            alphas=[st["alpha"] for st in states],
            lr=lr,
            c=1.0 - float(group["momentum"]),
            reg=group["regularizer"],
        )
