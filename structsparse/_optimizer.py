"""Shared machinery of the structsparse optimizers.

The optimizer classes are thin: hyperparameter validation, lazy state creation, per-tensor
scalars (t, α), restarts and dispatch of one backend call per bucket of tensors. The math lives in
:mod:`structsparse.backends.reference` (and the fused backends that mirror it).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import distributed, ops
from .backends import check_backend, preload, reference, resolve
from .regularizers import Regularizer, regularizer_from_dict

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _load_fast_all_finite():
    """The C++ extension's one-pass finiteness check (torch._foreach_norm(inf) costs more than a
    fused step on CPU); None when the extension is not built."""
    from . import ops

    return torch.ops.structsparse.all_finite if ops.loaded()[0] else None


_fast_all_finite = _load_fast_all_finite()


def _verdict(g: Tensor) -> bool | Tensor:
    """Whether ``g`` is finite: a bool on CPU, a 0-d device tensor elsewhere (finite iff its
    max-abs is; read once per step for all gradients together, so the backward does not sync)."""
    if not g.numel():
        return True
    if g.device.type == "cpu":
        # one intra-op thread: the gradient was just written (in cache), and a parallel region
        # per parameter wakes the pool once per parameter (bench/nonfinite_check.py)
        n = torch.get_num_threads()
        if n > 1:
            torch.set_num_threads(1)
        try:
            if _fast_all_finite is not None:
                return bool(_fast_all_finite([g]))
            return bool(torch.isfinite(g).all())
        finally:
            if n > 1:
                torch.set_num_threads(n)
    return torch.linalg.vector_norm(g, float("inf"))


def _record_check(ref: weakref.ref, p: Tensor) -> None:
    """Post-accumulate-grad hook: check the gradient just accumulated (still in cache) and record
    the verdict with the gradient's identity and version, so step() re-reads only gradients
    changed since. Does nothing when the optimizer's check is off or under torch.compile."""
    opt = ref()
    if opt is None or not opt.skip_nonfinite or torch.compiler.is_compiling():
        return
    g = p.grad
    if g is None or g.is_sparse or distributed.is_sharded(g):
        return
    opt._grad_checks[id(p)] = (weakref.ref(g), g._version, _verdict(g))


def _remove_hooks(handles: list[Any]) -> None:
    for h in handles:
        h.remove()
    handles.clear()


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
    if solver not in ("auto", "pg", "exact"):
        raise ValueError(f"solver: unknown solver {solver!r}; expected 'auto', 'pg' or 'exact'")
    return solver


def check_step_count(name: str, value: Any) -> int:
    """A saved step counter: a non-negative integer (a Python int or an integral 0-d tensor)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        v = value.item()
        value = int(v) if float(v).is_integer() else v
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= 0)")
    return int(value)


#: param-group keys that torch's LR schedulers (and SWA) add: allowed besides the hyperparameters
SCHEDULER_KEYS = frozenset(
    ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum", "swa_lr", "base_lr")
)
#: param-group keys that are not hyperparameters
PARAM_KEYS = frozenset(("params", "param_names"))
#: keys the state_dict repeats in every param group (torch.distributed.checkpoint keeps only
#: "state" and "param_groups")
SAVED_KEYS = ("algorithm", "skipped_steps")


_MISSING = object()
_UNSUPPORTED = {
    "capturable": "the step counters (t, alpha) are host numbers, so a step cannot be captured in "
    "a CUDA graph",
    "differentiable": "the step updates parameters and state in place under torch.no_grad()",
}


def _unchanged(snapshot: dict[str, Any], group: dict[str, Any]) -> bool:
    """Whether ``group``'s hyperparameters are those of ``snapshot`` (a few comparisons per group)."""
    if len(snapshot) + 1 != len(group):
        return False
    for k, v in snapshot.items():
        cur = group.get(k, _MISSING)
        if cur is v:
            continue
        if isinstance(v, Tensor) or isinstance(cur, Tensor) or cur != v:
            return False
    return True


def _param_tensors(params: Any) -> list[Any]:
    """The tensors of a param group's ``params`` (also given as ``(name, tensor)`` pairs)."""
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, set):
        return []  # torch raises its own error for a set
    return [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]


def resolve_solver(solver: str, reg: Any) -> str:
    """The subproblem solver a step runs: ``"auto"`` is ``"exact"`` where the regularizer has an
    exact solve (or there is none), ``"pg"`` otherwise (NuclearNorm); the others as given."""
    if solver != "auto":
        return solver
    return "exact" if reg is None or reg.exact_solve else "pg"


