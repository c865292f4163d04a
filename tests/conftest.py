"""Shared tables and helpers of the test suite.

- ``ALGOS``: every optimizer configuration the backend tests run (class, constructor keywords and
  the regularizer weight that gives a mix of zero and kept groups on the tensors below);
- ``make_reg``: a regularizer of each kind; ``make_tensors``: weights whose group scales spread
  over orders of magnitude (so some groups are screened and some kept);
- ``run``: several optimizer steps with ``opt.restart()`` in the middle; ``assert_same``: the
  parameters and every state entry of two runs against a tolerance relative to the reference's
  largest magnitude;
- ``fused_backends()``: the fused backends that can run here (``cpu`` with the C++ extension,
  ``cuda`` and ``triton`` with a GPU).

Test modules import these names directly (``from conftest import ALGOS``): pytest puts this
folder on ``sys.path``.
"""

from __future__ import annotations

import pytest
import torch

import structsparse as ss

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

#: name -> (class, constructor keywords, regularizer weight)
ALGOS = {
    "rmda": (ss.RMDA, dict(lr=0.1, momentum=0.5), 0.3),
    "ramda_pg": (ss.RAMDA, dict(lr=0.1, momentum=0.5, solver="pg"), 0.5),
    "ramda_exact": (ss.RAMDA, dict(lr=0.1, momentum=0.5, solver="exact"), 0.5),
    "proxsgd": (ss.ProxSGD, dict(lr=0.1, momentum=0.5), 0.5),
    "proxgen_pg": (ss.ProxGen, dict(lr=0.05, weight_decay=0.01, solver="pg"), 1.0),
    "proxgen_exact": (ss.ProxGen, dict(lr=0.05, weight_decay=0.01, solver="exact"), 1.0),
    "proxssi": (ss.ProxSSI, dict(lr=0.05, weight_decay=0.01), 1.0),
    "dessilbi": (ss.DessiLBI, dict(lr=0.2, kappa=2.0, nu=0.5, momentum=0.9, weight_decay=0.01), 0.3),
}
#: the configurations that solve the weighted subproblem exactly (no NuclearNorm)
EXACT = ("ramda_exact", "proxgen_exact", "proxssi")
#: the configurations with the proximal-gradient inner solver
PG = ("ramda_pg", "proxgen_pg")
#: the regularizer kinds of make_reg
REG_KINDS = ("none", "group_lasso", "l1", "sgl", "group_mcp", "mcp", "nuclear")


def accepts(algo: str, kind: str) -> bool:
    """Whether the optimizer of ``algo`` accepts a regularizer of ``kind``: the exact solves take
    every kind but the nuclear norm; DessiLBI pairs weights with L1 or group LASSO only."""
    if algo in EXACT:
        return kind != "nuclear"
    if algo == "dessilbi":
        return kind in ("none", "group_lasso", "l1")
    return True


def make_reg(kind: str, lam: float, grouping="input"):
    """A regularizer of ``kind`` (see REG_KINDS) scaled by ``lam``; ``"none"`` gives None."""
    return {
        "none": lambda: None,
        "group_lasso": lambda: ss.GroupLasso(lam, grouping),
        "l1": lambda: ss.L1(lam / 4),
        "sgl": lambda: ss.SparseGroupLasso(lam / 8, lam / 2, grouping),
        "group_mcp": lambda: ss.GroupMCP(lam, 2.0, grouping),
        "mcp": lambda: ss.MCP(lam / 4, 2.0),
        "nuclear": lambda: ss.NuclearNorm(lam),
    }[kind]()


