"""Shared machinery of the structsparse optimizers.

The optimizer classes are thin: hyperparameter validation, lazy state creation, per-tensor
scalars (t, α), restarts and dispatch of one backend call per bucket of tensors. The math lives in
:mod:`structsparse.backends.reference` (and the fused backends that mirror it).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import distributed
from .backends import check_backend, reference, resolve
from .regularizers import Regularizer, regularizer_from_dict

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _load_fast_all_finite():
    """The C++ extension's one-pass finiteness check (torch._foreach_norm(inf) costs more than a
    fused step on CPU); None when the extension is not built."""
    from . import ops

    return torch.ops.structsparse.all_finite if ops.loaded()[0] else None


_fast_all_finite = _load_fast_all_finite()


def state_dtype(p: Tensor) -> torch.dtype:
    """fp32 state for fp16/bf16 parameters, the parameter's dtype otherwise."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validate a finite real hyperparameter in a range; ValueError naming it otherwise."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        rng = f"{lo or '(-inf, '}{hi or 'inf)'}"
        raise ValueError(f"Invalid {name}: {value} (expected a finite value in {rng})")
    return v


def check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= {low})")
    return value


def check_solver(solver: Any) -> str:
    if solver not in ("pg", "exact"):
        raise ValueError(f"solver: unknown solver {solver!r}; expected 'pg' or 'exact'")
    return solver


