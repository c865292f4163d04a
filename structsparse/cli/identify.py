"""``structsparse identify``: the RMDA paper's synthetic structure-identification experiment (§5.1,
Fig. 1), measured against a stationary point found by a float64 full-batch FISTA solve.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import structsparse as ss

from ..metrics import zero_groups
from .common import CLIError, _md_table, _pct, _run_dir, _threads, check_backend, make_dir, write_text
from .config import _milestones, default_milestones
from .data import ground_truth_linear
from .optimizers import OPTIMIZERS
from .plotting import _plot_identify

#: per-optimizer settings of the identification runs (the four regularized optimizers compared
#: with RMDA use fixed-stage lr decay only; RMDA/RAMDA restart at each milestone and ramp c → 1).
IDENTIFY_HP: dict[str, dict[str, Any]] = {
    "rmda": dict(lr=0.1, momentum=0.9),
    "ramda": dict(lr=0.05, momentum=0.9),
    "proxsgd": dict(lr=0.1, momentum=0.9),
    "proxgen": dict(lr=1e-2),
    "proxssi": dict(lr=1e-2),
}


#: per-problem overrides: on the conv net RMDA's lr 0.1 (→ 1e-3 after the milestones) does not reach
#: the regularized stationary point in 30 epochs (ends at 54.5 % of its pattern, training error below
#: the stationary point's); lr 0.5, 1 and 2 all reach 100 % (measured, docs/cli/identify.md).
IDENTIFY_HP_PROBLEM: dict[str, dict[str, dict[str, Any]]] = {"conv": {"rmda": dict(lr=1.0)}}


@dataclass
class IdentifyProblem:
    """A ground-truth model, its data, and how to build a fresh trainable copy near it."""

    name: str
    x: Tensor
    y: Tensor
    truth: list[tuple[Tensor, Any]]  # (ground-truth tensor, grouping)
    make_model: Callable[[], nn.Module]
    weights: Callable[[nn.Module], list[Tensor]]
    extra: dict[str, Any] = field(default_factory=dict)


def linear_problem(n: int, d: int, classes: int, zero: int, seed: int) -> IdentifyProblem:
    """Multinomial logistic regression on ``x ~ N(0, I_d)`` labeled by a linear model whose
    columns are group-sparse (``zero`` of the ``d`` input features are irrelevant); ``n ≫ d``."""
    w, b = ground_truth_linear(d, classes, zero, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x @ w.T + b).argmax(1)

    def make():
        torch.manual_seed(seed + 2)
        m = nn.Linear(d, classes)
        with torch.no_grad():
            m.weight.mul_(0.1)
        return m

    return IdentifyProblem(
        "logistic regression", x.float(), y, [(w.float(), "input")], make, lambda m: [m.weight]
    )


class _ConvNet(nn.Module):
    """One convolutional layer, tanh, one fully connected layer (the RMDA paper's small NN)."""

    def __init__(self, cin: int, cout: int, hw: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.fc = nn.Linear(cout * hw * hw, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def conv_problem(
    n: int,
    seed: int,
    cin: int = 6,
    cout: int = 4,
    hw: int = 2,
    classes: int = 3,
    noise: float = 0.05,
    norm: float = 3.0,
) -> IdentifyProblem:
    """A small conv net whose conv layer ignores half its input channels and whose FC layer ignores
    half its input features; every nonzero input-wise group has norm ``norm``. The data are labeled by
    it with *soft* labels, the ground truth's class probabilities (cross-entropy against them), so the
    model is well specified: the ground truth minimizes the unregularized loss exactly, and with a
    moderate λ the regularized problem's stationary point near it keeps its zero/nonzero group pattern
    (verified by :func:`stationary_point`). Training starts at the ground truth plus
    ``noise``·N(0, 1) (the paper starts all methods close to the ground truth)."""
    g = torch.Generator().manual_seed(seed)
    truth = _ConvNet(cin, cout, hw, classes)
    with torch.no_grad():
        for p in truth.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        truth.conv.bias.mul_(0.1)
        truth.fc.bias.mul_(0.1)
        cw, fw = truth.conv.weight, truth.fc.weight
        cw.div_(cw.pow(2).sum((0, 2, 3), keepdim=True).sqrt()).mul_(norm)
        fw.div_(fw.norm(dim=0, keepdim=True)).mul_(norm)
        cw[:, torch.randperm(cin, generator=g)[: cin // 2]] = 0
        fw[:, torch.randperm(fw.shape[1], generator=g)[: fw.shape[1] // 2]] = 0
    x = torch.randn(n, cin, hw, hw, generator=g)
    with torch.no_grad():
        y = truth(x).softmax(1)
    state = {k: v.clone() for k, v in truth.state_dict().items()}

    def make():
        m = _ConvNet(cin, cout, hw, classes)
        gg = torch.Generator().manual_seed(seed + 3)
        with torch.no_grad():
            m.load_state_dict(state)
            for p in m.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gg))
        return m

    tw = [(truth.conv.weight.detach().clone(), "input"), (truth.fc.weight.detach().clone(), "input")]
    return IdentifyProblem("convolutional network", x, y, tw, make, lambda m: [m.conv.weight, m.fc.weight])


def pattern_correctness(weights: Sequence[Tensor], truth: Sequence[tuple[Tensor, Any]]) -> float:
    """Fraction of groups whose zero/nonzero status equals the ground truth's."""
    ok = total = 0
    for w, (t, gr) in zip(weights, truth):
        a, b = zero_groups(w, gr), zero_groups(t, gr)
        ok += int((a == b).sum())
        total += a.numel()
    return ok / total


def pattern_agreement(weights: Sequence[Tensor], reference: Sequence[Tensor]) -> float:
    """Fraction of ``"input"`` groups whose zero/nonzero status equals ``reference`` (bool per group)."""
    ok = total = 0
    for w, b in zip(weights, reference):
        a = zero_groups(w, "input")
        ok += int((a == b).sum())
        total += a.numel()
    return ok / total


def _functional_forward(model: nn.Module, x: Tensor) -> Callable[..., Tensor]:
    """A float64 functional forward of the identification models over fixed data (the conv layer as
    one GEMM over the unfolded input: ~4x faster than ``nn.Conv2d`` in float64 on a CPU)."""
    if isinstance(model, nn.Linear):
        return lambda w, b: x @ w.T + b
    if isinstance(model, _ConvNet):
        n, cin, hh, ww = x.shape
        k = model.conv.kernel_size[0]
        cols = nn.functional.unfold(x, k, padding=model.conv.padding[0])  # [n, cin·k·k, hh·ww]
        cols = cols.permute(1, 0, 2).reshape(cin * k * k, -1).contiguous()

        def fwd(cw, cb, fw, fb):
            co = cw.shape[0]
            h = torch.tanh(cw.reshape(co, -1) @ cols + cb[:, None])
            return h.view(co, n, hh * ww).transpose(0, 1).reshape(n, co * hh * ww) @ fw.T + fb

        return fwd
    raise TypeError(f"no functional forward for {type(model).__name__}")


@dataclass
class StationaryPoint:
    """The reference of the identification experiment: a stationary point of
    ``mean CE + Σ_layers λ Σ_g w_g ‖W_g‖`` found by a full-batch float64 solve."""

    zero: list[Tensor]  # per regularized tensor, bool per group: zero at the stationary point
    iterations: int
    objective: float
    residual: float  # ‖x − prox(x − ∇f/L)‖·L at the end (0 at a stationary point)
    zero_margin: float  # max over zero groups of ‖∇_g f‖/(λ w_g) (< 1: strictly inside the zero set)
    min_nonzero_norm: float  # smallest nonzero group norm
    agreement_with_truth: float  # pattern correctness of the stationary point w.r.t. the generating truth
    train_error: float
    seconds: float


def stationary_point(
    prob: IdentifyProblem, lam: float, max_iters: int = 3000, tol: float = 1e-9
) -> StationaryPoint:
    """Accelerated proximal gradient (FISTA, backtracking, adaptive restart), float64, full batch,
    started at the common start point ``prob.make_model()``, stopped when the prox-gradient residual
    is below ``tol``. Its zero/nonzero group pattern is the reference every optimizer is measured
    against (computed once per instance; the regularized problem's own stationary structure)."""
    t0 = time.perf_counter()
    model = prob.make_model().double()
    params = list(model.parameters())
    wid = {id(w) for w in prob.weights(model)}
    mask = [id(p) in wid for p in params]
    x = prob.x.double()
    y = prob.y if prob.y.dtype == torch.long else prob.y.double()
    fwd = _functional_forward(model, x)
    reg = ss.GroupLasso(lam, grouping="input")
    ce = nn.functional.cross_entropy

    def f(vals):
        with torch.no_grad():
            return float(ce(fwd(*vals), y))

    def fg(vals):
        vs = [v.detach().requires_grad_() for v in vals]
        loss = ce(fwd(*vs), y)
        return float(loss.detach()), [g.detach() for g in torch.autograd.grad(loss, vs)]

    def r(vals):
        return sum(float(reg.value(v)) for v, m in zip(vals, mask) if m)

    def prox(vals, step):
        return [reg.prox(v, step) if m else v for v, m in zip(vals, mask)]

    xk = [p.detach().clone() for p in params]
    yk = [v.clone() for v in xk]
    tk, lip, res, it = 1.0, 1.0, float("inf"), 0
    fprev = f(xk) + r(xk)
    for k in range(1, max_iters + 1):
        it = k
        fy, gy = fg(yk)
        while True:
            xn = prox([a - b / lip for a, b in zip(yk, gy)], 1.0 / lip)
            d = [a - b for a, b in zip(xn, yk)]
            fx = f(xn)
            quad = sum(float((a * b).sum()) for a, b in zip(gy, d)) + lip / 2 * sum(
                float((a * a).sum()) for a in d
            )
            if fx <= fy + quad + 1e-14:
                break
            lip *= 2
        res = lip * math.sqrt(sum(float((a * a).sum()) for a in d))
        fnew = fx + r(xn)
        if fnew > fprev:  # adaptive restart of the momentum
            tk, yk = 1.0, [v.clone() for v in xk]
            continue
        tn = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
        yk = [a + (tk - 1) / tn * (a - b) for a, b in zip(xn, xk)]
        xk, tk, fprev, lip = xn, tn, fnew, lip / 1.2
        if res < tol:
            break
    _, g = fg(xk)
    zero, margin, min_nz = [], 0.0, float("inf")
    for v, gv, m in zip(xk, g, mask):
        if not m:
            continue
        z = zero_groups(v, "input")
        gcount = z.numel()
        dims = _group_dims(v)
        norms = v.pow(2).sum(dims).sqrt().reshape(-1)
        gnorm = gv.pow(2).sum(dims).sqrt().reshape(-1) / (lam * math.sqrt(v.numel() / gcount))
        zero.append(z)
        if z.any():
            margin = max(margin, float(gnorm[z].max()))
        if (~z).any():
            min_nz = min(min_nz, float(norms[~z].min()))
    ws = [v for v, m in zip(xk, mask) if m]
    yl = y if y.dtype == torch.long else y.argmax(1)
    with torch.no_grad():
        err = float((fwd(*xk).argmax(1) != yl).double().mean())
    return StationaryPoint(
        zero,
        it,
        fprev,
        res,
        margin,
        min_nz,
        pattern_correctness(ws, prob.truth),
        err,
        time.perf_counter() - t0,
    )


def _group_dims(w: Tensor) -> tuple[int, ...]:
    """Dims over which an ``"input"`` group's norm is taken (see docs/math.md)."""
    return (0,) if w.dim() == 2 else (0,) + tuple(range(2, w.dim()))


def run_identify_one(
    prob: IdentifyProblem,
    opt_name: str,
    lam: float,
    epochs: int,
    milestones: Sequence[int],
    batch_size: int,
    seed: int,
    backend: str = "auto",
    hp: dict[str, Any] | None = None,
    gamma: float = 0.1,
    reference: Sequence[Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train ``opt_name`` on ``prob``; per epoch the pattern correctness (w.r.t. ``reference``, the
    stationary point's zero groups, when given; else w.r.t. the generating ground truth), the
    agreement with the generating ground truth, and the training error."""
    spec = OPTIMIZERS[opt_name]
    model = prob.make_model()
    reg = ss.GroupLasso(lam, grouping="input")
    wts = {id(p) for p in prob.weights(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in wts], "regularizer": reg},
        {"params": [p for p in model.parameters() if id(p) not in wts], "regularizer": None},
    ]
    h = {**spec.defaults, **IDENTIFY_HP.get(opt_name, {}), **(hp or {}), "backend": backend}
    opt = spec.build(groups, h)
    sched = ss.RestartScheduler(opt, milestones, gamma, ramp="sqrt")
    gen = torch.Generator().manual_seed(seed)
    n = len(prob.y)
    ylab = prob.y if prob.y.dtype == torch.long else prob.y.argmax(1)
    out = []
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(prob.x[idx]), prob.y[idx]).backward()
            opt.step()
            sched.step_iteration()
        sched.step()
        with torch.no_grad():
            err = float((model(prob.x).argmax(1) != ylab).float().mean())
        ws = prob.weights(model)
        truth_c = pattern_correctness(ws, prob.truth)
        out.append(
            {
                "epoch": epoch,
                "correctness": truth_c if reference is None else pattern_agreement(ws, reference),
                "truth_correctness": truth_c,
                "train_error": err,
            }
        )
    return out


IDENTIFY_OPTIMIZERS = ("rmda", "ramda", "proxsgd", "proxgen", "proxssi")


def run_identify(args: dict[str, Any], out_dir: Path, echo=print) -> dict[str, Any]:
    """The identification experiment as ``args`` says (the ``identify`` flags); writes ``table.md``,
    ``identify.json`` and ``identify.png`` under ``out_dir`` (created once the input is valid).
    ``args["quiet"]`` hides the progress lines, not the final table."""
    opts = args["optimizers"]
    for o in opts:
        if o == "dessilbi":  # its structure is the support of Γ; identify scores the weights' zeros
            raise CLIError(
                "--optimizers: 'dessilbi' is not scored by identify (its structure is the support of Γ, "
                f"its weights stay dense); expected names from {', '.join(IDENTIFY_OPTIMIZERS)}"
            )
        if o not in IDENTIFY_OPTIMIZERS:
            raise CLIError(
                f"--optimizers: {o!r} is not a regularized optimizer; expected names from {', '.join(IDENTIFY_OPTIMIZERS)}"
            )
    if args.get("milestones") is None:
        args = {**args, "milestones": default_milestones(args["epochs"])}
    ms = args["milestones"]
    if any(m <= 0 for m in ms) or ms != sorted(set(ms)) or (ms and ms[-1] >= args["epochs"]):
        raise CLIError(f"--milestones: expected increasing positive epochs before the last epoch, got {ms}")
    for k in ("lam", "lam_conv", "gamma"):
        if not (math.isfinite(args[k]) and (args[k] > 0 if k == "gamma" else args[k] >= 0)):
            raise CLIError(f"--{k.replace('_', '-')}: invalid value {args[k]}")
    if args["ref_iters"] < 1:
        raise CLIError(f"--ref-iters: expected a positive count, got {args['ref_iters']}")
    check_backend(args["backend"], "cpu")
    problems = []
    if "linear" in args["problems"]:
        problems.append(
            (
                "linear",
                linear_problem(
                    args["n"], args["features"], args["classes"], (3 * args["features"]) // 4, args["seed"]
                ),
                args["lam"],
            )
        )
    if "conv" in args["problems"]:
        problems.append(("conv", conv_problem(args["n"], args["seed"]), args["lam_conv"]))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    refs: dict[str, dict[str, Any]] = {}
    for key, prob, lam in problems:
        results[key] = {}
        sp = stationary_point(prob, lam, max_iters=args["ref_iters"])
        refs[key] = {k: v for k, v in sp.__dict__.items() if k != "zero"}
        refs[key]["nonzero_groups"] = [(~z).int().tolist() for z in sp.zero]
        if not args["quiet"]:
            echo(
                f"{prob.name}: reference pattern = stationary point of CE + λ·group LASSO (λ {lam:g}), "
                f"float64 full-batch FISTA from the common start, {sp.iterations} its, residual "
                f"{sp.residual:.1e}, max ‖∇_g f‖/(λw_g) on zero groups {sp.zero_margin:.3f}, "
                f"min nonzero group norm {sp.min_nonzero_norm:.3f}; agreement with the generating ground "
                f"truth {_pct(sp.agreement_with_truth)}; training error {_pct(sp.train_error)} "
                f"({sp.seconds:.1f}s)"
            )
        for o in opts:
            t0 = time.perf_counter()
            hist = run_identify_one(
                prob,
                o,
                lam,
                args["epochs"],
                ms,
                args["batch_size"],
                args["seed"],
                args["backend"],
                hp=IDENTIFY_HP_PROBLEM.get(key, {}).get(o),
                reference=sp.zero,
            )
            results[key][o] = hist
            if not args["quiet"]:
                echo(
                    f"{prob.name:22s} {o:8s} final pattern correctness {_pct(hist[-1]['correctness']):>9s}  "
                    f"training error {_pct(hist[-1]['train_error']):>8s}  ({time.perf_counter() - t0:.1f}s)"
                )
    rows = []
    for key, prob, lam in problems:
        for o in opts:
            h = results[key][o]
            exact_from = None
            for r in reversed(h):
                if r["correctness"] < 1.0:
                    break
                exact_from = r["epoch"]
            rows.append(
                [
                    prob.name,
                    o,
                    f"{lam:g}",
                    _pct(h[-1]["correctness"]),
                    _pct(max(r["correctness"] for r in h)),
                    "-" if exact_from is None else exact_from,
                    _pct(h[-1]["train_error"]),
                ]
            )
    header = [
        "problem",
        "optimizer",
        "λ",
        "final pattern correctness (vs stationary point)",
        "best",
        "exact from epoch (to the end)",
        "final training error",
    ]
    table = _md_table(header, rows)
    make_dir(out_dir)
    write_text(out_dir / "table.md", table + "\n")
    write_text(
        out_dir / "identify.json",
        json.dumps({"config": args, "reference": refs, "results": results}, indent=2, default=str) + "\n",
    )
    if args["plot"]:
        _plot_identify(results, {k: p.name for k, p, _ in problems}, out_dir / "identify.png")
    echo(("" if args["quiet"] else "\n") + table)
    return results


def cmd_identify(ns: argparse.Namespace) -> int:
    args = {k: v for k, v in vars(ns).items() if k != "func"}
    args["optimizers"] = [o.strip() for o in ns.optimizers.split(",") if o.strip()]
    args["problems"] = [p.strip() for p in ns.problems.split(",") if p.strip()]
    for k in ("problems", "optimizers"):
        if not args[k]:
            raise CLIError(f"--{k}: empty list")
    for p in args["problems"]:
        if p not in ("linear", "conv"):
            raise CLIError(f"--problems: unknown problem {p!r}; expected linear and/or conv")
    for k in ("n", "features", "classes", "epochs", "batch_size", "threads"):
        if k == "threads" and args[k] is None:
            continue
        if args[k] < 1 or (k == "features" and args[k] < 2) or (k == "classes" and args[k] < 2):
            raise CLIError(f"--{k.replace('_', '-')}: invalid value {args[k]}")
    torch.manual_seed(ns.seed)
    out_dir = _run_dir(
        ns.out, ns.run_name or f"identify-s{ns.seed}", unique=ns.run_name is None, create=False
    )
    with _threads(ns.threads, "synthetic"):
        run_identify(args, out_dir)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "identify",
        help="synthetic structure identification (RMDA paper §5.1, Fig. 1)",
        description="The RMDA paper's structure-identification experiment: ground-truth group-sparse "
        "models (logistic regression, a small conv net), data labeled by them, every regularized "
        "optimizer trained on them. The reference pattern is the zero/nonzero group pattern of a "
        "stationary point of the regularized problem (float64 full-batch FISTA from the common "
        "start); per epoch the fraction of groups matching it and the training error.",
    )
    p.add_argument("--problems", default="linear,conv", help="linear and/or conv (default: %(default)s)")
    p.add_argument("--optimizers", default=",".join(IDENTIFY_OPTIMIZERS), help="default: %(default)s")
    p.add_argument("--n", type=int, default=4000, help="training examples (default: %(default)s)")
    p.add_argument(
        "--features", type=int, default=32, help="logistic regression input features (default: %(default)s)"
    )
    p.add_argument(
        "--classes", type=int, default=3, help="logistic regression classes (default: %(default)s)"
    )
    p.add_argument(
        "--lam",
        type=float,
        default=2e-2,
        help="group LASSO weight, logistic regression (default: %(default)s)",
    )
    p.add_argument(
        "--lam-conv", type=float, default=1.5e-3, help="group LASSO weight, conv net (default: %(default)s)"
    )
    p.add_argument(
        "--ref-iters",
        type=int,
        default=3000,
        help="iterations of the full-batch float64 solve giving the reference pattern (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=30, help="default: %(default)s")
    p.add_argument(
        "--milestones",
        type=_milestones,
        default=None,
        help="epochs of lr decay and restart, or 'none' (default: at 1/3 and 2/3 of --epochs: 10,20)",
    )
    p.add_argument(
        "--gamma", type=float, default=0.1, help="lr factor at each milestone (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "cpu", "triton", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1)")
    p.add_argument("--out", default=None, metavar="DIR")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("-q", "--quiet", action="store_true", help="only the final table")
    p.set_defaults(func=cmd_identify)
