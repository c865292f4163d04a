"""The structure each optimizer identifies, readable at any step, and exact zeros on demand.

RMDA and RAMDA keep ``W ← (1 − c)·W + c·W̃``: the structure (zero groups) lies in ``W̃``, the
minimizer of the dual-averaging subproblem, and ``W`` only gets it once ``c`` reaches 1. This
module recomputes ``W̃`` from the optimizer state, one parameter at a time, with the reference
backend's functions (any backend's state, FSDP2 shards included), and gives every structsparse
optimizer three methods through :class:`StructureMixin`:

- ``subproblem_solution(p)``: ``W̃`` of one parameter (a new tensor);
- ``structure()``: ``{parameter: bool [G] mask of the zero groups of W̃}`` for the regularized
  parameters;
- ``sparsify(keep=...)``: moves each regularized parameter onto that structure (exact zeros) and
  returns the number of zero groups.

What the "solution" is, per algorithm:

- RMDA: ``W̃ = prox_{(α/sqrt t)ψ}(W0 − V/sqrt t)``;
- RAMDA: ``W̃ = argmin_X ⟨V, X − W0⟩ + ½ Σ P (X − W0)² + α·ψ(X)``, ``P = cbrt(U) + ε``;
- ProxSGD, ProxGen, ProxSSI: ``W`` itself (each step ends with the prox, so W carries the
  structure);
- DessiLBI: ``Γ``, the sparse variable of the Bregman path (its support is the structure).

A parameter that has not been stepped (no state) is its own solution. After a dual-averaging
restart (``t = 0``) the solution is the anchor ``W0``, the subproblem's minimizer with empty sums.
See docs/sparsity.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from . import distributed
from ._optimizer import resolve_solver
from .backends import reference
from .regularizers import NuclearNorm, Regularizer

#: how :meth:`StructureMixin.sparsify` treats the groups the solution keeps
KEEP = ("solution", "mask")


def _regularized(opt: torch.optim.Optimizer) -> Iterator[tuple[dict[str, Any], Tensor]]:
    for group in opt.param_groups:
        if group.get("regularizer") is not None:
            for p in group["params"]:
                yield group, p


@contextmanager
def _local(
    p: Tensor, state: dict[str, Any], reg: Regularizer | None
) -> Iterator[tuple[Tensor, dict[str, Any]]]:
    """``(local parameter, local state)``; for a DTensor its shard, with the shard's group
    reductions made global (:func:`structsparse.distributed.sharded_bucket`) while inside."""
    if not distributed.is_sharded(p):
        yield p.detach(), state
        return
    # the parameter stands in for its gradient: sharded_bucket only needs a DTensor of its placements
    with distributed.sharded_bucket(reg, [p], [p], [state]) as (lp, _, ls):
        with distributed.tensor_scope(lp[0]):
            yield lp[0], ls[0]  # the registered shard itself: its scope is looked up by identity


def _as_global(p: Tensor, loc: Tensor) -> Tensor:
    """``loc`` (values of ``p``'s local shard) as a DTensor laid out like ``p``; ``loc`` itself
    when ``p`` is a plain tensor."""
    if not distributed.is_sharded(p):
        return loc
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        loc, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def _zero_groups(p: Tensor, x: Tensor, reg: Regularizer) -> Tensor:
    """Boolean ``[G]`` over the groups of ``reg`` on the *global* parameter ``p``: which groups of
    ``x`` (``p``'s values or its solution, local when ``p`` is sharded) are entirely zero."""
    if distributed.is_sharded(p):
        return distributed.zero_groups(_as_global(p, x), reg.grouping)
    x3 = x.detach().reshape(reg.view_shape(x.shape))
    if x3.numel() == 0:
        return torch.zeros(x3.shape[1], dtype=torch.bool, device=x.device)
    return (x3 == 0).all(dim=2).all(dim=0)


def _local_groups(p: Tensor, loc: Tensor, zero: Tensor, reg: Regularizer) -> Tensor:
    """The part of the global ``[G]`` mask ``zero`` that covers the local shard ``loc`` of ``p``,
    shaped ``[1, G_loc, 1]`` to broadcast over ``loc``'s ``[A, G, B]`` view."""
    g_loc = reg.view_shape(loc.shape)[1]
    if distributed.is_sharded(p) and not distributed.splits_groups(reg, p.shape):
        per_row = zero.numel() // p.shape[0] if p.shape[0] else 0
        off = distributed._row_offset(p) * per_row
        zero = zero[off : off + g_loc]
    return zero.view(1, g_loc, 1)


class StructureMixin:
    """``subproblem_solution``, ``structure`` and ``sparsify`` for a structsparse optimizer (see
    the module docstring). Subclasses with their own notion of the solution override
    :meth:`local_solution`."""

    #: keep mode of :meth:`sparsify` when none is given: "mask" keeps the accuracy of the dense W
    #: at any point of training ("solution" only matches it once W ≈ W̃, e.g. at the end of a
    #: schedule that decays lr to 0; docs/sparsity.md)
    default_keep: str = "mask"

    # -- the solution ------------------------------------------------------------------------
    def local_solution(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Tensor | None:
        """The solution for parameter ``p`` (a local shard under FSDP2, inside its reduction scope)
        with state ``state``, in the state's dtype; None when it is ``p`` itself."""
        algorithm = getattr(self, "algorithm", "")
        reg = group["regularizer"]
        if algorithm in ("rmda", "ramda"):
            t = state["step"]
            if t == 0:  # empty sums: the minimizer is the anchor
                return state["anchor"].clone()
            anchor, v = state["anchor"], state["grad_sum"]
            if algorithm == "rmda":
                z = anchor - v / math.sqrt(t)
                return reference.prox_bucket(reg, [p], [z], [state["alpha"] / math.sqrt(t)])[0]
            pc = reference.cbrt(state["sq_grad_sum"]).add_(float(group["eps"]))
            if reg is None:
                return anchor - v / pc
            w = reference._work(p, v.dtype)
            return reference.solve_subproblem(
                v,
                pc,
                anchor,
                w,
                state["alpha"],
                reg,
                resolve_solver(group["solver"], reg),
                int(group["max_iters"]),
                float(group["rtol"]),
            )
        if algorithm == "dessilbi":
            gamma = state.get("gamma") if reg is not None else None
            return None if gamma is None else gamma.clone()
        return None

    @torch.no_grad()
    def subproblem_solution(self, p: Tensor) -> Tensor:
        """The solution ``W̃`` the optimizer holds for parameter ``p`` (a new tensor of ``p``'s
        shape, in its state's dtype; a DTensor for a DTensor parameter — then a collective every
        rank must call). For the prox baselines it is ``p``'s value, for DessiLBI ``Γ`` (``p``'s
        value for its unregularized parameters). Unregularized RMDA/RAMDA parameters have one too
        (ψ = 0: ``W0 − V/sqrt t``, ``W0 − V/P``)."""
        group = self._group_of(p)
        reg = group["regularizer"]
        state = self.state.get(p) if isinstance(self, torch.optim.Optimizer) else None
        if not state:
            return p.detach().clone()
        with _local(p, state, reg) as (loc, lst):
            sol = self.local_solution(group, loc, lst)
            if sol is None:
                sol = loc.clone()
        return _as_global(p, sol)

    @torch.no_grad()
    def structure(self) -> dict[Tensor, Tensor]:
        """``{parameter: zero-group mask}`` of the solution, for every parameter of a regularized
        param group (in param-group order): a bool tensor of shape ``[G]`` over the groups of the
        group's regularizer (one group, the whole tensor, for :class:`~structsparse.NuclearNorm`).
        Collective on FSDP2 shards (every rank must call it)."""
        out: dict[Tensor, Tensor] = {}
        for group, p in _regularized(self):  # type: ignore[arg-type]
            reg = group["regularizer"]
            state = self.state.get(p)  # type: ignore[attr-defined]
            if not state:
                out[p] = _zero_groups(p, distributed.local(p), reg)
                continue
            with _local(p, state, reg) as (loc, lst):
                sol = self.local_solution(group, loc, lst)
                out[p] = _zero_groups(p, loc if sol is None else sol, reg)
        return out

    # -- exact zeros --------------------------------------------------------------------------
    @torch.no_grad()
    def sparsify(self, keep: str | None = None) -> int:
        """Move every regularized parameter onto the structure of its solution and return the
        number of its zero groups afterwards (summed over the regularized parameters).

        ``keep`` says what the groups the solution keeps get:

        - ``"mask"`` (default): ``W ← W ⊙ 1[W̃_g ≠ 0]`` — W's own values in the kept groups (the
          zeroed groups of W are already small: the model keeps its accuracy);
        - ``"solution"``: ``W ← W̃`` — the step with ``c = 1``.

        The prox baselines' ``W`` is its own solution (nothing moves). DessiLBI masks ``W`` with the
        support of ``Γ`` (``keep="mask"``; ``"solution"`` is refused: ``Γ`` is not a weight).
        :class:`~structsparse.NuclearNorm` parameters take ``W̃`` in either mode (their structure
        is a rank, not a zero pattern). Optimizer state is left as it is, so training can go on;
        groups that stay zero in ``W̃`` stay exactly zero in ``W`` (the step mixes ``W`` with ``W̃``).
        Collective on FSDP2 shards (every rank must call it).
        """
        if keep is None:
            keep = self.default_keep
        if keep not in KEEP:
            raise ValueError(f"keep: unknown mode {keep!r}; expected one of {KEEP}")
        algorithm = getattr(self, "algorithm", "")
        if algorithm == "dessilbi" and keep == "solution":
            raise ValueError(
                "keep: DessiLBI's solution Γ is the structure variable, not a weight; use keep='mask' "
                "(W ⊙ 1[Γ ≠ 0])"
            )
        count = 0
        for group, p in _regularized(self):  # type: ignore[arg-type]
            reg = group["regularizer"]
            state = self.state.get(p)  # type: ignore[attr-defined]
            if state:
                with _local(p, state, reg) as (loc, lst):
                    sol = self.local_solution(group, loc, lst)
                    if sol is not None:
                        if keep == "solution" or isinstance(reg, NuclearNorm):
                            loc.copy_(sol)
                        else:
                            zero = _local_groups(p, loc, _zero_groups(p, sol, reg), reg)
                            vs = reg.view_shape(loc.shape)
                            if loc.is_contiguous():
                                loc.view(vs).masked_fill_(zero, 0)
                            else:  # the [A, G, B] view is of the tensor's logical order
                                loc.copy_(loc.reshape(vs).masked_fill(zero, 0).reshape(loc.shape))
                    del sol
            count += int(_zero_groups(p, distributed.local(p), reg).sum())
        return count

    # -- helpers ------------------------------------------------------------------------------
    def _group_of(self, p: Tensor) -> dict[str, Any]:
        for group in self.param_groups:  # type: ignore[attr-defined]
            if any(q is p for q in group["params"]):
                return group
        raise ValueError(f"{type(self).__name__}: the tensor is not a parameter of this optimizer")