def make_tensors(shapes, dtype, seed=0, channels_last=False, noncontig=False, device="cpu"):
    """Random tensors of ``shapes``; dim 1 (the input channels) scaled by exp(1.5·N(0, 1)) so
    that groups are screened at some scales and kept at others."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if t.dim() >= 2 and t.numel():
            scale = torch.exp(1.5 * torch.randn(shape[1], generator=gen, dtype=torch.float64))
            t = t * scale.view(1, -1, *([1] * (t.dim() - 2)))
        t = t.to(dtype=dtype, device=device)
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        if noncontig and t.dim() == 2:
            t = t.t().contiguous().t()  # transposed storage
        out.append(t)
    return out


def run(algo, reg, weights, biases, backend, steps=10, restart_at=5, seed=1, reload_at=None, **extra):
    """``steps`` steps of ``algo`` on copies of ``weights`` (regularized) and ``biases`` (not),
    gradients ``0.3·noise + W``; ``opt.restart()`` after step ``restart_at``; after step
    ``reload_at`` the optimizer is replaced by a fresh one loaded from its state_dict (a resume).
    ``force_rtol`` in ``extra`` sets the param groups' rtol past its validation (e.g. -1e30: PG
    runs exactly ``max_iters`` iterations). Returns (parameters, optimizer)."""
    cls, kw, _ = ALGOS[algo]
    force_rtol = extra.pop("force_rtol", None)
    kw = {**kw, **extra}
    ws = [torch.nn.Parameter(w.clone().as_strided(w.size(), w.stride())) for w in weights]
    bs = [torch.nn.Parameter(b.clone()) for b in biases]
    groups = [{"params": ws, "regularizer": reg}]
    if bs:
        groups.append({"params": bs, "regularizer": None})

    def force(opt):  # past the validation on purpose: step() revalidates only changed groups
        if force_rtol is not None:
            for i, g in enumerate(opt.param_groups):
                g["rtol"] = force_rtol
                opt._remember(i)
        return opt

    opt = force(cls(groups, backend=backend, **kw))
    gen = torch.Generator().manual_seed(seed)
    for k in range(steps):
        for p in ws + bs:
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).to(p.device)
            p.grad = torch.empty_like(p).copy_(0.3 * noise + p.detach())  # p's memory format
        opt.step()
        if k + 1 == restart_at:
            opt.restart()
        if k + 1 == reload_at:
            sd = opt.state_dict()
            if force_rtol is not None:  # a valid rtol for load_state_dict's checks; forced again below
                for g in sd["param_groups"]:
                    g["rtol"] = 1e-8
            opt = cls(groups, backend=backend, **kw)
            opt.load_state_dict(sd)
            force(opt)
    return ws + bs, opt


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x − ref| / max |ref| (0 for empty tensors)."""
    x, ref = x.double(), ref.double()
    if ref.numel() == 0:
        assert x.numel() == 0
        return 0.0
    return (x - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


def assert_same(a_params, a_opt, b_params, b_opt, tol):
    """Parameters (strides included) and every state entry of run ``a`` against run ``b``: tensors
    within ``tol`` relative to b's largest magnitude, equal dtypes, equal zero patterns unless the
    difference is within the tolerance anyway; scalars equal to 1e-15."""
    for pa, pb in zip(a_params, b_params):
        assert pa.stride() == pb.stride()
        pairs = [("param", pa.detach(), pb.detach())]
        sa, sb = a_opt.state[pa], b_opt.state[pb]
        assert set(sa) == set(sb)
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                assert sa[k].dtype == sb[k].dtype, k
                pairs.append((k, sa[k], sb[k]))
            else:
                assert sa[k] == pytest.approx(sb[k], rel=1e-15), k
        for what, x, ref in pairs:
            err = rel_err(x, ref)
            assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


def fused_backends() -> list[str]:
    """The fused backends available here: ``cpu`` when the C++ extension is loaded; ``cuda`` and
    ``triton`` when a GPU and their kernels are (the Triton interpreter runs in
    tests/test_triton_backend.py)."""
    out = []
    from structsparse.backends import cpu as cpu_backend

    if cpu_backend.available()[0]:
        out.append("cpu")
    if torch.cuda.is_available():
        from structsparse.backends import cuda as cuda_backend
        from structsparse.backends import triton as triton_backend

        if cuda_backend.available()[0]:
            out.append("cuda")
        if triton_backend.available()[0]:
            out.append("triton")
    return out


def device_of(backend: str) -> str:
    return "cpu" if backend == "cpu" else "cuda"
