"""Stage schedules with restarts (docs/math.md; usage with Lightning and Hugging Face in
docs/optimizers.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler


class RestartScheduler(LRScheduler):
    """Milestone schedule of the RMDA/RAMDA papers, a ``torch.optim.lr_scheduler.LRScheduler``.

    Milestones count epochs. After the k-th epoch, if k is a milestone: ``lr ← γ·lr`` in every
    param group; dual-averaging optimizers (RMDA, RAMDA) restart
    (``t ← 0, α ← 0, W0 ← W, V ← 0, U ← 0``) and RAMDA also scales ``eps ← γ·eps``.
    ProxSGD/ProxGen/ProxSSI (and any other optimizer) only scale lr.

    How :meth:`step` maps to epochs:

    - ``steps_per_epoch=None`` (default): call :meth:`step` once at the end of every epoch and
      :meth:`step_iteration` once per iteration (it drives the ``"sqrt"`` ramp). Lightning:
      ``"interval": "epoch"``.
    - ``steps_per_epoch=N``: call :meth:`step` once per iteration (after ``optimizer.step()``), as a
      Hugging Face ``Trainer`` and Lightning's ``"interval": "step"`` do; every call is an
      iteration of the ramp and every N-th call ends an epoch. :meth:`step_iteration` is then not
      to be called.

    ``ramp`` sets how the weight on the new point ``c = 1 − momentum`` grows (dual averaging only):

    - ``"sqrt"`` (RAMDA code): after the last milestone, each iteration sets
      ``c = min(c₀·sqrt(i), 1)``, ``i`` counting iterations since that milestone and ``c₀`` the
      value of ``c`` then;
    - ``"geometric"`` (older RMDA code): ``c ← min(c/γ, 1)`` at each milestone;
    - ``None``: c is left alone.

    ``last_epoch`` counts the calls of :meth:`step` (epochs, or iterations with
    ``steps_per_epoch``), :meth:`get_last_lr` gives the lr of every param group after the last
    call, and :meth:`state_dict`/:meth:`load_state_dict` resume the schedule exactly.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        ramp: str | None = "sqrt",
        *,
        steps_per_epoch: int | None = None,
    ) -> None:
        ms = list(milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in ms) or ms != sorted(set(ms)):
            raise ValueError(f"milestones: expected increasing positive epoch counts, got {ms}")
        g = float(gamma)
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"Invalid gamma: {gamma} (expected a finite value > 0)")
        if ramp not in ("sqrt", "geometric", None):
            raise ValueError(f"ramp: unknown ramp {ramp!r}; expected 'sqrt', 'geometric' or None")
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1
        ):
            raise ValueError(
                f"Invalid steps_per_epoch: {steps_per_epoch!r} (expected None or an integer >= 1)"
            )
        self.milestones = ms
        self.gamma = g
        self.ramp = ramp
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.iteration = 0  # iterations since the last milestone, counted once the sqrt ramp runs
        self.c0: list[float] | None = None
        self.epoch_iterations = 0  # with steps_per_epoch: iterations into the current epoch
        # LRScheduler records initial_lr and calls step() once (last_epoch -1 → 0), which does
        # nothing here but record the lr
        super().__init__(optimizer)

    @property
    def _dual_averaging(self) -> bool:
        return bool(getattr(self.optimizer, "dual_averaging", False))

    def get_lr(self) -> list[Any]:
        """The lr of every param group (this schedule sets it in :meth:`step`)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        """End of an epoch; with ``steps_per_epoch``, end of an iteration (see the class doc)."""
        if epoch is not None:
            raise ValueError("RestartScheduler.step() takes no epoch argument (it counts its calls)")
        initial = self._step_count == 0  # the call from LRScheduler.__init__
        self._step_count += 1
        self.last_epoch += 1
        if not initial:
            if self.steps_per_epoch is None:
                self._end_epoch()
            else:
                self._ramp()
                self.epoch_iterations += 1
                if self.epoch_iterations == self.steps_per_epoch:
                    self.epoch_iterations = 0
                    self._end_epoch()
        self._last_lr = self.get_lr()

    def step_iteration(self) -> None:
        """End of an iteration: drives the ``"sqrt"`` ramp after the last milestone (only without
        ``steps_per_epoch``; with it, :meth:`step` does this)."""
        if self.steps_per_epoch is not None:
            raise RuntimeError(
                "RestartScheduler(steps_per_epoch=...) counts iterations in step(); "
                "do not call step_iteration() as well"
            )
        self._ramp()

    def _end_epoch(self) -> None:
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

    def _ramp(self) -> None:
        if self.c0 is None:
            return
        self.iteration += 1
        for group, c0 in zip(self.optimizer.param_groups, self.c0):
            group["momentum"] = 1.0 - min(c0 * math.sqrt(self.iteration), 1.0)

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer (plain data: loadable with ``weights_only=True``)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