class StructuredOptimizer(torch.optim.Optimizer):
    """Base class of every structsparse optimizer (see the module docstring)."""

    #: name stored in state_dicts; loading a state_dict of another algorithm raises
    algorithm: ClassVar[str] = ""
    #: tensor state keys created per parameter (besides the scalar counters)
    tensor_state: ClassVar[tuple[str, ...]] = ()
    #: scalar state keys per parameter
    scalar_state: ClassVar[tuple[str, ...]] = ("step",)
    #: dual averaging (RMDA/RAMDA): restart() resets t, α, W0, V (, U)
    dual_averaging: ClassVar[bool] = False
    #: solvers whose subproblem needs a group-LASSO-family regularizer
    needs_screenable: ClassVar[bool] = False

    def __init__(
        self, params: Iterable[Any], defaults: dict[str, Any], *, backend: str, skip_nonfinite: bool
    ) -> None:
        defaults = dict(defaults)
        defaults.setdefault("regularizer", None)
        defaults["backend"] = check_backend(backend)
        self.skip_nonfinite = bool(skip_nonfinite)
        #: number of steps skipped because a gradient held NaN/Inf
        self.skipped_steps = 0
        super().__init__(params, defaults)

    # -- validation ------------------------------------------------------------------------------
    def validate_group(self, group: dict[str, Any]) -> None:
        """Check this algorithm's hyperparameters in ``group`` (override; raise ValueError)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group = dict(param_group)
        reg = param_group.get("regularizer", self.defaults.get("regularizer"))
        if isinstance(reg, dict):
            reg = regularizer_from_dict(reg)
        if reg is not None and not isinstance(reg, Regularizer):
            raise ValueError(
                f"regularizer: expected a structsparse regularizer or None, got {type(reg).__name__}"
            )
        param_group["regularizer"] = reg
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        check_backend(group["backend"])
        self.validate_group(group)
        for j, p in enumerate(group["params"]):
            where = f"param_groups[{index}]['params'][{j}]"
            if not (p.is_floating_point()):
                raise ValueError(
                    f"{where}: {type(self).__name__} needs real floating parameters, got {p.dtype}"
                )
            if reg is not None:
                reg.check(p, where)
            distributed.check_param(p, reg, where)
        if reg is not None and self.needs_screenable_for(group) and not reg.screenable:
            raise ValueError(
                f"regularizer: {type(reg).__name__} has no exact group solve; "
                f"{type(self).__name__} with solver={group.get('solver', 'exact')!r} supports "
                "GroupLasso and L1 (use solver='pg' for other regularizers)"
            )

    def needs_screenable_for(self, group: dict[str, Any]) -> bool:
        return group.get("solver") == "exact"

    # -- state -------------------------------------------------------------------------------------
    @staticmethod
    def zero_state(p: Tensor) -> Tensor:
        """A zero state tensor for ``p``: contiguous, fp32 for half parameters; a DTensor with
        ``p``'s placements when ``p`` is one (FSDP2 state)."""
        return torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.contiguous_format)

    def init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        """Create the state of ``p`` (override to set anchors etc.)."""
        for k in self.tensor_state:
            state[k] = self.zero_state(p)
        for k in self.scalar_state:
            state[k] = 0 if k == "step" else 0.0

    def group_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Called every step, before the step, for each parameter with a gradient (the parameter
        itself, not a shard's local view): override to add state that depends on the param group
        (DessiLBI's Z and Γ for regularized groups)."""

    def state_keys(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(tensor keys, scalar keys)`` of the state of a parameter of ``group`` (override when
        they differ between groups, e.g. DessiLBI's regularized vs unregularized parameters)."""
        return self.tensor_state, self.scalar_state

    def restart(self) -> None:
        """docs/math.md §7 restart of every param group (lr untouched). Dual averaging only:
        ``t ← 0, α ← 0, W0 ← W, V ← 0, U ← 0``; ProxSGD/ProxGen/ProxSSI have nothing to restart."""
        if not self.dual_averaging:
            return
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                st["step"] = 0
                st["alpha"] = 0.0
                st["anchor"].copy_(p.detach())
                for k in ("grad_sum", "sq_grad_sum"):
                    if k in st:
                        st[k].zero_()

    # -- step --------------------------------------------------------------------------------------
    def _collect(self, group: dict[str, Any], gi: int) -> list[tuple[Tensor, Tensor]]:
        out = []
        for j, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(param_groups[{gi}]['params'][{j}])"
                )
            out.append((p, p.grad))
        return out

    def _all_finite(self, grads: list[Tensor]) -> bool:
        return distributed.all_finite(grads, self._all_finite_local)

    @staticmethod
    def _all_finite_local(grads: list[Tensor]) -> bool:
        by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
        for g in grads:
            if g.numel():  # the inf-norm of an empty tensor raises
                by_device[g.device].append(g)
        for device, gs in by_device.items():
            if device.type == "cpu" and _fast_all_finite is not None:
                if not _fast_all_finite(gs):
                    return False
                continue
            norms = torch._foreach_norm(gs, float("inf"))
            if not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
                return False
        return True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pairs = [self._collect(g, i) for i, g in enumerate(self.param_groups)]
        if self.skip_nonfinite:
            grads = [g for ps in pairs for _, g in ps]
            if grads and not self._all_finite(grads):
                self.skipped_steps += 1
                warnings.warn(
                    f"{type(self).__name__}: non-finite gradient, step skipped "
                    f"(parameters and state unchanged; {self.skipped_steps} skipped so far)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return loss
        for group, ps in zip(self.param_groups, pairs):
            buckets: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor]]] = defaultdict(list)
            for p, g in ps:
                st = self.state[p]
                if len(st) == 0:
                    self.init_state(p, st)
                self.group_state(p, st, group)
                buckets[(p.device, p.dtype)].append((p, g))
            for (device, _), bucket in buckets.items():
                backend = resolve(
                    group["backend"], device, f"{self.algorithm}_step" if self.algorithm else None
                )
                params = [p for p, _ in bucket]
                grads = [g for _, g in bucket]
                states = [self.state[p] for p in params]
                # FSDP2 shards: local views + global group reductions (structsparse.distributed)
                with distributed.sharded_bucket(group["regularizer"], params, grads, states) as local:
                    if local[0] is params or getattr(backend, "supports_shards", False):
                        self.step_bucket(backend, group, *local)
                    elif backend is not reference and self.groups_are_independent(group):
                        # a backend without shard support steps whole groups on their owners
                        with distributed.owned_bucket(group["regularizer"], *local) as (reg, *owned):
                            self.step_bucket(backend, {**group, "regularizer": reg}, *owned)
                    else:
                        self.step_bucket(reference, group, *local)
        return loss

    def groups_are_independent(self, group: dict[str, Any]) -> bool:
        """Whether a step of ``group`` computes each group from that group's elements alone (then a
        backend without shard support can step FSDP2 shards on whole-group owners,
        :func:`structsparse.distributed.owned_bucket`); False for steps that also need sums over a
        whole tensor (DessiLBI's magnitude scaling), which run on ``reference``."""
        return True

    def step_bucket(
        self,
        backend: Any,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> None:
        raise NotImplementedError

    # -- state_dict ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            reg = g.get("regularizer")
            g["regularizer"] = None if reg is None else reg.to_dict()
        sd["algorithm"] = self.algorithm
        sd["skipped_steps"] = self.skipped_steps
        # torch.distributed.checkpoint keeps only "state" and "param_groups": repeat both there
        for g in sd["param_groups"]:
            g["algorithm"] = self.algorithm
            g["skipped_steps"] = self.skipped_steps
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        sd["param_groups"] = [dict(g) for g in sd["param_groups"]]
        in_groups = [(g.pop("algorithm", None), g.pop("skipped_steps", 0)) for g in sd["param_groups"]]
        if "algorithm" not in sd and in_groups:  # saved through torch.distributed.checkpoint
            sd["algorithm"], sd["skipped_steps"] = in_groups[0]
        algo = sd.pop("algorithm", None)
        if algo != self.algorithm:
            raise ValueError(
                f"state_dict: saved by optimizer {algo!r}, cannot be loaded into "
                f"{type(self).__name__} ({self.algorithm!r})"
            )
        skipped = sd.pop("skipped_steps", 0)
        groups = []
        for g in sd["param_groups"]:
            g = dict(g)
            g["regularizer"] = regularizer_from_dict(g.get("regularizer"))
            groups.append(g)
        sd["param_groups"] = groups
        if len(groups) != len(self.param_groups):
            raise ValueError("state_dict: has a different number of parameter groups")
        saved_ids = [i for g in groups for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        if len(saved_ids) != len(params):
            raise ValueError("state_dict: has a different number of parameters")
        keys_of = {pid: self.state_keys(g) for g in groups for pid in g["params"]}
        saved_state = sd["state"]
        for pid, p in zip(saved_ids, params):
            st = saved_state.get(pid)
            if st is None:
                continue
            expected = set(keys_of[pid][0]) | set(keys_of[pid][1])
            if set(st) != expected:
                raise ValueError(
                    f"state_dict: state keys {sorted(st)} do not match {type(self).__name__}'s "
                    f"{sorted(expected)}"
                )
            for k in keys_of[pid][0]:
                if tuple(st[k].shape) != tuple(p.shape):
                    raise ValueError(
                        f"state_dict: state {k!r} has shape {tuple(st[k].shape)}, parameter has "
                        f"{tuple(p.shape)}"
                    )
        super().load_state_dict(sd)
        # torch casts floating state to the parameter's dtype: keep fp32 state for fp16/bf16
        for pid, p in zip(saved_ids, params):
            st = saved_state.get(pid)
            if st is None:
                continue
            dt = state_dtype(p)
            for k in keys_of[pid][0]:
                self.state[p][k] = st[k].to(device=p.device, dtype=dt, copy=True)
        self.skipped_steps = int(skipped)
