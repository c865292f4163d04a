"""Structure from DessiLBI's Γ: pruning masks, support tracking and early "winning tickets".

DessiLBI (:class:`structsparse.DessiLBI`) keeps, for each regularized weight ``W``, a structure
variable ``Γ`` (state key ``"gamma"``) whose support grows from empty. This module turns it into
structure (Fu et al., TPAMI, §5):

- :func:`masks`: ``1[Γ ≠ 0]`` at the level of weights (eq. 21), groups of the regularizer, output
  filters (eq. 22) or whole layers; :func:`apply_masks` makes the sparse network ``W ⊙ mask``, and
  :func:`masked` does so for the duration of a ``with`` block (e.g. to evaluate it), restoring
  ``W`` exactly afterwards — no copy of the model, so it works on FSDP2-sharded models;
- :func:`support_ratio` and :func:`gamma_sparsity`: how much of each layer is selected;
- :class:`SupportTracker`: the epoch at which each weight/filter entered the support;
- tickets (§5.2): :func:`train_masked` retrains a masked network with SGD keeping the masked
  weights at zero, :func:`random_masks` draws the random baseline of the same per-layer sparsity,
  and :func:`winning_tickets` runs the whole experiment and returns accuracy versus sparsity.

Everything takes plain arguments and returns dicts of numbers (or of tensors keyed by parameter
name), so that a command line can call it directly. Masks cover only the parameters that have a
``Γ`` (the regularized ones); biases and norm layers are never masked.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as ssd
from .grouping import group_view
from .optim.dessilbi import DessiLBI
from .params import regularizable_weights
from .regularizers import L1, GroupLasso, Regularizer

LEVELS = ("weight", "group", "filter", "layer")

__all__ = [
    "LEVELS",
    "dessilbi_groups",
    "gammas",
    "masks",
    "apply_masks",
    "masked",
    "support_ratio",
    "gamma_sparsity",
    "mask_density",
    "SupportTracker",
    "random_masks",
    "snapshot",
    "rewind",
    "evaluate",
    "train_epoch",
    "train_masked",
    "train_dessilbi",
    "winning_tickets",
]


# ---------------------------------------------------------------------------------------------
# param groups and Γ
# ---------------------------------------------------------------------------------------------


def dessilbi_groups(
    model: nn.Module,
    lam: float = 1.0,
    *,
    lam_linear: float | None = None,
    conv_grouping: Any = "output",
) -> list[dict[str, Any]]:
    """The paper's param groups: conv weights (≥ 3 dims) with ``GroupLasso(lam, conv_grouping)``
    (output filters by default), Linear and recurrent weights with ``L1(lam_linear or lam)``, all
    other parameters unregularized. Empty groups are left out."""
    convs, linears, seen = [], [], set()
    for _, p in regularizable_weights(model):
        (convs if p.dim() >= 3 else linears).append(p)
        seen.add(id(p))
    others = [p for p in model.parameters() if id(p) not in seen]
    groups = []
    if convs:
        groups.append({"params": convs, "regularizer": GroupLasso(lam, conv_grouping)})
    if linears:
        groups.append({"params": linears, "regularizer": L1(lam if lam_linear is None else lam_linear)})
    if others:
        groups.append({"params": others, "regularizer": None})
    return groups


def gammas(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, tuple[Tensor, Regularizer]]:
    """``name → (Γ, regularizer)`` for every parameter of ``model`` that has a Γ in ``optimizer``
    (in the model's parameter order)."""
    reg_of = {id(p): g.get("regularizer") for g in optimizer.param_groups for p in g["params"]}
    out = {}
    for name, p in model.named_parameters():
        st = optimizer.state.get(p)
        if st and "gamma" in st and reg_of.get(id(p)) is not None:
            out[name] = (st["gamma"], reg_of[id(p)])
    return out


def _units(level: str, shape: Sequence[int], reg: Regularizer | None) -> tuple[int, int, int]:
    """``[A, G, B]`` view whose dim 1 indexes the selectable units of ``level``."""
    if level == "weight":
        return group_view("element", shape)
    if level == "filter":
        return group_view("output", shape) if len(shape) >= 2 else group_view("element", shape)
    if level == "group":
        if reg is None:
            raise ValueError("level='group' needs the regularizer of the parameter")
        return reg.view_shape(shape)
    if level == "layer":
        return 1, 1, int(math.prod(shape))
    raise ValueError(f"level: unknown level {level!r}; expected one of {LEVELS}")


def _local_units(gamma: Tensor, level: str, reg: Regularizer | None) -> tuple[Tensor, bool]:
    """``(support, share)``: which units of ``Γ`` are nonzero. For a plain tensor all units and
    ``share=False``. For a dim-0 sharded DTensor (FSDP2): units contained in this rank's rows
    (weights, filters, groups of an aligned grouping) are this rank's share only (``share=True``,
    no communication); units spanning the rows (the layer, groups of a split grouping) are global,
    from one all-reduce of ``G`` int32 flags."""
    if not ssd.is_sharded(gamma):
        a, g, b = _units(level, gamma.shape, reg)
        return (gamma.detach().reshape(a, g, b) != 0).any(dim=2).any(dim=0), False
    ssd.check_param(gamma, None, "gamma")
    loc = gamma.to_local().detach()
    a, g, b = _units(level, loc.shape, reg)
    x3 = loc.reshape(a, g, b)
    nz = (
        (x3 != 0).any(dim=2).any(dim=0) if x3.numel() else torch.zeros(g, dtype=torch.bool, device=loc.device)
    )
    if not ssd._splits(lambda s: _units(level, s, reg), gamma.shape):
        return nz, True
    return ssd._all_reduce(nz.to(torch.int32), "sum", ssd._group_of(gamma), "metrics") > 0, False


def _global_count(n: int, share: bool, like: Tensor) -> int:
    """``n`` summed over the ranks holding shares of ``like`` (a sharded DTensor), else ``n``."""
    if not share:
        return n
    t = torch.tensor([n], dtype=torch.int64, device=ssd.local(like).device)
    return int(ssd._all_reduce(t, "sum", ssd._group_of(like), "metrics")[0])


def unit_support(gamma: Tensor, level: str, reg: Regularizer | None = None) -> Tensor:
    """Boolean ``[G]``: which units (weights, groups, filters, or the layer) of ``Γ`` are nonzero.
    For a dim-0 sharded ``Γ``: this rank's units where they are contained in its rows, else all
    units (see :func:`_local_units`; a collective: every rank must call it)."""
    return _local_units(gamma, level, reg)[0]


def _expand(units: Tensor, level: str, shape: Sequence[int], reg: Regularizer | None) -> Tensor:
    a, g, b = _units(level, shape, reg)
    return units.view(1, g, 1).expand(a, g, b).reshape(tuple(shape))


def _mask_like(gamma: Tensor, units: Tensor, level: str, reg: Regularizer | None) -> Tensor:
    """The bool mask of ``units`` over ``Γ``'s shape; a DTensor with ``Γ``'s placements (built
    from the local rows, no communication) when ``Γ`` is sharded."""
    if not ssd.is_sharded(gamma):
        return _expand(units, level, gamma.shape, reg).clone()
    from torch.distributed.tensor import DTensor

    loc = _expand(units, level, gamma.to_local().shape, reg).clone()
    return DTensor.from_local(
        loc, gamma.device_mesh, gamma.placements, run_check=False, shape=gamma.shape, stride=gamma.stride()
    )


def masks(model: nn.Module, optimizer: torch.optim.Optimizer, level: str = "weight") -> dict[str, Tensor]:
    """``name → mask`` (bool, the weight's shape): ``1[Γ ≠ 0]`` per weight (``"weight"``, eq. 21),
    per group of the regularizer (``"group"``), per output filter/neuron (``"filter"``, eq. 22:
    kept if any entry of its Γ is nonzero) or per layer (``"layer"``: kept if Γ has any nonzero).
    A sharded ``Γ`` (FSDP2) gives a mask DTensor with its placements, from per-unit flags only
    (units spanning the shards — the layer, split groups — take one all-reduce of their flags)."""
    if level not in LEVELS:
        raise ValueError(f"level: unknown level {level!r}; expected one of {LEVELS}")
    return {
        name: _mask_like(gm, unit_support(gm, level, reg), level, reg)
        for name, (gm, reg) in gammas(model, optimizer).items()
    }


def _masked_params(model: nn.Module, mask: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``[(parameter, mask)]`` for the names of ``mask``, checked against ``model``."""
    params = dict(model.named_parameters())
    out = []
    for name, m in mask.items():
        if name not in params:
            raise ValueError(f"masks: model has no parameter {name!r}")
        p = params[name]
        if tuple(m.shape) != tuple(p.shape):
            raise ValueError(
                f"masks: mask of {name!r} has shape {tuple(m.shape)}, parameter {tuple(p.shape)}"
            )
        if ssd.is_sharded(p) != ssd.is_sharded(m):
            raise ValueError(
                f"masks: mask of {name!r} must be sharded like its parameter (a DTensor with the same "
                "placements, as masks() returns for a sharded Γ) or both plain tensors"
            )
        out.append((p, m))
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, mask: dict[str, Tensor]) -> None:
    """``W ← W ⊙ mask`` for every named parameter in ``mask`` (in place)."""
    for p, m in _masked_params(model, mask):
        p.mul_(m.to(device=p.device, dtype=p.dtype))


@contextlib.contextmanager
def masked(model: nn.Module, mask: dict[str, Tensor]) -> Iterator[nn.Module]:
    """``with masked(model, mask): ...`` runs the block on the sparse network ``W ⊙ mask`` (as
    :func:`apply_masks`, in place) and then restores every masked ``W`` bit for bit, also when the
    block raises. Yields ``model``.

    No copy of the model is made (``copy.deepcopy`` of an FSDP2 model is not supported): only the
    masked parameters are saved, and of a sharded parameter (FSDP2 DTensor, with the DTensor mask
    :func:`masks` returns for a sharded Γ) only this rank's local shard — memory is one copy of the
    masked weights' local values, no communication. Not for use while an optimizer steps the
    model (the restore would overwrite its updates)::

        saved ← [local(W) for W in mask]        # clones
        W ← W ⊙ mask                            # under no_grad
        yield model
        local(W) ← saved                        # exact: copy_, not a division
    """
    pairs = _masked_params(model, mask)
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for p, m in pairs:
                loc = ssd.local(p)  # shares storage with p (the DTensor's local shard)
                saved.append((loc, loc.clone()))
                p.mul_(m.to(device=p.device, dtype=p.dtype))
        yield model
    finally:
        with torch.no_grad():
            for loc, s in saved:
                loc.copy_(s)


def support_ratio(
    model: nn.Module, optimizer: torch.optim.Optimizer, level: str = "weight"
) -> dict[str, float]:
    """``name → fraction of the units of level`` (weights, groups, filters, layer) selected by Γ."""
    out = {}
    for name, (gm, reg) in gammas(model, optimizer).items():
        out[name] = _ratio(gm, *_local_units(gm, level, reg), level, reg)
    return out


def _ratio(gamma: Tensor, units: Tensor, share: bool, level: str, reg: Regularizer | None) -> float:
    """Fraction of the units of ``Γ`` (global count over its shards) that ``units`` selects."""
    total = _units(level, gamma.shape, reg)[1]
    return _global_count(int(units.sum()), share, gamma) / total if total else 0.0


def gamma_sparsity(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Fraction of exact zeros of Γ over all regularized parameters (1 before the first step)."""
    gs = gammas(model, optimizer)
    total = sum(g.numel() for g, _ in gs.values())
    zero = sum(ssd.count_zeros(g) for g, _ in gs.values())  # global on sharded Γ
    return zero / total if total else 1.0


def mask_density(mask: dict[str, Tensor]) -> float:
    """Fraction of kept weights over all masked tensors (the paper's "sparsity" = % nonzero)."""
    total = sum(m.numel() for m in mask.values())
    return sum(m.numel() - ssd.count_zeros(m) for m in mask.values()) / total if total else 1.0


class SupportTracker:
    """Records, per unit (weight or filter, ``level``), the epoch at which it first entered the
    support of Γ. ``entry_epochs[name]`` is a float tensor over the units (NaN: never entered);
    ``history`` holds one dict of per-layer support ratios per :meth:`update`. On a sharded ``Γ``
    (FSDP2) the ratios are global; ``entry_epochs`` holds the units of this rank's rows for levels
    whose units lie within rows (weights, filters, aligned groups), all units otherwise."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, level: str = "weight") -> None:
        if level not in LEVELS:
            raise ValueError(f"level: unknown level {level!r}; expected one of {LEVELS}")
        self.model, self.optimizer, self.level = model, optimizer, level
        self.entry_epochs: dict[str, Tensor] = {}
        self.history: list[dict[str, float]] = []
        self._shares: dict[str, Tensor | None] = {}  # name -> Γ when entry_epochs is a rank's share

    def update(self, epoch: float) -> dict[str, float]:
        """Record the support at ``epoch``; returns ``name → support ratio``."""
        ratios = {}
        for name, (gm, reg) in gammas(self.model, self.optimizer).items():
            units, share = _local_units(gm, self.level, reg)
            u = units.cpu()
            e = self.entry_epochs.get(name)
            if e is None:
                e = self.entry_epochs[name] = torch.full(u.shape, float("nan"), dtype=torch.float64)
            e[u & torch.isnan(e)] = float(epoch)
            self._shares[name] = gm if share else None
            ratios[name] = _ratio(gm, units, share, self.level, reg)
        self.history.append({"epoch": float(epoch), **ratios})
        return ratios

    def entered_by(self, epoch: float) -> dict[str, float]:
        """``name → fraction of units that had entered the support by ``epoch``."""
        out = {}
        for n, e in self.entry_epochs.items():
            gm = self._shares.get(n)
            if gm is None:
                out[n] = int((e <= epoch).sum()) / e.numel() if e.numel() else 0.0
            else:  # this rank's share: global counts
                total = _global_count(e.numel(), True, gm)
                out[n] = _global_count(int((e <= epoch).sum()), True, gm) / total if total else 0.0
        return out


def random_masks(
    mask: dict[str, Tensor],
    level: str = "weight",
    seed: int = 0,
    regularizers: dict[str, Regularizer] | None = None,
) -> dict[str, Tensor]:
    """Random masks with the same number of kept units per tensor as ``mask`` (units of ``level``;
    ``level="group"`` needs ``regularizers[name]``): the random-ticket baseline."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in mask.items():
        reg = None if regularizers is None else regularizers.get(name)
        g = _units(level, m.shape, reg)[1]
        mu, share = _local_units(m, level, reg)
        kept = _global_count(int(mu.sum()), share, m)
        units = torch.zeros(g, dtype=torch.bool)  # the same draw on every rank (same generator)
        units[torch.randperm(g, generator=gen)[:kept]] = True
        if share:  # this rank's units: those of its rows
            per_row = g // m.shape[0] if m.shape[0] else 0
            off = ssd._row_offset(m) * per_row
            units = units[off : off + mu.numel()]
        out[name] = _mask_like(m, units.to(ssd.local(m).device), level, reg)
    return out


# ---------------------------------------------------------------------------------------------
# training helpers (plain SGD loops over (x, y) batches)
# ---------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A deep copy of the model's state_dict (the point to rewind to)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` (from :func:`snapshot`) into ``model``."""
    model.load_state_dict(state)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], device: str | torch.device = "cpu") -> float:
    """Classification accuracy of ``model`` over ``loader``'s ``(x, y)`` batches."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += y.numel()
    model.train(was)
    return correct / total if total else 0.0


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    after_step: Callable[[], None] | None = None,
) -> float:
    """One epoch of minibatch training; returns the mean training loss."""
    model.train()
    tot = n = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        tot += float(loss.detach()) * y.numel()
        n += y.numel()
    return tot / n if n else float("nan")


def _lr_schedule(optimizer: torch.optim.Optimizer, epochs: int, milestones: Sequence[int], gamma: float):
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def train_masked(
    model: nn.Module,
    mask: dict[str, Tensor] | None,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any] | None = None,
    *,
    epochs: int = 10,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Retrain ``model`` with SGD keeping the weights outside ``mask`` at exactly zero (the mask is
    applied before training and after every step; ``mask=None`` trains the dense network).
    Returns ``{"accuracy": final test accuracy, "density": kept fraction of the masked tensors,
    "history": [{"epoch", "loss", "accuracy"}]}``."""
    model.to(device)
    if mask:
        apply_masks(model, mask)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = _lr_schedule(opt, epochs, milestones, gamma)
    hook = (lambda: apply_masks(model, mask)) if mask else None
    history = []
    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, opt, train_loader, device=device, after_step=hook)
        sched.step()
        acc = evaluate(model, test_loader, device) if test_loader is not None else float("nan")
        history.append({"epoch": epoch, "loss": loss, "accuracy": acc})
    return {
        "accuracy": history[-1]["accuracy"] if history else float("nan"),
        "density": mask_density(mask) if mask else 1.0,
        "history": history,
    }


