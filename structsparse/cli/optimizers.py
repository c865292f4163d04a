"""The optimizer table of ``train`` and ``compare`` (one :class:`OptimizerSpec` row per optimizer), the
regularizers by name, and how the learned structure of a trained model is read and measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import structsparse as ss

from ..metrics import zero_groups
from .common import CLIError


@dataclass(frozen=True)
class OptimizerSpec:
    """One row of the optimizer table.

    ``build(param_groups, hp)`` returns the optimizer; ``hp`` holds ``lr``, ``momentum``, ``eps``,
    ``solver``, ``weight_decay`` and ``backend`` (already merged with ``defaults``).
    ``regularized``: takes ``regularizer=`` in its param groups (``group_params``); otherwise a dense
    baseline (``torch.optim``) whose sparsity is measured on the model with ``--grouping``.
    ``dual_averaging``: stepped by :class:`structsparse.RestartScheduler` (restarts, c ramp);
    the others' lr is scaled at milestones (ProxSGD/ProxGen/ProxSSI by the same scheduler, dense
    baselines by ``torch.optim.lr_scheduler.MultiStepLR``).
    ``structure`` (optional): ``structure(optimizer, model)`` returns the ``(name, tensor, grouping)``
    triples whose zero pattern is the selected structure; default: the regularized parameters.
    An inverse-scale-space method such as DessiLBI sets it to read its ``Γ`` tensors.

    ``defaults`` are tuned for the short runs on the embedded ``digits`` data (a minute on two CPU
    cores), not the papers' long runs.
    """

    name: str
    build: Callable[[list[dict[str, Any]], dict[str, Any]], torch.optim.Optimizer]
    regularized: bool
    dual_averaging: bool
    defaults: dict[str, Any]
    structure: Callable[[torch.optim.Optimizer, nn.Module], list[tuple[str, Tensor, Any]]] | None = None
    help: str = ""
    #: optional ``epoch_metrics(optimizer, model, evaluate)`` → extra per-epoch log columns, where
    #: ``evaluate(model)`` returns the validation accuracy of a model (DessiLBI: sparsity of Γ and
    #: the accuracy of the sparse network ``W ⊙ 1[Γ ≠ 0]``).
    epoch_metrics: (
        Callable[[torch.optim.Optimizer, nn.Module, Callable[[nn.Module], float]], dict[str, Any]] | None
    ) = None
    #: the optimizer-specific settings ``build`` reads, among :data:`OPTION_KEYS` (``--momentum``,
    #: ``--eps``, ...): ``train`` refuses a flag its optimizer would ignore, ``compare`` one that none
    #: of its optimizers reads. None: not declared (nothing is refused).
    options: tuple[str, ...] | None = None


def _build_rmda(groups, hp):
    return ss.RMDA(groups, lr=hp["lr"], momentum=hp["momentum"], backend=hp["backend"])


def _build_ramda(groups, hp):
    return ss.RAMDA(
        groups,
        lr=hp["lr"],
        momentum=hp["momentum"],
        eps=hp["eps"],
        solver=hp["solver"],
        backend=hp["backend"],
    )


def _build_proxsgd(groups, hp):
    return ss.ProxSGD(groups, lr=hp["lr"], momentum=hp["momentum"], backend=hp["backend"])


def _build_proxgen(groups, hp):
    return ss.ProxGen(
        groups, lr=hp["lr"], weight_decay=hp["weight_decay"], solver=hp["solver"], backend=hp["backend"]
    )


def _build_proxssi(groups, hp):
    return ss.ProxSSI(groups, lr=hp["lr"], weight_decay=hp["weight_decay"], backend=hp["backend"])


def _build_dessilbi(groups, hp):
    return ss.DessiLBI(
        groups,
        lr=hp["lr"],
        kappa=hp["kappa"],
        nu=hp["nu"],
        momentum=hp["momentum"],
        weight_decay=hp["weight_decay"],
        backend=hp["backend"],
        magnitude_scaling=bool(hp.get("magnitude_scaling", False)),
    )


def _dessilbi_structure(opt: torch.optim.Optimizer, model: nn.Module) -> list[tuple[str, Tensor, Any]]:
    """DessiLBI's selected structure is the support of Γ (not of W, which stays dense). Before the
    first step Γ does not exist yet: an all-zero stand-in (the support starts empty)."""
    out = []
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        reg = g.get("regularizer")
        if reg is None:
            continue
        for p in g["params"]:
            gm = opt.state.get(p, {}).get("gamma")
            out.append((names.get(id(p), "?"), gm if gm is not None else torch.zeros_like(p), reg.grouping))
    return out


def _dessilbi_metrics(opt, model, evaluate) -> dict[str, Any]:
    """Sparsity of Γ and the validation accuracy of ``W ⊙ 1[Γ ≠ 0]``, evaluated on the model
    itself, masked in place and restored exactly (:func:`structsparse.lbi.masked`: no copy of the
    model, so FSDP2-sharded models under torchrun work too)."""
    from .. import lbi

    mask = lbi.masks(model, opt, "weight")
    gamma_sparsity = lbi.gamma_sparsity(model, opt)
    with lbi.masked(model, mask):
        sparse_acc = evaluate(model)
    return {"gamma_sparsity": gamma_sparsity, "sparse_val_acc": sparse_acc}


def _build_sgd(groups, hp):
    return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


def _build_adamw(groups, hp):
    return torch.optim.AdamW(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])


_COMMON = dict(eps=None, solver="pg", weight_decay=0.0, kappa=None, nu=None)

#: the optimizer-specific settings (``OptimizerSpec.options``); ``lr`` and ``lam`` are every
#: optimizer's (``lam`` every regularized one's)
OPTION_KEYS = ("momentum", "eps", "solver", "weight_decay", "kappa", "nu")


#: The optimizer table. To add one, add a row (see ``dessilbi``: its structure is read from the Γ
#: tensors and it logs extra per-epoch columns); ``train`` and ``compare`` pick it up (their
#: ``--optimizer`` choices come from this table).
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "rmda": OptimizerSpec(
        "rmda",
        _build_rmda,
        True,
        True,
        # lr 1: with lr 0.1 (the library's default) and λ 1e-3 no group of the digits MLP reaches
        # zero in 30 epochs (the restarts re-anchor W0 and α·λ stays below ‖W0_g‖·β); see docs/cli.md
        dict(_COMMON, lr=1.0, momentum=0.9, lam=1e-3),
        options=("momentum",),
        help="RMDA (ss.RMDA)",
    ),
    "ramda": OptimizerSpec(
        "ramda",
        _build_ramda,
        True,
        True,
        dict(_COMMON, lr=1e-2, momentum=0.9, lam=1e-3, eps=1e-6, solver="auto"),
        options=("momentum", "eps", "solver"),
        help="RAMDA (ss.RAMDA)",
    ),
    "proxsgd": OptimizerSpec(
        "proxsgd",
        _build_proxsgd,
        True,
        False,
        dict(_COMMON, lr=0.1, momentum=0.9, lam=1e-3),
        options=("momentum",),
        help="proximal SGD with momentum (ss.ProxSGD)",
    ),
    "proxgen": OptimizerSpec(
        "proxgen",
        _build_proxgen,
        True,
        False,
        dict(_COMMON, lr=1e-3, momentum=None, lam=1e-3),
        options=("weight_decay", "solver"),
        help="ProxGen, AdamW base (ss.ProxGen)",
    ),
    "proxssi": OptimizerSpec(
        "proxssi",
        _build_proxssi,
        True,
        False,
        dict(_COMMON, lr=1e-3, momentum=None, lam=3e-5),
        options=("weight_decay",),
        help="ProxSSI (ss.ProxSSI)",
    ),
    "dessilbi": OptimizerSpec(
        "dessilbi",
        _build_dessilbi,
        True,
        False,
        dict(_COMMON, lr=0.1, momentum=0.9, lam=0.05, kappa=1.0, nu=10.0),
        structure=_dessilbi_structure,
        epoch_metrics=_dessilbi_metrics,
        options=("momentum", "weight_decay", "kappa", "nu"),
        help="DessiLBI (ss.DessiLBI); structure = support of Γ; λ is the threshold of Ω_λ",
    ),
    "sgd": OptimizerSpec(
        "sgd",
        _build_sgd,
        False,
        False,
        dict(_COMMON, lr=0.1, momentum=0.9, lam=None),
        options=("momentum", "weight_decay"),
        help="dense torch.optim.SGD",
    ),
    "adamw": OptimizerSpec(
        "adamw",
        _build_adamw,
        False,
        False,
        dict(_COMMON, lr=1e-3, momentum=None, lam=None),
        options=("weight_decay",),
        help="dense AdamW",
    ),
}


REGULARIZERS = ("group_lasso", "l1", "sparse_group_lasso", "group_mcp", "mcp", "nuclear", "none")


GROUPINGS = ("input", "output", "kernel", "element")


def make_regularizer(name: str, lam: float, grouping: str, omega: float) -> ss.Regularizer | None:
    if name == "none":
        return None
    if name == "group_lasso":
        return ss.GroupLasso(lam, grouping=grouping)
    if name == "l1":
        return ss.L1(lam)
    if name == "sparse_group_lasso":
        return ss.SparseGroupLasso(lam, lam, grouping=grouping)
    if name == "group_mcp":
        return ss.GroupMCP(lam, omega, grouping=grouping)
    if name == "mcp":
        return ss.MCP(lam, omega)
    if name == "nuclear":
        return ss.NuclearNorm(lam)
    raise CLIError(f"--regularizer: unknown regularizer {name!r}; expected one of {', '.join(REGULARIZERS)}")


def _structure(
    spec: OptimizerSpec, opt: torch.optim.Optimizer, model: nn.Module, grouping: Any
) -> list[tuple[str, Tensor, Any]]:
    """``(name, tensor, grouping)`` of the tensors whose zero groups are the learned structure."""
    if spec.structure is not None:
        return spec.structure(opt, model)
    names = {id(p): n for n, p in model.named_parameters()}
    if spec.regularized:
        out = []
        for g in opt.param_groups:
            reg = g.get("regularizer")
            if reg is None or isinstance(reg, ss.NuclearNorm):
                continue
            out += [(names.get(id(p), "?"), p, reg.grouping) for p in g["params"]]
        return out
    from ..grouping import fits
    from ..params import regularizable_weights

    return [(n, p, grouping) for n, p in regularizable_weights(model) if fits(grouping, p.shape)]


def _sparsities(struct: list[tuple[str, Tensor, Any]], model: nn.Module) -> dict[str, float]:
    from ..grouping import group_view

    zero = total = wzero = wtotal = 0
    for _, p, gr in struct:
        z = zero_groups(p, gr)
        a, _, b = group_view(gr, p.shape)
        zero += int(z.sum())
        total += z.numel()
        wzero += int(z.sum()) * a * b
        wtotal += p.numel()
    out = {
        "group_sparsity": zero / total if total else 0.0,
        "weighted_group_sparsity": wzero / wtotal if wtotal else 0.0,
        "unstructured_sparsity": ss.unstructured_sparsity(model),
    }
    if any(p.dim() >= 3 for _, p, _ in struct):
        out["kernel_sparsity"] = ss.kernel_sparsity([p for _, p, _ in struct])
    return out


def _pattern(struct: list[tuple[str, Tensor, Any]]) -> list[Tensor]:
    return [zero_groups(p, gr).cpu() for _, p, gr in struct]


def resolve_hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    """Merge the optimizer's defaults with the values given in ``cfg`` (``None`` = default)."""
    spec = OPTIMIZERS[cfg["optimizer"]]
    hp = dict(spec.defaults)
    for k in ("lr", "momentum", "eps", "solver", "weight_decay", "lam", "kappa", "nu"):
        if cfg.get(k) is not None:
            hp[k] = cfg[k]
    hp["backend"] = cfg["backend"]
    return hp
