"""Stage schedules with restarts (docs/math.md §7)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class RestartScheduler:
    """Milestone schedule of the RMDA/RAMDA papers.

    Call :meth:`step` once at the end of every epoch. After its k-th call, if k is a milestone:
    ``lr ← γ·lr`` in every param group; dual-averaging optimizers (RMDA, RAMDA) restart
    (``t ← 0, α ← 0, W0 ← W, V ← 0, U ← 0``) and RAMDA also scales ``eps ← γ·eps``.
    ProxSGD/ProxGen/ProxSSI only scale lr.

    ``ramp`` sets how the weight on the new point ``c = 1 − momentum`` grows (dual averaging only):

    - ``"sqrt"`` (RAMDA code): after the last milestone, :meth:`step_iteration` (call it once per
      iteration) sets ``c = min(c₀·sqrt(i), 1)``, ``i`` counting iterations since that milestone and
      ``c₀`` the value of ``c`` then;
    - ``"geometric"`` (older RMDA code): ``c ← min(c/γ, 1)`` at each milestone;
    - ``None``: c is left alone.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        ramp: str | None = "sqrt",
    ) -> None:
        ms = list(milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in ms) or ms != sorted(set(ms)):
            raise ValueError(f"milestones: expected increasing positive epoch counts, got {ms}")
        g = float(gamma)
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"Invalid gamma: {gamma} (expected a finite value > 0)")
        if ramp not in ("sqrt", "geometric", None):
            raise ValueError(f"ramp: unknown ramp {ramp!r}; expected 'sqrt', 'geometric' or None")
        self.optimizer = optimizer
        self.milestones = ms
        self.gamma = g
        self.ramp = ramp
        self.epoch = 0
        self.iteration = 0  # iterations since the last milestone, counted once the sqrt ramp runs
        self.c0: list[float] | None = None

    @property
    def _dual_averaging(self) -> bool:
        return bool(getattr(self.optimizer, "dual_averaging", False))

    def step(self) -> None:
        """End of an epoch."""
        self.epoch += 1
        if self.epoch not in self.milestones:
            return
        da = self._dual_averaging
        for group in self.optimizer.param_groups:
            group["lr"] *= self.gamma
            if da and getattr(self.optimizer, "algorithm", "") == "ramda":
                group["eps"] *= self.gamma
            if da and self.ramp == "geometric":
                group["momentum"] = 1.0 - min((1.0 - group["momentum"]) / self.gamma, 1.0)
        if da:
            self.optimizer.restart()  # type: ignore[attr-defined]
            if self.ramp == "sqrt" and self.epoch == self.milestones[-1]:
                self.c0 = [1.0 - g["momentum"] for g in self.optimizer.param_groups]
                self.iteration = 0

    def step_iteration(self) -> None:
        """End of an iteration: drives the ``"sqrt"`` ramp after the last milestone."""
        if self.c0 is None:
            return
        self.iteration += 1
        for group, c0 in zip(self.optimizer.param_groups, self.c0):
            group["momentum"] = 1.0 - min(c0 * math.sqrt(self.iteration), 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