def train_dessilbi(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any] | None = None,
    *,
    epochs: int = 10,
    lam: float = 1.0,
    lam_linear: float | None = None,
    conv_grouping: Any = "output",
    lr: float = 0.1,
    kappa: float = 1.0,
    nu: float = 100.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    magnitude_scaling: bool = False,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    level: str = "weight",
    keep_masks_at: Sequence[int] = (),
    keep_weights_at: Sequence[int] = (),
    backend: str = "auto",
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train ``model`` with DessiLBI (param groups of :func:`dessilbi_groups`), recording per epoch
    the test accuracy, the loss, the sparsity of Γ and the support ratio per layer at ``level``.

    Returns ``{"history": [{"epoch", "loss", "accuracy", "gamma_sparsity", "density"}],
    "masks": {epoch: masks at that epoch} for epoch in keep_masks_at, "weights": {epoch:
    snapshot} for epoch in keep_weights_at (0: before training), "entry_epochs": name →
    per-unit entry epoch (NaN: never), "support": per-epoch per-layer ratios, "optimizer": the
    DessiLBI instance}`` (epoch 0 is the state before training)."""
    model.to(device)
    opt = DessiLBI(
        dessilbi_groups(model, lam, lam_linear=lam_linear, conv_grouping=conv_grouping),
        lr=lr,
        kappa=kappa,
        nu=nu,
        momentum=momentum,
        weight_decay=weight_decay,
        backend=backend,
        magnitude_scaling=magnitude_scaling,
    )
    sched = _lr_schedule(opt, epochs, milestones, gamma)
    tracker = SupportTracker(model, opt, level)
    kept: dict[int, dict[str, Tensor]] = {}
    weights = {0: snapshot(model)} if 0 in keep_weights_at else {}
    history = []
    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, opt, train_loader, device=device)
        sched.step()
        tracker.update(epoch)
        acc = evaluate(model, test_loader, device) if test_loader is not None else float("nan")
        m = masks(model, opt, level)
        history.append(
            {
                "epoch": epoch,
                "loss": loss,
                "accuracy": acc,
                "gamma_sparsity": gamma_sparsity(model, opt),
                "density": mask_density(m),
            }
        )
        if epoch in keep_masks_at:
            kept[epoch] = m
        if epoch in keep_weights_at:
            weights[epoch] = snapshot(model)
    return {
        "history": history,
        "masks": kept,
        "weights": weights,
        "entry_epochs": tracker.entry_epochs,
        "support": tracker.history,
        "optimizer": opt,
    }


def winning_tickets(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    *,
    ticket_epochs: Sequence[int] = (1, 2),
    lbi_epochs: int | None = None,
    retrain_epochs: int = 10,
    level: str = "weight",
    rewind_to: str | int = "init",
    random_seeds: Sequence[int] = (0,),
    retrain_lr: float = 0.1,
    retrain_momentum: float = 0.9,
    retrain_weight_decay: float = 5e-4,
    retrain_milestones: Sequence[int] = (),
    dense_baseline: bool = True,
    device: str | torch.device = "cpu",
    **lbi_kwargs: Any,
) -> dict[str, Any]:
    """Early-stopped DessiLBI tickets (paper §5.2, §6.3) and their random-mask baselines.

    1. Snapshot ``model`` (its initialization), train it with :func:`train_dessilbi` for
       ``lbi_epochs`` (default ``max(ticket_epochs)``) epochs with ``lbi_kwargs``, keeping the
       masks of Γ at ``level`` at each of ``ticket_epochs``.
    2. For each ticket: rewind a copy to ``rewind_to`` (``"init"``, or an epoch number ≤ the
       first ticket epoch, whose weights are then taken from the DessiLBI run), retrain it with
       :func:`train_masked` (SGD), and do the same with :func:`random_masks` of the same per-layer
       unit counts for each seed in ``random_seeds``.
    3. Optionally retrain the dense network from the same rewind point.

    Returns ``{"lbi": per-epoch history of the DessiLBI run, "dense_accuracy": float or None,
    "tickets": [{"epoch", "density", "sparsity", "accuracy", "random_accuracy": [per seed],
    "random_mean", "layers": name → kept fraction of that tensor}]}`` — accuracy versus sparsity (``sparsity = 1 − density`` of the masked
    tensors).
    """
    ticket_epochs = sorted(int(e) for e in ticket_epochs)
    if not ticket_epochs or ticket_epochs[0] < 1:
        raise ValueError(f"ticket_epochs: expected epochs >= 1, got {ticket_epochs}")
    lbi_epochs = max(ticket_epochs) if lbi_epochs is None else int(lbi_epochs)
    if lbi_epochs < max(ticket_epochs):
        raise ValueError(f"lbi_epochs: {lbi_epochs} is before the last ticket epoch {max(ticket_epochs)}")
    if rewind_to != "init" and not (isinstance(rewind_to, int) and 0 <= rewind_to <= ticket_epochs[0]):
        raise ValueError(
            f"rewind_to: expected 'init' or an epoch in [0, {ticket_epochs[0]}], got {rewind_to!r}"
        )
    model.to(device)
    init = snapshot(model)
    work = copy.deepcopy(model)
    lbi = train_dessilbi(
        work,
        train_loader,
        test_loader,
        epochs=lbi_epochs,
        level=level,
        keep_masks_at=ticket_epochs,
        keep_weights_at=[] if rewind_to == "init" else [rewind_to],
        device=device,
        **lbi_kwargs,
    )
    start = init if rewind_to == "init" else lbi["weights"][rewind_to]
    regs = {name: reg for name, (_, reg) in gammas(work, lbi["optimizer"]).items()}
    retrain = dict(
        epochs=retrain_epochs,
        lr=retrain_lr,
        momentum=retrain_momentum,
        weight_decay=retrain_weight_decay,
        milestones=retrain_milestones,
        device=device,
    )

    def run(mask: dict[str, Tensor] | None) -> float:
        net = copy.deepcopy(model)
        rewind(net, start)
        return train_masked(net, mask, train_loader, test_loader, **retrain)["accuracy"]

    tickets = []
    for e in ticket_epochs:
        m = lbi["masks"][e]
        dens = mask_density(m)
        rand = [run(random_masks(m, level, seed, regs)) for seed in random_seeds]
        tickets.append(
            {
                "epoch": e,
                "density": dens,
                "sparsity": 1.0 - dens,
                "accuracy": run(m),
                "random_accuracy": rand,
                "random_mean": sum(rand) / len(rand) if rand else float("nan"),
                "layers": {name: float(t.float().mean()) for name, t in m.items()},
            }
        )
    return {
        "lbi": lbi["history"],
        "dense_accuracy": run(None) if dense_baseline else None,
        "tickets": tickets,
        "rewind_to": rewind_to,
        "level": level,
        "init_state": init,
    }
