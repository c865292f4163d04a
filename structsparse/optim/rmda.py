from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._dual_averaging import DualAveraging


class RMDA(DualAveraging):
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

    def step_bucket(self, backend, group, params, grads, states) -> None:
        backend.rmda_step(
            params,
            grads,
            [st["anchor"] for st in states],
            [st["grad_sum"] for st in states],
            **self.advance(group, states),
            reg=group["regularizer"],
        )
