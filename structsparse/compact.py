"""Compaction: turn the structure a sparse training found into a smaller dense model with the same
outputs.

A channel (a conv filter, a Linear neuron, an attention head) can be cut out of a network without
changing its outputs when

- **consumer side**: every layer that reads the channel has zero weights on it (input-wise groups
  of every consumer in the channel's coupled group are zero); or
- **producer side**: every layer that writes the channel has zero weights on it, so the channel
  carries a constant (its bias, shifted by BatchNorm, through the activation); the constant is
  folded into the bias of each consumer where that is exact: a Linear, or a convolution that does
  not pad with zeros (a zero-padded convolution sees the constant inside the image and zeros at
  its border, so no bias reproduces it) — unless the constant is exactly zero, which needs no fold.

Which layers are coupled (a residual addition ties the output channels of every block of a stage,
a flatten ties a conv's channel to ``H·W`` columns of a Linear, an attention block ties q, k, v
and the output projection) comes from Torch-Pruning's dependency graph (the ``compact`` extra:
``pip install "structsparse[compact]"``), which also performs the cut. This module decides, per
channel, whether the cut is exact, folds the constants, cuts, checks the outputs, and reports
what it removed and what it kept and why.

Entry points: :func:`compact` (a module in, a smaller module out), :func:`model_stats`
(parameters, MACs, CPU latency) and :func:`compact_run` (a ``structsparse train`` run folder).
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CompactReport",
    "compact",
    "model_stats",
    "latency_ms",
    "compact_run",
    "load_compact",
    "compact_table",
]

_EXTRA_HINT = 'structsparse.compact needs Torch-Pruning: pip install "structsparse[compact]"'

# channel-local elementwise ops (autograd node names without the trailing version digit): an
# op outside this list may mix channels, and a group that passes through it is kept whole
_LOCAL_OPS = {
    "Relu",
    "Relu6",
    "Gelu",
    "Silu",
    "Sigmoid",
    "Tanh",
    "Hardtanh",
    "LeakyRelu",
    "Elu",
    "Hardswish",
    "Hardsigmoid",
    "Mish",
    "Softplus",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Addmm",
    "Mm",
    "T",
    "Transpose",
    "Permute",
    "Clone",
    "View",
    "UnsafeView",
    "Reshape",
    "Expand",
    "Squeeze",
    "Unsqueeze",
    "MaxPool2DWithIndices",
    "MaxPool1DWithIndices",
    "MaxPool3DWithIndices",
    "AvgPool2D",
    "AvgPool1D",
    "AvgPool3D",
    "AdaptiveAvgPool2D",
    "AdaptiveAvgPool1D",
    "AdaptiveMaxPool2D",
    "Mean",
    "Sum",
    "Cat",
    "Split",
    "SplitWithSizes",
    "Slice",
    "Select",
    "Unbind",
    "ToCopy",
    "Contiguous",
}
# the ops of scaled-dot-product attention: a group through them is cut by whole heads only
_ATTENTION_OPS = {"Softmax", "Bmm", "Matmul", "Baddbmm", "ScaledDotProductAttention"}


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise ImportError(_EXTRA_HINT) from e
    return tp


@dataclass
class CompactReport:
    """What :func:`compact` did.

    - ``layers``: per layer (qualified name), ``{"before": shape, "after": shape}`` of its weight,
      for the layers whose shape changed;
    - ``removed``: one entry per coupled group that lost channels: its layers, the channels removed
      and how (``"consumer"``: zero inputs of every consumer; ``"producer"``: zero outputs of every
      producer, constant folded or zero);
    - ``kept``: channels with some zero structure that were kept, each with the reason;
    - ``params``, ``macs``: before and after (MACs of one example);
    - ``max_rel_error``: the largest output difference on the example inputs, relative to the
      largest output magnitude.
    """

    layers: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    removed: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)
    max_rel_error: float = 0.0
    passes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "removed": self.removed,
            "kept": self.kept,
            "params": self.params,
            "macs": self.macs,
            "max_rel_error": self.max_rel_error,
            "passes": self.passes,
        }

    def to_markdown(self) -> str:
        lines = ["| | before | after | before / after |", "|---|---:|---:|---:|"]
        for key in ("params", "macs"):
            d = getattr(self, key)
            if d:
                lines.append(
                    f"| {key} | {d['before']:,} | {d['after']:,} | {d['before'] / max(d['after'], 1):.2f}× |"
                )
        lines.append("")
        if self.layers:
            lines += ["| layer | weight before | weight after |", "|---|---|---|"]
            for name, sh in self.layers.items():
                lines.append(
                    f"| {name} | {'×'.join(map(str, sh['before']))} | {'×'.join(map(str, sh['after']))} |"
                )
            lines.append("")
        if self.kept:
            lines += ["| kept: channels of layer | count | group | reason |", "|---|---:|---|---|"]
            for k in self.kept:
                chans = ", ".join(map(str, k["channels"][:8])) + (", …" if len(k["channels"]) > 8 else "")
                lines.append(
                    f"| {k['layer']}: {chans} | {len(k['channels'])} | {k['group']} | {k['reason']} |"
                )
            lines.append("")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


# ---------------------------------------------------------------------------------------------
# analysis of one coupled group
# ---------------------------------------------------------------------------------------------


def _op_name(module: Any) -> str:
    fn = getattr(module, "_grad_fn", "")
    name = fn if isinstance(fn, str) else type(fn).__name__
    name = name.removesuffix("Backward0").removesuffix("Backward1").removesuffix("Backward2")
    return name.rstrip("0123456789")


def _mean_keeps_channels(fn: Any) -> bool:
    """A mean/sum over spatial dims of an ``[N, C, ...]`` tensor (global pooling) keeps channels."""
    dims = getattr(fn, "_saved_dim", None)
    sizes = getattr(fn, "_saved_self_sym_sizes", None)
    if dims is None or sizes is None:
        return False
    nd = len(sizes)
    dims = [d % nd for d in (dims if isinstance(dims, (tuple, list)) else (dims,))]
    return nd >= 3 and 1 not in dims


@dataclass
class _Item:
    module: Any
    name: str
    kind: str  # "producer", "consumer", "bn", "op", "output", "other"
    idxs: list[int]
    roots: list[int]


class _Group:
    def __init__(self, tp: Any, dg: Any, group: Any, names: Mapping[Any, str]) -> None:
        self.group = group
        self.items: list[_Item] = []
        self.blocker: str | None = None
        self.attention = False
        ops = tp.ops.OPTYPE
        for it in group.items:
            dep, idxs, roots = it.dep, list(it.idxs), list(it.root_idxs)
            node = dep.target
            mod = node.module
            name = names.get(mod, repr(mod))
            t = node.type
            out_fn = dg.is_out_channel_pruning_fn(dep.handler)
            if t == ops.OUTPUT:
                kind = "output"
            elif t in (ops.CONV, ops.LINEAR):
                if isinstance(mod, nn.modules.conv._ConvNd) and mod.groups != 1:
                    kind = "other"
                    self.blocker = self.blocker or f"grouped convolution {name}"
                else:
                    kind = "producer" if out_fn else "consumer"
            elif t == ops.BN:
                kind = "bn"
            elif t == ops.PRELU:
                kind = "bn" if mod.num_parameters > 1 else "other"
            elif t in (ops.RESHAPE, ops.CONCAT, ops.SPLIT, ops.SLICE, ops.UNBIND, ops.EXPAND):
                kind = "op"
            elif t == ops.ELEMENTWISE:
                op = _op_name(mod)
                kind = "op"
                if op in _ATTENTION_OPS:
                    self.attention = True
                elif op in ("Mean", "Sum") and not _mean_keeps_channels(node.grad_fn):
                    self.blocker = self.blocker or f"a {op.lower()} over the channel dimension"
                elif op not in _LOCAL_OPS:
                    self.blocker = self.blocker or f"op {op} (may mix channels)"
            else:
                kind = "other"
                self.blocker = self.blocker or f"{type(mod).__name__} {name} (mixes or owns channels)"
            self.items.append(_Item(mod, name, kind, idxs, roots))
        root = self.items[0]
        self.size = len(set(root.roots))
        self.root = root
        self.producers = [i for i in self.items if i.kind == "producer"]
        self.consumers = [i for i in self.items if i.kind == "consumer"]
        # no consumer: the channels are (part of) the model's output
        self.reaches_output = any(i.kind == "output" for i in self.items) or not self.consumers
        self.label = ", ".join(
            dict.fromkeys(i.name for i in self.items if i.kind in ("producer", "consumer"))
        )

    def per_root(self, item: _Item) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, r in zip(item.idxs, item.roots):
            out.setdefault(r, []).append(i)
        return out


def _zero_cols(w: Tensor) -> list[bool]:
    """Per input column (dim 1) of a weight: all zero."""
    return (w.detach() == 0).transpose(0, 1).flatten(1).all(1).tolist()


def _zero_rows(w: Tensor) -> list[bool]:
    """Per output row (dim 0) of a weight: all zero."""
    return (w.detach() == 0).flatten(1).all(1).tolist()


def _foldable(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    if isinstance(mod, nn.modules.conv._ConvNd):
        pad = mod.padding
        no_pad = pad == "valid" or (isinstance(pad, tuple) and all(int(p) == 0 for p in pad))
        return no_pad or mod.padding_mode != "zeros"
    return False


def _constant(x: Tensor, mod: nn.Module, cols: list[int]) -> Tensor | None:
    """The constant the input of ``mod`` holds at ``cols`` (over the batch and every position),
    or None when it is not constant."""
    if isinstance(mod, nn.Linear):
        v = x[..., cols].reshape(-1, len(cols))
    else:
        v = x[:, cols].transpose(0, 1).reshape(len(cols), -1).t()
    c = v[0]
    tol = 1e-6 * (1.0 + c.abs())
    if bool(((v - c).abs() <= tol).all()):
        return c
    return None


def _fold(mod: nn.Module, cols: list[int], c: Tensor) -> None:
    w = mod.weight.detach()
    if isinstance(mod, nn.Linear):
        delta = w[:, cols].to(torch.float64) @ c.to(torch.float64)
    else:
        delta = w[:, cols].to(torch.float64).flatten(2).sum(2) @ c.to(torch.float64)
    if mod.bias is None:
        mod.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    with torch.no_grad():
        mod.bias.add_(delta.to(mod.bias.dtype))


def _heads_of(group: _Group, heads: Mapping[str, int]) -> tuple[str, int] | None:
    for prefix, n in heads.items():
        if all(
            i.name == prefix or i.name.startswith(prefix + ".")
            for i in group.items
            if i.kind in ("producer", "consumer")
        ):
            return prefix, int(n)
    return None


# ---------------------------------------------------------------------------------------------
# compact
# ---------------------------------------------------------------------------------------------


def _as_args(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _flat_out(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flat_out(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat_out(v)]
    return []


def _rel_error(a: Any, b: Any) -> float:
    fa, fb = _flat_out(a), _flat_out(b)
    if len(fa) != len(fb) or any(x.shape != y.shape for x, y in zip(fa, fb)):
        return math.inf
    err = 0.0
    for x, y in zip(fa, fb):
        scale = float(x.detach().abs().max()) if x.numel() else 0.0
        d = float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0
        err = max(err, d / max(scale, 1e-30))
    return err


def _count(tp: Any, model: nn.Module, args: tuple) -> tuple[int, int]:
    one = tuple(a[:1] if isinstance(a, Tensor) and a.dim() > 0 else a for a in args)
    macs, params = tp.utils.count_ops_and_params(model, one if len(one) > 1 else one[0])
    return int(macs), int(params)


def _one_pass(
    tp: Any,
    model: nn.Module,
    args: tuple,
    heads: dict[str, int],
    report: CompactReport,
    orig: dict[str, list[int]],
) -> int:
    """Analyse every coupled group of ``model`` once, fold and cut what is exact, record it in
    ``report``; return the number of channels removed."""
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=args if len(args) > 1 else args[0])
    groups = [_Group(tp, dg, g, names) for g in dg.get_all_groups()]

    # inputs of every consumer, for the constants of producer-side channels
    inputs: dict[nn.Module, Tensor] = {}
    hooks = []
    for g in groups:
        for it in g.consumers:
            if it.module not in inputs:
                inputs[it.module] = None  # type: ignore[assignment]

                def hook(mod, inp, _store=inputs):
                    _store[mod] = inp[0].detach()

                hooks.append(it.module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in hooks:
            h.remove()

    plans = []  # (group, root idxs to cut)
    folded: set[nn.Module] = set()  # consumers whose bias got a fold in this pass
    read: set[nn.Module] = set()  # producers whose constant a cut of this pass relies on
    removed = 0
    for g in groups:
        prod = {id(i): g.per_root(i) for i in g.producers}
        cons = {id(i): g.per_root(i) for i in g.consumers}
        roots = sorted(set(g.root.roots))

        zcol = {id(i): _zero_cols(i.module.weight) for i in g.consumers}
        zrow = {id(i): _zero_rows(i.module.weight) for i in g.producers}

        def zero_in(i, r, cons=cons, zcol=zcol):
            return all(zcol[id(i)][c] for c in cons[id(i)][r])

        def zero_out(i, r, prod=prod, zrow=zrow):
            return all(zrow[id(i)][c] for c in prod[id(i)][r])

        def zero_consumers(r, g=g, cons=cons, zero_in=zero_in):
            return [zero_in(i, r) for i in g.consumers if r in cons[id(i)]]

        def zero_producers(r, g=g, prod=prod, zero_out=zero_out):
            return [zero_out(i, r) for i in g.producers if r in prod[id(i)]]

        unit = 1
        head_owner = None
        if g.attention:
            h = _heads_of(g, heads)
            if h is not None:
                head_owner = h
                unit = g.size // h[1] if h[1] > 0 and g.size % h[1] == 0 else 0
        # the units (channels, or heads of `unit` channels) and their verdicts
        units = [roots[k : k + unit] for k in range(0, len(roots), unit)] if unit else []
        cut: list[int] = []
        kept: dict[str, list[int]] = {}
        decided: list[tuple[list[int], str, list[tuple[nn.Module, list[int], Tensor]]]] = []
        for u in units:
            zc = [z for r in u for z in zero_consumers(r)]
            zp = [z for r in u for z in zero_producers(r)]
            any_zero = any(zc) or any(zp)
            if not any_zero:
                continue

            def keep(reason, u=u, kept=kept):
                kept.setdefault(reason, []).extend(u)

            if g.reaches_output:
                keep("reaches the model's output")
                continue
            if g.blocker is not None:
                keep(f"the group passes through {g.blocker}")
                continue
            if g.attention and head_owner is None:
                keep("attention group: pass heads={module: number of heads} to cut whole heads")
                continue
            if g.attention and unit == 0:
                keep(f"attention group of {g.size} channels does not split into {head_owner[1]} heads")
                continue
            if zc and all(zc):
                decided.append((u, "consumer", []))
                continue
            if zp and all(zp) and g.consumers:
                if any(i.module in folded for i in g.producers):
                    keep("producer bias changed by a fold in this pass (retried next pass)")
                    continue
                folds = []
                why = None
                for i in g.consumers:
                    x = inputs.get(i.module)
                    cols = [c for r in u for c in cons[id(i)].get(r, [])]
                    if not cols:
                        continue
                    c = _constant(x, i.module, cols) if x is not None else None
                    if c is None:
                        why = f"input of {i.name} is not constant on the example inputs"
                        break
                    if bool((c == 0).all()):
                        continue
                    if not _foldable(i.module):
                        why = f"nonzero constant reaches {i.name}, which pads with zeros: no exact fold"
                        break
                    if i.module in read:
                        why = f"{i.name} feeds a constant already used in this pass (retried next pass)"
                        break
                    folds.append((i.module, cols, c))
                if why is not None:
                    keep("producer side zero, but the " + why)
                    continue
                decided.append((u, "producer", folds))
                continue
            if g.attention:
                keep("only part of the head is zero (heads are removed whole)")
                continue
            # partly zero: name the members that are not
            parts = []
            if any(zc):
                nz = [i.name for i in g.consumers for r in u if r in cons[id(i)] and not zero_in(i, r)]
                parts.append("input zero in some consumers but not in " + ", ".join(dict.fromkeys(nz)))
            if any(zp):
                nz = [i.name for i in g.producers for r in u if r in prod[id(i)] and not zero_out(i, r)]
                parts.append("output zero in some producers but not in " + ", ".join(dict.fromkeys(nz)))
            keep("; ".join(parts))
        # a layer keeps at least one unit
        if decided and sum(len(u) for u, _, _ in decided) >= len(roots):
            u, _, _ = decided.pop()
            kept.setdefault("every channel is removable; one is kept (a layer cannot be empty)", []).extend(u)
        by_rule: dict[str, int] = {}
        for u, rule, folds in decided:
            for mod, cols, c in folds:
                _fold(mod, cols, c)
                folded.add(mod)
            if rule == "producer":
                read.update(i.module for i in g.producers)
            cut.extend(u)
            by_rule[rule] = by_rule.get(rule, 0) + len(u)
        root_name = g.root.name
        index = orig.setdefault(root_name, list(range(g.size)))  # original channel numbers
        if cut:
            plans.append((g, sorted(cut), head_owner, unit))
            report.removed.append(
                {
                    "group": g.label,
                    "layer": root_name,
                    "removed_channels": sorted(index[c] for c in cut),
                    "channels": g.size,
                    "removed": len(cut),
                    "unit": "head" if head_owner else "channel",
                    "by_rule": by_rule,
                    "folded_into": sorted({names.get(m, "?") for _, _, fs in decided for m, _, _ in fs}),
                }
            )
            removed += len(cut)
        for reason, chans in kept.items():
            report.kept.append(
                {
                    "group": g.label,
                    "layer": root_name,
                    "channels": sorted(index[c] for c in chans),
                    "reason": reason,
                }
            )

    for g, cut, head_owner, unit in plans:
        gone_set = set(cut)
        for i in g.producers:  # keep the original numbers of every producer's remaining channels
            index = orig.setdefault(i.name, list(range(len(_zero_rows(i.module.weight)))))
            dropped = {c for c, r in zip(i.idxs, i.roots) if r in gone_set}
            orig[i.name] = [o for c, o in enumerate(index) if c not in dropped]
        root = g.group[0].dep
        sub = dg.get_pruning_group(root.target.module, root.handler, cut)
        sub.prune()
        if head_owner is not None:
            gone = len(cut) // max(unit, 1)
            heads[head_owner[0]] = head_owner[1] - gone
            mod = model.get_submodule(head_owner[0])
            for attr in ("num_heads", "heads", "n_heads"):
                if isinstance(getattr(mod, attr, None), int):
                    setattr(mod, attr, getattr(mod, attr) - gone)
    return removed


def compact(
    model: nn.Module,
    example_inputs: Any,
    *,
    heads: Mapping[str, int] | None = None,
    rtol: float = 1e-5,
    max_passes: int = 4,
    return_report: bool = False,
) -> Any:
    """A smaller copy of ``model`` with the same outputs in eval mode.

    Every channel, neuron, filter (and attention head, for the modules named in ``heads``) that
    can be removed exactly is removed: its consumers read zeros from it (consumer side), or its
    producers write zeros to it and its constant folds exactly into the consumers' biases
    (producer side). ``model`` is not modified (a deep copy is cut).

    Arguments:
        example_inputs: a tensor or a tuple of positional inputs of ``model`` (a batch of several
            distinct real examples: the producer-side constants are read and checked on them).
        heads: ``{attention module name: number of heads}``; the channels of a group that passes
            through attention (softmax, matmul) are cut in whole heads of these modules only; the
            module must infer the head count from the tensor shape (``view(B, N, -1, head_dim)``),
            or keep it in an int attribute ``num_heads``/``heads``/``n_heads``, which is updated.
        rtol: the largest output difference allowed on ``example_inputs``, relative to the
            largest output magnitude; exceeding it raises ``RuntimeError`` (a bug, not a limit).
        max_passes: analysis passes (a cut can make a constant foldable that was not before).
        return_report: return ``(module, report)`` instead of the module.

    Returns the compact module (in eval mode, as ``model``'s mode is restored on the original);
    its :class:`CompactReport` is also at ``module.compact_report``.
    """
    tp = _tp()
    if not isinstance(model, nn.Module):
        raise TypeError(f"compact: expected an nn.Module, got {type(model).__name__}")
    args = _as_args(example_inputs)
    if not args or not all(isinstance(a, Tensor) for a in args):
        raise TypeError("compact: example_inputs must be a tensor or a tuple of tensors")
    for n, p in model.named_parameters():
        if type(p) is not nn.Parameter and type(p).__name__ == "DTensor":
            raise ValueError(
                f"compact: parameter {n!r} is sharded (FSDP2); load the full state dict into an "
                "unsharded model first"
            )
    new = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = new(*args)
    report = CompactReport()
    macs0, params0 = _count(tp, new, args)
    n_shapes = {
        n: list(m.weight.shape)
        for n, m in new.named_modules()
        if isinstance(getattr(m, "weight", None), Tensor)
    }
    head_counts = {str(k): int(v) for k, v in (heads or {}).items()}  # updated as heads go
    orig: dict[str, list[int]] = {}  # layer → original numbers of its remaining output channels
    for k in range(max_passes):
        trial = CompactReport()
        removed = _one_pass(tp, new, args, head_counts, trial, orig)
        report.removed += trial.removed
        report.kept = trial.kept  # what the last analysis could not remove
        report.passes = k + 1
        if removed == 0:
            break
    with torch.no_grad():
        out = new(*args)
    report.max_rel_error = _rel_error(ref, out)
    if not report.max_rel_error <= rtol:
        raise RuntimeError(
            f"compact: the compact model's outputs differ from the original's by {report.max_rel_error:.3g} "
            f"(relative) > rtol={rtol:g} on the example inputs; please report this model"
        )
    macs1, params1 = _count(tp, new, args)
    report.params = {"before": params0, "after": params1}
    report.macs = {"before": macs0, "after": macs1}
    for n, m in new.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, Tensor) and n in n_shapes and list(w.shape) != n_shapes[n]:
            report.layers[n] = {"before": n_shapes[n], "after": list(w.shape)}
    new.compact_report = report
    return (new, report) if return_report else new


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


def _pass_times(mods: Sequence[nn.Module], x: Tensor, reps: int, warmup: int) -> list[list[float]]:
    """Seconds of each timed eval-mode forward pass, per model, passes interleaved."""
    modes = [m.training for m in mods]
    times: list[list[float]] = [[] for _ in mods]
    with torch.inference_mode():
        for m in mods:
            m.eval()
        for k in range(warmup + reps):
            for j, m in enumerate(mods):
                t0 = time.perf_counter()
                m(x)
                if k >= warmup:
                    times[j].append(time.perf_counter() - t0)
    for m, was in zip(mods, modes):
        m.train(was)
    return times


def latency_ms(
    models: nn.Module | Sequence[nn.Module],
    x: Tensor,
    reps: int = 20,
    warmup: int = 3,
    stat: str = "median",
) -> Any:
    """Wall time (ms) of one eval-mode forward pass on ``x``: the median (``stat="median"``) or
    the minimum (``"min"``: the least disturbed pass, on a shared machine) of ``reps`` passes;
    for a list of models, the passes are interleaved (one of each per repetition) so that the load
    of a shared machine falls on all of them alike, and a list is returned."""
    if stat not in ("median", "min"):
        raise ValueError(f"latency_ms: stat must be 'median' or 'min', got {stat!r}")
    many = not isinstance(models, nn.Module)
    mods = list(models) if many else [models]  # type: ignore[arg-type]
    agg = statistics.median if stat == "median" else min
    res = [1e3 * agg(t) for t in _pass_times(mods, x, reps, warmup)]
    return res if many else res[0]


def _batch(x: Tensor, n: int) -> Tensor:
    reps = math.ceil(n / x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n].contiguous()


def model_stats(
    models: nn.Module | Sequence[nn.Module],
    example: Tensor,
    batches: Sequence[int] = (1, 64),
    reps: int = 20,
    warmup: int = 3,
    with_min: bool = False,
) -> Any:
    """Parameters, MACs of one example (Torch-Pruning's counter) and the CPU latency in ms at each
    batch size of ``batches`` (``latency_ms_b<B>``; examples taken from ``example``, repeated as
    needed), of one model or of a list of models (timed interleaved; a list of dicts).
    ``latency_ms_b<B>`` is the median of ``reps`` passes; ``with_min`` adds their minimum,
    ``latency_min_ms_b<B>`` (the least disturbed pass, on a machine shared with other jobs)."""
    tp = _tp()
    many = not isinstance(models, nn.Module)
    mods = list(models) if many else [models]  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    for m in mods:
        macs, params = _count(tp, m, (example,))
        out.append({"params": params, "macs": macs})
    for b in batches:
        for d, t in zip(out, _pass_times(mods, _batch(example, b), reps, warmup)):
            d[f"latency_ms_b{b}"] = 1e3 * statistics.median(t)
            if with_min:
                d[f"latency_min_ms_b{b}"] = 1e3 * min(t)
    return out if many else out[0]


def compact_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Markdown table dense vs compact of :func:`model_stats` dicts (plus ``val_acc`` if present)."""
    rows = [("parameters", "params", "{:,}"), ("MACs (one example)", "macs", "{:,}")]
    for k in before:
        if k.startswith("latency_ms_b"):
            rows.append((f"CPU latency, batch {k.removeprefix('latency_ms_b')} (ms)", k, "{:.3f}"))
        if k.startswith("latency_min_ms_b"):
            rows.append((f"CPU latency, batch {k.removeprefix('latency_min_ms_b')}, min (ms)", k, "{:.3f}"))
    lines = ["| | dense | compact | dense / compact |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        b, a = before[key], after[key]
        lines.append(f"| {label} | {fmt.format(b)} | {fmt.format(a)} | {b / a if a else math.inf:.2f}× |")
    if "val_acc" in before and "val_acc" in after:
        lines.append(
            f"| validation accuracy | {100 * before['val_acc']:.2f} % | {100 * after['val_acc']:.2f} % | |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# run folders of `structsparse train`
# ---------------------------------------------------------------------------------------------


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = _tmp(path)
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_save(obj: Any, path: Path, saver: Any = None) -> None:
    tmp = _tmp(path)
    (saver or torch.save)(obj, tmp)
    os.replace(tmp, path)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, bs: int = 1024) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), bs):
            correct += int((model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum())
    return correct / max(len(y), 1)


def _export(model: nn.Module, example: Tensor, path: Path) -> str:
    """Write ``model`` as a ``torch.export`` program (batch dimension dynamic where it exports so,
    else fixed to ``example``'s); return a note on the batch dimension."""
    from torch.export import Dim, export

    model.eval()
    x = _batch(example, 2)
    try:
        ep = export(model, (x,), dynamic_shapes=({0: Dim("batch", min=1)},))
        note = "dynamic batch"
    except Exception:  # noqa: BLE001 - e.g. a shape specialized in forward; fall back to static
        ep = export(model, (example[:1],))
        note = "batch fixed to 1"
    _atomic_save(ep, path, saver=torch.export.save)
    return note


def load_compact(run_dir: str | Path) -> nn.Module:
    """The compact model of a run folder (written by :func:`compact_run`), rebuilt from its
    ``compact/model.pt2`` (``torch.export``) program with the weights of ``compact/model.pt``."""
    d = Path(run_dir) / "compact"
    module = torch.export.load(d / "model.pt2").module()
    module.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    return module


def compact_run(
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    reps: int = 20,
    examples: int = 256,
    echo: Any = print,
) -> dict[str, Any]:
    """Compact the model of a ``structsparse train`` run folder (``config.json`` + ``model.pt``).

    Rebuilds the model with the command line's model builder, loads ``model.pt``, compacts it
    (example inputs: ``examples`` validation images), measures both (parameters, MACs, CPU latency
    at batch 1 and 64, validation accuracy), and writes ``RUN_DIR/compact/`` — ``model.pt`` (state
    dict), ``model.pt2`` (``torch.export`` program: ``torch.export.load(p).module()`` rebuilds
    the module; see :func:`load_compact`), ``report.json``, ``report.md`` — and the table into the
    run's ``summary.md`` / ``summary.json`` (key ``"compact"``). Every file is written atomically.
    Returns the summary dict (``"markdown"``: the table)."""
    from .data import load_dataset
    from .models import build_model

    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps: expected a positive number of timed passes, got {reps!r}")
    run = Path(run_dir)
    cfg_path, model_path = run / "config.json", run / "model.pt"
    if not cfg_path.is_file():
        raise ValueError(f"compact: {run} has no config.json (not a `structsparse train` run folder)")
    if not model_path.is_file():
        raise ValueError(f"compact: {run} has no model.pt; train with --save-model (or --compact)")
    cfg = json.loads(cfg_path.read_text())
    data = load_dataset(
        cfg["dataset"],
        data_dir or cfg.get("data_dir") or "data",
        seed=int(cfg.get("seed", 0)),
        subset=cfg.get("subset"),
    )
    model = build_model(cfg["model"], data.input_shape, data.num_classes)
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    model.eval()
    xv, yv = data.x_val, data.y_val
    example = xv[: max(2, min(examples, len(xv)))]
    small, report = compact(model, example, return_report=True)
    before, after = model_stats([model, small], example, reps=reps)
    before["val_acc"], after["val_acc"] = _accuracy(model, xv, yv), _accuracy(small, xv, yv)
    out = run / "compact"
    out.mkdir(exist_ok=True)
    _atomic_save({k: v.detach().clone() for k, v in small.state_dict().items()}, out / "model.pt")
    export_note = _export(small, example, out / "model.pt2")
    table = compact_table(before, after)
    summary = {
        "before": before,
        "after": after,
        "max_rel_error": report.max_rel_error,
        "threads": torch.get_num_threads(),
        "export": export_note,
        "files": ["compact/model.pt", "compact/model.pt2", "compact/report.json", "compact/report.md"],
    }
    _atomic_write(out / "report.json", json.dumps({**summary, "report": report.to_dict()}, indent=2) + "\n")
    md = (
        f"## Compact model\n\n{table}\n\nLatency: median of {reps} eval-mode forward passes on "
        f"{torch.get_num_threads()} CPU thread(s). Outputs equal to {report.max_rel_error:.1e} "
        f"(relative) on {len(example)} validation images.\n"
    )
    _atomic_write(out / "report.md", md + "\n" + report.to_markdown())
    sj = run / "summary.json"
    if sj.is_file():
        s = json.loads(sj.read_text())
        s["compact"] = summary
        _atomic_write(sj, json.dumps(s, indent=2) + "\n")
    sm = run / "summary.md"
    old = sm.read_text() if sm.is_file() else ""
    old = old.split("\n## Compact model\n")[0].rstrip("\n")
    _atomic_write(sm, (old + "\n\n" if old else "") + md)
    echo(md.rstrip("\n"))
    return {**summary, "markdown": md, "report": report}
