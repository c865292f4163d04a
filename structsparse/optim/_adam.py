"""Hyperparameter checks shared by the Adam-based baselines (ProxGen, ProxSSI)."""

from __future__ import annotations

from typing import Any

from .._optimizer import check_number


def check_adam_group(group: dict[str, Any]) -> None:
    check_number("lr", group["lr"], low=0.0)
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair)")
    check_number("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
    check_number("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
    check_number("eps", group["eps"], low=0.0, low_open=True)
    check_number("weight_decay", group["weight_decay"], low=0.0)
