from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._optimizer import check_int, check_number, check_solver, resolve_solver
from ._dual_averaging import DualAveraging


class RAMDA(DualAveraging):
    r"""Regularized Adaptive Momentumized Dual Averaging (NeurIPS 2024).

    .. code-block:: text

        input: lr, momentum m (c = 1 − m), eps ε, regularizer ψ, solver, max_iters, rtol
        state: anchor W0, grad_sum V, sq_grad_sum U, step t, alpha α
        for each step:
            t ← t + 1;  s = lr·sqrt(t);  α ← α + s
            V ← V + s·g;   U ← U + s·g⊙g;   P = cbrt(U) + ε
            W̃ = argmin_W ⟨V, W − W0⟩ + ½ Σ_i P_i (W_i − W0_i)² + α·ψ(W)
            W ← (1 − c)·W + c·W̃

    The subproblem is separable by group. ``solver="auto"`` (the default) is ``"exact"`` where
    the regularizer has an exact solve — GroupLasso, L1, SparseGroupLasso, GroupMCP, MCP — and
    ``"pg"`` otherwise (NuclearNorm). ``solver="exact"`` gives the exact minimizer: group LASSO
    family groups are screened (``W̃_g = 0`` iff ``‖P⊙W0 − V‖_g ≤ α·λ·w_g``, SGL after the ℓ₁
    soft threshold) and a kept group is solved by Newton on its norm; MCP has a closed form;
    GroupMCP solves one equation in the norm and, where ``min_g P < α/ω_g`` makes the group's
    problem nonconvex, keeps the best of its candidates (docs/solvers.md). ``solver="pg"`` is the
    paper's inner solver, proximal gradient (step ``1/max_g P``, warm start at W, per-group stop
    when the relative objective decrease is below ``rtol`` after ≥ 2 iterations, at most
    ``max_iters``; ``max_iters`` and ``rtol`` only act there). With no regularizer
    ``W̃ = W0 − V/P`` (MADGRAD's update). A restart also needs ``eps ← γ·eps``, which
    :class:`structsparse.RestartScheduler` does.
    """

    algorithm = "ramda"
    tensor_state = ("anchor", "grad_sum", "sq_grad_sum")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.99,
        eps: float = 1e-6,
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
        defaults = dict(
            lr=lr,
            momentum=momentum,
            eps=eps,
            solver=solver,
            max_iters=max_iters,
            rtol=rtol,
            regularizer=regularizer,
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
        super().validate_group(group)
        check_number("eps", group["eps"], low=0.0, low_open=True)
        check_solver(group["solver"])
        check_int("max_iters", group["max_iters"], 1)
        check_number("rtol", group["rtol"], low=0.0)

    def step_bucket(self, backend, group, params, grads, states) -> None:
        backend.ramda_step(
            params,
            grads,
            [st["anchor"] for st in states],
            [st["grad_sum"] for st in states],
            [st["sq_grad_sum"] for st in states],
            **self.advance(group, states),
            eps=float(group["eps"]),
            reg=group["regularizer"],
            solver=resolve_solver(group["solver"], group["regularizer"]),
            max_iters=int(group["max_iters"]),
            rtol=float(group["rtol"]),
        )