def distributed_world() -> int:
    """The default process group's size (1 without one)."""
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


class StructuredOptimizer(torch.optim.Optimizer):
    """Base class of every structsparse optimizer (see the module docstring).

    torch.optim conventions (docs/optimizers.md): every hyperparameter of a param group is checked
    at construction, by ``add_param_group``, by ``load_state_dict`` and, when it changed, by
    ``step``; an unknown key in a param group raises. ``maximize=True`` steps on ``-grad``;
    ``foreach`` is accepted and has no effect (every backend already steps a bucket of tensors per
    call); ``capturable`` and ``differentiable`` (constructor only) must be False.
    """

    #: torch.amp.GradScaler.step hands its found_inf (and grad_scale) to step() instead of
    #: unscaling and checking the gradients itself; step() then makes no check pass of its own
    _step_supports_amp_scaling: ClassVar[bool] = True
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
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        backend: str,
        skip_nonfinite: bool,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(defaults)
        defaults.setdefault("regularizer", None)
        defaults["backend"] = check_backend(backend)
        defaults.update(maximize=maximize, foreach=foreach)
        self._check_flags(defaults)
        # not param-group keys: torch.compile sets a group's "capturable" to True while tracing
        for k, v in (("capturable", capturable), ("differentiable", differentiable)):
            if v is not False:
                raise ValueError(f"{k}={v!r} is not supported: {_UNSUPPORTED[k]}")
        self.skip_nonfinite = bool(skip_nonfinite)
        self._skipped = 0
        self._init_grad_checks()
        # steps skipped inside torch.compile, counted on the device (see _masked_step)
        self._skip_counts: dict[str, Tensor] = {}
        # per param group: the hyperparameters last validated (step revalidates a changed group)
        self._validated: list[dict[str, Any] | None] = []
        # the shards of the buckets a step runs on, for the global group reductions
        self._reduction = distributed.ReductionContext()
        super().__init__(params, defaults)

    def _init_grad_checks(self) -> None:
        """The NaN/Inf check's per-gradient verdicts and the hooks that take them during backward
        (removed when the optimizer is collected; not part of pickles or deep copies, which
        register their own)."""
        # id(param) -> (weakref to the gradient, its _version, verdict)
        self._grad_checks: dict[int, tuple[Any, int, bool | Tensor]] = {}
        self._grad_hooks: list[Any] = []
        weakref.finalize(self, _remove_hooks, self._grad_hooks)

    def _hook_params(self, params: Iterable[Tensor]) -> None:
        hook = functools.partial(_record_check, weakref.ref(self))
        for p in params:
            if isinstance(p, Tensor) and p.requires_grad and p.is_leaf:
                self._grad_hooks.append(p.register_post_accumulate_grad_hook(hook))

    @property
    def skipped_steps(self) -> int:
        """Number of steps skipped because a gradient held NaN/Inf."""
        n = self._skipped
        for t in self._skip_counts.values():
            n += int(t)
        return n

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped = int(value)
        self._skip_counts = {}

    # -- pickling / copy.deepcopy ----------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["skip_nonfinite"] = self.skip_nonfinite
        state["skipped_steps"] = self.skipped_steps
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # also called by torch's load_state_dict with state and param_groups only
        state = dict(state)
        skip = state.pop("skip_nonfinite", None)
        skipped = state.pop("skipped_steps", None)
        super().__setstate__(state)
        d = self.__dict__
        if skip is not None or "skip_nonfinite" not in d:
            self.skip_nonfinite = True if skip is None else bool(skip)
        d.setdefault("_skipped", 0)
        d.setdefault("_skip_counts", {})
        d.setdefault("_reduction", distributed.ReductionContext())
        if skipped is not None:
            self.skipped_steps = skipped
        d["_validated"] = [None] * len(self.param_groups)
        if "_grad_checks" not in d:  # a copy or an unpickled optimizer (not load_state_dict)
            self._init_grad_checks()
            for g in self.param_groups:
                self._hook_params(g["params"])

    # -- validation ------------------------------------------------------------------------------
    def validate_group(self, group: dict[str, Any]) -> None:
        """Check this algorithm's hyperparameters in ``group`` (override; raise ValueError)."""

    @staticmethod
    def _check_flags(group: dict[str, Any]) -> None:
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize: expected a bool, got {group['maximize']!r}")
        if group["foreach"] not in (None, True, False):
            raise ValueError(f"foreach: expected None or a bool, got {group['foreach']!r}")

    def _check_group(self, group: dict[str, Any], index: int, *, params: bool) -> None:
        """Every check of a param group, with the constructor's errors; ``params``: also check
        the parameters against the group's regularizer."""
        check_backend(group["backend"])
        self._check_flags(group)
        reg = group["regularizer"]
        if reg is not None and not isinstance(reg, Regularizer):
            raise ValueError(
                f"regularizer: expected a structsparse regularizer or None, got {type(reg).__name__}"
            )
        self.validate_group(group)
        if params:
            for j, p in enumerate(group["params"]):
                where = f"param_groups[{index}]['params'][{j}]"
                if not (p.is_floating_point()):
                    raise ValueError(
                        f"{where}: {type(self).__name__} needs real floating parameters, got {p.dtype}"
                    )
                if reg is not None:
                    reg.check(p, where)
                distributed.check_param(p, reg, where)
        if reg is not None and self.needs_screenable_for(group) and not reg.exact_solve:
            raise ValueError(
                f"regularizer: {type(reg).__name__} has no exact group solve; "
                f"{type(self).__name__} with solver={group.get('solver', 'exact')!r} supports "
                "GroupLasso, L1, SparseGroupLasso, GroupMCP and MCP (use solver='pg' or 'auto' "
                "for other regularizers)"
            )

    def _unknown_keys(self, group: dict[str, Any], index: int) -> None:
        unknown = sorted(set(group) - set(self.defaults) - PARAM_KEYS - SCHEDULER_KEYS)
        if unknown:
            known = sorted(set(self.defaults) - {"backend", "regularizer"})
            raise ValueError(
                f"param_groups[{index}]: {type(self).__name__} has no hyperparameter "
                f"{', '.join(map(repr, unknown))} (its hyperparameters: {', '.join(known)}, "
                "regularizer, backend)"
            )

    def _remember(self, index: int) -> None:
        group = self.param_groups[index]
        while len(self._validated) <= index:
            self._validated.append(None)
        self._validated[index] = {k: v for k, v in group.items() if k != "params"}

    def _revalidate(self) -> None:
        """Validate the param groups whose hyperparameters changed since the last check (an edit
        of ``param_groups`` after construction gets the constructor's errors at ``step``)."""
        snaps = self._validated
        for i, group in enumerate(self.param_groups):
            snap = snaps[i] if i < len(snaps) else None
            if snap is not None and _unchanged(snap, group):
                continue
            reg = group.get("regularizer")
            new_reg = snap is None or snap.get("regularizer") is not reg
            if isinstance(reg, dict):
                group["regularizer"] = regularizer_from_dict(reg)
            self._check_group(group, i, params=new_reg)
            self._remember(i)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        param_group = dict(param_group)
        index = len(self.param_groups)
        self._unknown_keys(param_group, index)
        if not isinstance(param_group.get("params"), (Tensor, set)):
            param_group["params"] = list(param_group["params"])
        first: dict[int, int] = {}
        for j, p in enumerate(_param_tensors(param_group["params"])):
            if id(p) in first:
                raise ValueError(
                    f"param_groups[{index}]['params'][{j}] is the same tensor as "
                    f"param_groups[{index}]['params'][{first[id(p)]}]: a parameter listed twice "
                    "would be stepped twice"
                )
            first[id(p)] = j
        reg = param_group.get("regularizer", self.defaults.get("regularizer"))
        if isinstance(reg, dict):
            reg = regularizer_from_dict(reg)
        param_group["regularizer"] = reg
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group, index, params=True)
        except Exception:
            self.param_groups.pop()
            raise
        self._remember(index)
        for device in {p.device for p in group["params"]}:
            preload(group["backend"], device, f"{self.algorithm}_step" if self.algorithm else None)
        self._hook_params(group["params"])

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
        """Restart of every param group (docs/math.md): nothing to restart for ProxSGD, ProxGen,
        ProxSSI and DessiLBI; the dual-averaging optimizers (:class:`~.optim._dual_averaging.
        DualAveraging`) reset ``t``, ``α``, ``W0`` and their gradient sums."""

    # -- step --------------------------------------------------------------------------------------
    def _collect(self, group: dict[str, Any], gi: int) -> list[tuple[Tensor, Tensor]]:
        out = []
        for j, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.is_meta:
                raise RuntimeError(
                    f"{type(self).__name__}: param_groups[{gi}]['params'][{j}] is a meta tensor "
                    "(no data): materialize the model (e.g. model.to_empty(device=...) and its "
                    "initialization) before stepping"
                )
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
        self._revalidate()
        pairs = [self._collect(g, i) for i, g in enumerate(self.param_groups)]
        grads = [g for ps in pairs for _, g in ps]
        if not grads:
            return loss
        # torch.amp.GradScaler.step (see _step_supports_amp_scaling) sets found_inf, and grad_scale
        # unless the gradients were already unscaled: its check replaces this optimizer's
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None:
            if torch.compiler.is_compiling():
                raise RuntimeError(
                    f"{type(self).__name__}: a GradScaler step cannot be compiled; compile the "
                    "model and call scaler.step(opt) eagerly"
                )
            if bool(found_inf.item() != 0):
                return loss  # the scaler's skip: the scaler lowers its scale
            scale = getattr(self, "grad_scale", None)
            if scale is not None:
                self._unscale(grads, scale)
        elif self.skip_nonfinite:
            if torch.compiler.is_compiling():
                self._masked_step(pairs, grads)
                return loss
            if not self._grads_finite([pg for ps in pairs for pg in ps]):
                self._skipped += 1
                warnings.warn(
                    f"{type(self).__name__}: non-finite gradient, step skipped "
                    f"(parameters and state unchanged; {self.skipped_steps} skipped so far)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return loss
        self._prepare(pairs)
        self._step_pairs(pairs)
        return loss

    @staticmethod
    def _unscale(grads: list[Tensor], scale: Tensor) -> None:
        """Divide the gradients by GradScaler's scale in place (as its ``unscale_`` would):
        multiplied by the float32 reciprocal of the float64 scale, exact for a power-of-two scale."""
        inv = scale.double().reciprocal().float()
        by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
        for g in grads:
            by_device[g.device].append(g)
        for device, gs in by_device.items():
            torch._foreach_mul_(gs, inv.to(device))

    def _grads_finite(self, pairs: list[tuple[Tensor, Tensor]]) -> bool:
        """The NaN/Inf check of step(): a gradient whose check was taken when backward produced it
        (``_record_check``) and which is the same tensor at the same version (not replaced, not
        modified in place since) is not read again; the others are read and their verdicts kept.
        In a process group of several ranks, or with sharded (DTensor) gradients, every gradient is
        read (DDP reduces gradients after the hook has run, without a version change; the hook
        skips DTensors) and the verdict is agreed across ranks."""
        if distributed_world() > 1 or any(distributed.is_sharded(g) for _, g in pairs):
            return self._all_finite([g for _, g in pairs])
        verdicts = self._grad_checks
        todo: list[tuple[Tensor, Tensor]] = []
        flags: list[Tensor] = []
        for p, g in pairs:
            rec = verdicts.get(id(p))
            if rec is not None and rec[0]() is g and rec[1] == g._version:
                ok = rec[2]
                if ok is False:
                    return False
                if ok is not True:
                    flags.append(ok)
            else:
                todo.append((p, g))
        if flags:
            dev = flags[0].device
            if not bool(torch.isfinite(torch.stack([f.float().to(dev) for f in flags])).all()):
                return False
        if todo:
            if not self._all_finite_local([g for _, g in todo]):
                return False
            for p, g in todo:
                verdicts[id(p)] = (weakref.ref(g), g._version, True)
        return True

    def _prepare(self, pairs: list[list[tuple[Tensor, Tensor]]]) -> None:
        for group, ps in zip(self.param_groups, pairs):
            for p, _ in ps:
                st = self.state[p]
                if len(st) == 0:
                    self.init_state(p, st)
                self.group_state(p, st, group)

    def _masked_step(self, pairs: list[list[tuple[Tensor, Tensor]]], grads: list[Tensor]) -> None:
        """The NaN/Inf check inside ``torch.compile``: a graph cannot branch on the gradients'
        values, so the step runs and every parameter and state tensor is then selected between
        its new and its old value, and every scalar state (the host counters ``t``, ``α``)
        between its new and old value through :func:`structsparse.ops.flag_value` (an unbacked
        symbolic int in the graph): a non-finite gradient leaves all of them as they were, as
        in eager. The skip is counted on the device and read by ``skipped_steps``."""
        flags = [torch.isfinite(g).all() for g in grads]
        ok = flags[0] if len(flags) == 1 else torch.stack([f.to(flags[0].device) for f in flags]).all()
        self._prepare(pairs)
        tensors: list[Tensor] = []
        scalars: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for ps in pairs:
            for p, _ in ps:
                st = self.state[p]
                tensors.append(p)
                tensors += [v for v in st.values() if isinstance(v, Tensor)]
                scalars.append((st, {k: v for k, v in st.items() if not isinstance(v, Tensor)}))
        old = [t.clone() for t in tensors]
        self._step_pairs(pairs)
        for t, o in zip(tensors, old):
            t.copy_(torch.where(ok.to(t.device), t, o))
        kept = ops.flag_value(ok)
        for st, before in scalars:
            for k, v in before.items():
                # exact for kept in {0, 1}: new·1 + old·0 and new·0 + old
                st[k] = st[k] * kept + v * (1 - kept)
        key = str(ok.device)
        count = self._skip_counts.get(key)
        if count is None:
            count = torch.zeros((), dtype=torch.int64, device=ok.device)
            self._skip_counts[key] = count
        count.add_((~ok).to(torch.int64))

    def _step_pairs(self, pairs: list[list[tuple[Tensor, Tensor]]]) -> None:
        for group, ps in zip(self.param_groups, pairs):
            buckets: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor]]] = defaultdict(list)
            maximize = group["maximize"]
            for p, g in ps:
                buckets[(p.device, p.dtype)].append((p, -g if maximize else g))
            for (device, _), bucket in buckets.items():
                backend = resolve(
                    group["backend"], device, f"{self.algorithm}_step" if self.algorithm else None
                )
                if backend is not reference and not self.backend_supports(backend, group, device):
                    backend = reference  # what a fused backend declines runs on the reference
                params = [p for p, _ in bucket]
                grads = [g for _, g in bucket]
                states = [self.state[p] for p in params]
                # FSDP2 shards: local views + global group reductions (structsparse.distributed),
                # the shards registered in this optimizer's reduction context
                with distributed.sharded_bucket(
                    group["regularizer"], params, grads, states, self._reduction
                ) as local:
                    if local[0] is params or getattr(backend, "supports_shards", False):
                        self.step_bucket(backend, group, *local)
                    elif backend is not reference and self.groups_are_independent(group):
                        # a backend without shard support steps whole groups on their owners
                        with distributed.owned_bucket(group["regularizer"], *local) as (reg, *owned):
                            self.step_bucket(backend, {**group, "regularizer": reg}, *owned)
                    else:
                        self.step_bucket(reference, group, *local)

    def backend_supports(self, backend: Any, group: dict[str, Any], device: torch.device) -> bool:
        """Whether ``backend``'s kernels run this group's buckets (its ``supports``: the one place
        a backend declares what it runs; :meth:`_step_pairs` steps the rest on ``reference``)."""
        supports = getattr(backend, "supports", None)
        if supports is None or not self.algorithm:
            return True
        return supports(
            self.algorithm,
            group["regularizer"],
            solver=self.kernel_solver(group),
            magnitude_scaling=bool(group.get("magnitude_scaling", False)),
            device=device,
        )

    def kernel_solver(self, group: dict[str, Any]) -> str | None:
        """The subproblem solver a step of ``group`` runs (None: the step has no subproblem)."""
        solver = group.get("solver")
        return None if solver is None else resolve_solver(solver, group["regularizer"])

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
    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict plus ``algorithm``, ``skipped_steps`` and the regularizers as plain
        data (loadable with ``torch.load(weights_only=True)``); post-hooks see the finished dict."""
        post_hooks = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = OrderedDict()
        try:
            sd = super().state_dict()
        finally:
            self._optimizer_state_dict_post_hooks = post_hooks
        for g in sd["param_groups"]:
            reg = g.get("regularizer")
            g["regularizer"] = None if reg is None else reg.to_dict()
        skipped = self.skipped_steps
        sd["algorithm"] = self.algorithm
        sd["skipped_steps"] = skipped
        # torch.distributed.checkpoint keeps only "state" and "param_groups": repeat both there
        for g in sd["param_groups"]:
            g["algorithm"] = self.algorithm
            g["skipped_steps"] = skipped
        for hook in post_hooks.values():
            out = hook(self, sd)
            if out is not None:
                sd = out
        return sd

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of the same algorithm. Pre-hooks run first (they may rewrite old
        keys); then everything is checked before anything is modified: hyperparameters (the
        constructor's errors), the state keys, tensor state (real floating, the parameter's
        shape) and scalar state (``step`` an integer >= 0, ``alpha`` finite >= 0). Each param
        group keeps this optimizer's ``backend`` (the machine's choice, not the checkpoint's)."""
        sd = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = pre_hook(self, sd)
            if out is not None:
                sd = out
        sd = dict(sd)
        saved_groups = [dict(g) for g in sd["param_groups"]]
        in_groups = [tuple(g.pop(k, None) for k in SAVED_KEYS) for g in saved_groups]
        if "algorithm" not in sd and in_groups:  # saved through torch.distributed.checkpoint
            sd["algorithm"], sd["skipped_steps"] = in_groups[0]
        algo = sd.pop("algorithm", None)
        if algo != self.algorithm:
            raise ValueError(
                f"state_dict: saved by optimizer {algo!r}, cannot be loaded into "
                f"{type(self).__name__} ({self.algorithm!r})"
            )
        skipped = sd.pop("skipped_steps", None)
        skipped = check_step_count("state_dict: skipped_steps", 0 if skipped is None else skipped)
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("state_dict: has a different number of parameter groups")
        groups = []
        for i, (g, cur) in enumerate(zip(saved_groups, self.param_groups)):
            if len(g["params"]) != len(cur["params"]):
                raise ValueError(
                    f"state_dict: param_groups[{i}] has {len(g['params'])} parameters, "
                    f"this optimizer's has {len(cur['params'])}"
                )
            g["regularizer"] = regularizer_from_dict(g.get("regularizer"))
            for k, v in cur.items():  # keys a checkpoint of an older version lacks
                if k != "params":
                    g.setdefault(k, v)
            g["backend"] = cur["backend"]
            try:
                self._check_group({**g, "params": cur["params"]}, i, params=True)
            except ValueError as e:
                raise ValueError(f"state_dict: param_groups[{i}]: {e}") from None
            groups.append(g)
        saved_ids = [i for g in groups for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        keys_of = {pid: self.state_keys(g) for g in groups for pid in g["params"]}
        saved_state = dict(sd["state"])
        for pid, p in zip(saved_ids, params):
            st = saved_state.get(pid)
            if st is not None:
                saved_state[pid] = self._checked_state(st, keys_of[pid], p, pid)
        sd["state"] = saved_state
        sd["param_groups"] = groups
        # the hooks ran above: torch's load must not run them again
        pre_hooks = self._optimizer_load_state_dict_pre_hooks
        post_hooks = self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            super().load_state_dict(sd)
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre_hooks
            self._optimizer_load_state_dict_post_hooks = post_hooks
        # torch casts floating state to the parameter's dtype: keep fp32 state for fp16/bf16
        for pid, p in zip(saved_ids, params):
            st = saved_state.get(pid)
            if st is None:
                continue
            dt = state_dtype(p)
            for k in keys_of[pid][0]:
                self.state[p][k] = st[k].to(device=p.device, dtype=dt, copy=True)
        self.skipped_steps = skipped
        for i in range(len(self.param_groups)):
            self._remember(i)
        for post_hook in post_hooks.values():
            post_hook(self)

    def _checked_state(
        self, st: Any, keys: tuple[tuple[str, ...], tuple[str, ...]], p: Tensor, pid: Any
    ) -> dict[str, Any]:
        """A validated copy of a parameter's saved state (scalars normalized to int/float)."""
        if not isinstance(st, dict):
            raise ValueError(f"state_dict: state[{pid!r}] is a {type(st).__name__}, not a dict")
        tensor_keys, scalar_keys = keys
        expected = set(tensor_keys) | set(scalar_keys)
        if set(st) != expected:
            raise ValueError(
                f"state_dict: state keys {sorted(st)} do not match {type(self).__name__}'s {sorted(expected)}"
            )
        out = dict(st)
        for k in tensor_keys:
            t = st[k]
            if not isinstance(t, Tensor):
                raise ValueError(f"state_dict: state {k!r} is a {type(t).__name__}, not a tensor")
            if t.is_complex() or not t.is_floating_point():
                raise ValueError(
                    f"state_dict: state {k!r} has dtype {t.dtype}; expected a real floating tensor"
                )
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"state_dict: state {k!r} has shape {tuple(t.shape)}, parameter has {tuple(p.shape)}"
                )
        for k in scalar_keys:
            if k == "step":
                out[k] = check_step_count(f"state_dict: state {k!r}", st[k])
            else:
                out[k] = check_number(f"state_dict: state {k!r}", st[k], low=0.0)
        return out
