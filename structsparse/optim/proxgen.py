from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._optimizer import check_int, check_number, check_solver, resolve_solver
from ._adam import AdamBased


class ProxGen(AdamBased):
    r"""ProxGen (Yun et al. 2021) with an AdamW base and a preconditioned proximal subproblem.

    .. code-block:: text

        input: lr, betas (β1, β2), eps ε, weight_decay wd, regularizer ψ, solver, max_iters, rtol
        state: exp_avg m, exp_avg_sq v, step t
        for each step:
            W ← W·(1 − lr·wd)
            m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²
            D = sqrt(v)/sqrt(1 − β2^t) + ε
            W ← argmin_X ⟨(lr/(1 − β1^t))·m, X − W⟩ + ½‖X − W‖²_D + lr·ψ(X)

    The subproblem uses RAMDA's machinery with weights D and ``a = lr``: ``solver="auto"`` (the
    default) is ``"exact"`` where the regularizer has an exact solve (GroupLasso, L1,
    SparseGroupLasso, GroupMCP, MCP) and ``"pg"`` otherwise (NuclearNorm); ``"pg"`` is the paper's
    proximal-gradient inner solver (``max_iters``, ``rtol``); see :class:`RAMDA` and docs/solvers.md. :meth:`restart` does nothing (only lr is scaled at milestones).
    """

    algorithm = "proxgen"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        solver: str = "auto",
        max_iters: int = 100,
        rtol: float = 1e-8,
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
            dict(solver=solver, max_iters=max_iters, rtol=rtol),
            dict(
                backend=backend,
                skip_nonfinite=skip_nonfinite,
                maximize=maximize,
                foreach=foreach,
                capturable=capturable,
                differentiable=differentiable,
            ),
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        super().validate_group(group)
        check_solver(group["solver"])
        check_int("max_iters", group["max_iters"], 1)
        check_number("rtol", group["rtol"], low=0.0)

    def step_bucket(self, backend, group, params, grads, states) -> None:
        backend.proxgen_step(
            params,
            grads,
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            **self.advance(group, states),
            solver=resolve_solver(group["solver"], group["regularizer"]),
            max_iters=int(group["max_iters"]),
            rtol=float(group["rtol"]),
        )
