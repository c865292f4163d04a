from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._adam import AdamBased


class ProxSSI(AdamBased):
    r"""ProxSSI (Deleu & Bengio 2021): an AdamW step followed by a preconditioned group prox.

    .. code-block:: text

        input: lr, betas (β1, β2), eps ε, weight_decay wd, regularizer ψ (one with an exact solve)
        state: exp_avg m, exp_avg_sq v, step t
        for each step:
            m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²
            denom = sqrt(v) + ε
            W ← W − lr·sqrt(1 − β2^t)/(1 − β1^t) · m/denom
            W ← W − lr·wd·W
            W ← argmin_X ½‖X − W‖²_denom + lr·ψ(X)        (the exact solve, docs/math.md §4)

    The prox is RAMDA's ``solver="exact"`` (GroupLasso, L1, SparseGroupLasso, GroupMCP, MCP; see
    docs/solvers.md). Its Newton solve stops per group when a step is below a few float ulps of
    the group norm (the public code's 1e-7 absolute tolerance is unreachable in float32).
    """

    algorithm = "proxssi"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        regularizer: Any = None,
        backend: str = "auto",
        skip_nonfinite: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            regularizer,
            {},
            dict(
                backend=backend,
                skip_nonfinite=skip_nonfinite,
                maximize=maximize,
                foreach=foreach,
                capturable=capturable,
                differentiable=differentiable,
            ),
        )

    def needs_screenable_for(self, group: dict[str, Any]) -> bool:
        return True

    def kernel_solver(self, group: dict[str, Any]) -> str | None:
        return "exact"  # the prox is the exact solve

    def step_bucket(self, backend, group, params, grads, states) -> None:
        backend.proxssi_step(
            params,
            grads,
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            **self.advance(group, states),
        )
