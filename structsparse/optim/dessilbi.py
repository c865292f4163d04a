from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .._optimizer import StructuredOptimizer, check_number
from ..regularizers import GroupLasso
from ..structure import StructureMixin


class DessiLBI(StructureMixin, StructuredOptimizer):
    r"""DessiLBI: Deep structure splitting Linearized Bregman Iteration (Fu et al., TPAMI; docs/math.md §6).

    Each regularized weight ``W`` is coupled to a structure variable ``Γ`` through the augmented
    loss ``L(W) + ‖W − Γ‖²/(2ν)``; ``Γ`` follows a linearized Bregman (mirror descent) path of the
    sparsity regularizer ``Ω_λ`` and its support grows from empty: important weights/filters enter
    first (inverse scale space). ``1[Γ ≠ 0]`` gives pruning masks (see :mod:`structsparse.lbi`).

    .. code-block:: text

        input: lr, κ (kappa), ν (nu), momentum μ, weight_decay wd, regularizer Ω_λ (L1 or
               GroupLasso, any grouping; λ inside it), magnitude_scaling, scaling_floor
        state: momentum_buffer d (all params); z Z, gamma Γ (regularized params), step t
               (d, Z, Γ start at 0)
        for each step:
            t ← t + 1
            d ← μ·d + g                          (loss gradient only: no decay, no coupling)
            if the param group has a regularizer:
                R = W − Γ
                W ← W − lr·κ·(d + wd·W + R/ν)
                if magnitude_scaling:            (paper eq. 14–15, per group j of Ω's grouping)
                    β_j = max(floor, min(1, 1/‖W_j‖)·(1 − #supp(Γ)/#supp(W)));  ε_j = ‖W_j‖
                else:
                    β = ε = 1
                Z ← Z + (lr/ν)·β ⊙ R
                Γ ← κ·ε ⊙ prox_{Ω_λ}(Z)          (L1: soft threshold at λ;
                                                  GroupLasso: group shrink at λ·sqrt(|g|))
            else:
                W ← W − lr·κ·(d + wd·W)

    All right-hand sides use the values before the step (``W``, ``Γ`` of step t − 1).
    ``weight_decay`` is an L2 term on ``W`` applied in the update, never accumulated in the
    momentum buffer (the public code's trap, docs/math.md §9); with ``momentum=0`` it equals coupled L2
    decay. ``prox_{Ω_λ}`` is the regularizer's ``prox(Z, 1)``: the paper's unweighted group
    threshold ``λ_paper`` corresponds to ``GroupLasso(lam=λ_paper/sqrt(|g|))``.
    :meth:`restart` does nothing (at milestones only lr is scaled).

    Args:
        params: parameters or param groups (dicts may set ``regularizer`` and any hyperparameter).
        lr: learning rate α (>= 0).
        kappa: damping κ (> 0); unregularized parameters take plain SGD with step ``lr·κ``.
        nu: coupling ν (> 0) between ``W`` and ``Γ``.
        momentum: heavy-ball factor μ in ``[0, 1)``.
        weight_decay: L2 coefficient (>= 0), applied outside the momentum buffer.
        regularizer: default ``Ω_λ`` of groups that do not set one: :class:`structsparse.L1` or
            :class:`structsparse.GroupLasso`.
        magnitude_scaling: the paper's magnitude scaling update (eq. 14–15).
        scaling_floor: the minimum of β (the paper sets "a minimum value"), in ``[0, 1]``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
        skip_nonfinite: skip (and count in ``skipped_steps``) a step whose gradients hold NaN/Inf.
        maximize, foreach, capturable, differentiable: torch.optim's flags (docs/optimizers.md):
            ``maximize`` steps on ``-grad``; ``foreach`` has no effect; the other two must be False.
    """

    algorithm = "dessilbi"
    tensor_state = ("momentum_buffer", "z", "gamma")
    scalar_state = ("step",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        kappa: float = 1.0,
        nu: float = 100.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        backend: str = "auto",
        *,
        regularizer: Any = None,
        magnitude_scaling: bool = False,
        scaling_floor: float = 0.01,
        skip_nonfinite: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            kappa=kappa,
            nu=nu,
            momentum=momentum,
            weight_decay=weight_decay,
            regularizer=regularizer,
            magnitude_scaling=magnitude_scaling,
            scaling_floor=scaling_floor,
        )
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
        check_number("kappa", group["kappa"], low=0.0, low_open=True)
        check_number("nu", group["nu"], low=0.0, low_open=True)
        check_number("momentum", group["momentum"], low=0.0, high=1.0, high_open=True)
        check_number("weight_decay", group["weight_decay"], low=0.0)
        check_number("scaling_floor", group["scaling_floor"], low=0.0, high=1.0)
        if not isinstance(group["magnitude_scaling"], bool):
            raise ValueError(f"magnitude_scaling: expected a bool, got {group['magnitude_scaling']!r}")
        reg = group["regularizer"]
        if reg is not None and not isinstance(reg, GroupLasso):
            raise ValueError(
                f"regularizer: DessiLBI supports L1 and GroupLasso (any grouping), got {type(reg).__name__}"
            )

    # -- state: Z and Γ only for regularized parameters ----------------------------------------
    def state_keys(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if group.get("regularizer") is None:
            return ("momentum_buffer",), self.scalar_state
        return self.tensor_state, self.scalar_state

    def init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        state["momentum_buffer"] = self.zero_state(p)
        state["step"] = 0

    def group_state(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        # Z and Γ for parameters of regularized groups (also when a regularizer is set on an
        # existing group), created on the parameter itself: step_bucket sees local shards only.
        if group["regularizer"] is not None and "z" not in state:
            state["z"], state["gamma"] = self.zero_state(p), self.zero_state(p)

    def groups_are_independent(self, group: dict[str, Any]) -> bool:
        return not group["magnitude_scaling"]  # β needs the whole tensor's support counts

    def step_bucket(self, backend, group, params, grads, states) -> None:
        reg = group["regularizer"]
        for st in states:
            st["step"] += 1
            if reg is None and "z" in st:
                raise RuntimeError(
                    "DessiLBI: a parameter with Z/Γ state is in a group without regularizer; "
                    "regularizers cannot be removed from a group during training"
                )
        backend.dessilbi_step(
            params,
            grads,
            [st["momentum_buffer"] for st in states],
            [] if reg is None else [st["z"] for st in states],
            [] if reg is None else [st["gamma"] for st in states],
            lr=float(group["lr"]),
            kappa=float(group["kappa"]),
            nu=float(group["nu"]),
            momentum=float(group["momentum"]),
            weight_decay=float(group["weight_decay"]),
            reg=reg,
            magnitude_scaling=bool(group["magnitude_scaling"]),
            scaling_floor=float(group["scaling_floor"]),
        )
