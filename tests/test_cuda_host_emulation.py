"""The CUDA kernels' logic, checked on the CPU (no GPU needed): tests/cuda_host/emulate.cu runs the
kernels' own per-element and per-group code (csrc/cuda/kernels.cuh: state updates, closed-form
group prox, screening, Newton, PG with the per-group stopping rule and the warm-start guard, the
exact SparseGroupLasso/GroupMCP/MCP solves, mixing, dtype conversion) over a bucket planned by the kernels' ``plan_bucket``, with a one-lane
team. Compared with the reference backend: parameters and all state, several steps with a
restart, every algorithm × solver × regularizer (DessiLBI: L1, group LASSO and unpaired tensors),
groupings hitting every path (elementwise, warp- and block-sized groups, groups above the on-chip
limit in the global workspace).

Not exercised here: multi-lane warp/block reductions, barriers, the launch and the torch glue
(tests/test_cuda_backend.py covers those on a GPU). Skipped when nvcc is not installed."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import newton_cases
import pytest
import torch

import structsparse as ss
from structsparse.backends import cpu as cpu_backend
from structsparse.backends import reference

ROOT = Path(__file__).resolve().parents[1]
NVCC = os.environ.get("NVCC") or shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA host emulation not built")

DT = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
NSTATE = {"rmda": 2, "ramda": 3, "proxsgd": 1, "proxgen": 2, "proxssi": 2, "dessilbi": 3}

# case name -> (algorithm, solver, hyperparameters, regularizer weight)
ALGOS = {
    "rmda": ("rmda", None, dict(lr=0.1, c=0.5), 0.3),
    "ramda_pg": ("ramda", "pg", dict(lr=0.1, c=0.5, eps=1e-6), 0.5),
    "ramda_exact": ("ramda", "exact", dict(lr=0.1, c=0.5, eps=1e-6), 0.5),
    "proxsgd": ("proxsgd", None, dict(lr=0.1, c=0.5), 0.5),
    "proxgen_pg": ("proxgen", "pg", dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01), 1.0),
    "proxgen_exact": (
        "proxgen",
        "exact",
        dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
        1.0,
    ),
    "proxssi": ("proxssi", "exact", dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01), 1.0),
    "dessilbi": ("dessilbi", None, dict(lr=0.2, kappa=2.0, nu=0.5, momentum=0.9, weight_decay=0.01), 0.3),
}
#: DessiLBI pairs parameters with Z, Γ only under L1 / group LASSO (no regularizer: heavy-ball SGD)
DESSILBI_KINDS = ("group_lasso", "none", "l1")
MAX_ITERS, RTOL = 100, 1e-8

# shapes whose [A, G, B] views under "input"/"output" hit every path: groups of ≤ 128 elements
# (warp), ≤ 1024 (block), > 1024 (two-phase / workspace)
SHAPES = [(6, 5), (40, 3, 3, 3), (3, 1100), (1, 1)]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("cuda_host") / "emulate"
    cmd = [
        NVCC,
        "-std=c++17",
        "-O1",
        f"-I{ROOT / 'csrc' / 'include'}",
        "-gencode",
        "arch=compute_80,code=sm_80",
    ]
    cmd += [str(ROOT / "tests" / "cuda_host" / "emulate.cu"), "-o", str(exe)]
    subprocess.run(cmd, check=True, timeout=600)
    return exe


def make_reg(kind: str, lam: float, grouping: str):
    return {
        "none": lambda: None,
        "group_lasso": lambda: ss.GroupLasso(lam, grouping),
        "l1": lambda: ss.L1(lam / 4),
        "sgl": lambda: ss.SparseGroupLasso(lam / 8, lam / 2, grouping),
        "group_mcp": lambda: ss.GroupMCP(lam, 2.0, grouping),
        "mcp": lambda: ss.MCP(lam / 4, 2.0),
    }[kind]()


def _scalars(algo: str, hp: dict, t: int, alpha: float) -> list[float]:
    """Per-tensor scalars, as csrc/cuda/ops.cpp computes them."""
    if algo == "rmda":
        sqt = math.sqrt(t)
        return [hp["lr"] * sqt, sqt, hp["c"], alpha / sqt]
    if algo == "ramda":
        return [hp["lr"] * math.sqrt(t), hp["c"], hp["eps"], alpha]
    if algo == "proxsgd":
        return [hp["lr"], hp["c"]]
    if algo == "dessilbi":
        lk = hp["lr"] * hp["kappa"]
        return [lk, lk * hp["weight_decay"], lk / hp["nu"], hp["lr"] / hp["nu"], hp["kappa"], hp["momentum"]]
    b1, b2 = hp["beta1"], hp["beta2"]
    return [hp["lr"], b1, b2, hp["eps"], hp["weight_decay"], 1 - b1**t, 1 - b2**t]


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def emulated_step(exe, work: Path, algo, solver, hp, reg, params, grads, states, t, alpha, opts) -> str:
    kind, rp = cpu_backend._reg_args(reg)
    views = cpu_backend._views(params, reg)
    kinds = {"none": 0, "group_lasso": 1, "sparse_group_lasso": 2, "group_mcp": 3}
    dbl = int(params[0].dtype == torch.float64)
    lines = [
        f"{algo} {dbl} {kinds[kind]} {rp[0]!r} {rp[1]!r} {rp[2]!r} {int(solver == 'exact')} "
        f"{opts[0]} {opts[1]!r} {len(params)}"
    ]
    sc = _scalars(algo, hp, t, alpha)
    sc += [0.0] * (8 - len(sc))
    for i, (p, g) in enumerate(zip(params, grads)):
        lines.append(" ".join(str(v) for v in views[3 * i : 3 * i + 3]) + f" {DT[p.dtype]} {DT[g.dtype]} ")
        lines[-1] += " ".join(repr(float(x)) for x in sc)
        (work / f"w{i}.bin").write_bytes(_raw(p))
        (work / f"g{i}.bin").write_bytes(_raw(g))
        for k, st in enumerate(states):
            (work / f"s{k}_{i}.bin").write_bytes(_raw(st[i]))
    (work / "job.txt").write_text("\n".join(lines) + "\n")
    res = subprocess.run([str(exe), str(work)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for i, p in enumerate(params):
        p.copy_(torch.frombuffer(bytearray((work / f"w{i}.bin").read_bytes()), dtype=p.dtype).view(p.shape))
        for k, st in enumerate(states):
            buf = bytearray((work / f"s{k}_{i}.bin").read_bytes())
            st[i].copy_(torch.frombuffer(buf, dtype=st[i].dtype).view(st[i].shape))
    return res.stdout


def reference_step(algo, solver, hp, reg, params, grads, states, t, alpha, opts) -> None:
    if algo == "rmda":
        reference.rmda_step(
            params, grads, *states, steps=[t] * len(params), alphas=[alpha] * len(params), reg=reg, **hp
        )
    elif algo == "ramda":
        reference.ramda_step(
            params, grads, *states, steps=[t] * len(params), alphas=[alpha] * len(params), reg=reg,
            solver=solver, max_iters=opts[0], rtol=opts[1], **hp,
        )  # fmt: skip
    elif algo == "proxsgd":
        reference.proxsgd_step(params, grads, *states, reg=reg, **hp)
    elif algo == "dessilbi":
        zs, gammas = (states[1], states[2]) if reg is not None else ([], [])
        reference.dessilbi_step(params, grads, states[0], zs, gammas, reg=reg, **hp)
    elif algo == "proxgen":
        reference.proxgen_step(
            params, grads, *states, steps=[t] * len(params), reg=reg, solver=solver, max_iters=opts[0],
            rtol=opts[1], **hp,
        )  # fmt: skip
    else:
        reference.proxssi_step(params, grads, *states, steps=[t] * len(params), reg=reg, **hp)


def trajectory(case, reg, shapes, dtype, runner, steps=4, restart_at=2, opts=(MAX_ITERS, RTOL)):
    """Parameters and state after `steps` steps (restart before step `restart_at`, RMDA/RAMDA)."""
    algo, solver, hp, _ = ALGOS[case]
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        if len(shape) >= 2:  # spread group scales so that some groups are screened
            w = w * torch.exp(1.5 * torch.randn(shape[1], generator=gen, dtype=torch.float64)).view(
                1, -1, *([1] * (len(shape) - 2))
            )
        params.append(w.to(dtype))
    nstate = 1 if algo == "dessilbi" and reg is None else NSTATE[algo]
    states = [[torch.zeros(p.shape, dtype=sdt) for p in params] for _ in range(nstate)]
    if algo in ("rmda", "ramda"):
        states[0] = [p.to(sdt, copy=True) for p in params]  # anchors
    t, alpha = 0, 0.0
    for step in range(steps):
        if step == restart_at and algo in ("rmda", "ramda"):
            t, alpha = 0, 0.0
            states[0] = [p.to(sdt, copy=True) for p in params]
            for st in states[1:]:
                for x in st:
                    x.zero_()
        t += 1
        if algo in ("rmda", "ramda"):
            alpha += hp["lr"] * math.sqrt(t)
        grads = [
            (0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64) + p.double()).to(dtype)
            for p in params
        ]
        runner(algo, solver, hp, reg, params, grads, states, t, alpha, opts)
    return params, states


def _err(x, ref):
    scale = ref.abs().max().item() or 1.0
    return (x.double() - ref.double()).abs().max().item() / scale


CASES = [
    (case, kind, grouping)
    for case in ALGOS
    for kind, grouping in [
        ("group_lasso", "input"),
        ("group_lasso", "output"),
        ("none", "input"),
        ("l1", "input"),
        ("sgl", "output"),
        ("group_mcp", "input"),
        ("mcp", "input"),
    ]
    if case != "dessilbi" or kind in DESSILBI_KINDS
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case,kind,grouping", CASES)
def test_emulated_kernels_match_reference(emulator, tmp_path, case, kind, grouping, dtype):
    reg = make_reg(kind, ALGOS[case][3], grouping)
    paths = set()

    def emu(*args):
        out = emulated_step(emulator, tmp_path, *args)
        paths.update(out.split("paths")[1].split())

    # float32 PG: Q is evaluated in float64, but float32 iterates differing by ulps can still move a
    # group's stop by one iteration where Q's decrease lies near rtol·(|Q| + 1) (to the default
    # rtol: 101 of 102 cases within 1e-5, elementwise MCP ProxGen 1.0e-4, one PG step); float32
    # runs a fixed number of PG iterations instead (rtol = -1e30 never stops early), at 1e-5.
    pg32 = dtype == torch.float32 and ALGOS[case][1] == "pg"
    opts = (20, -1e30) if pg32 else (MAX_ITERS, RTOL)
    a = trajectory(case, reg, SHAPES, dtype, emu, opts=opts)
    b = trajectory(case, reg, SHAPES, dtype, reference_step, opts=opts)
    if kind in ("group_lasso", "sgl", "group_mcp"):
        # "input": warp (6,5), block (40,3,3,3), elementwise (1,1); "output": stream (3,1100)
        assert paths >= ({"0", "1", "2"} if grouping == "input" else {"3"}), paths
    if case == "dessilbi" and kind != "none":  # Γ = κ·prox(Z) has both zero and kept entries
        gam = torch.cat([x.flatten() for x in b[1][2]])
        assert (gam == 0).any() and (gam != 0).any()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for x, y in zip(a[0] + sum(a[1], []), b[0] + sum(b[1], [])):
        assert x.dtype == y.dtype
        assert _err(x, y) <= tol, f"max rel err {_err(x, y):.2e}"
        # zero patterns (the structure) agree wherever the reference has exact zeros
        assert torch.equal(x == 0, y == 0) or _err(x, y) == 0


@pytest.mark.parametrize("case", ["rmda", "ramda_exact", "proxgen_pg", "dessilbi"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_emulated_low_precision(emulator, tmp_path, case, dtype):
    """fp16/bf16 parameters with fp32 state: parameters and state within about one rounding of
    the parameter dtype (a rounding difference in W feeds back through the gradient g = noise + W)."""
    reg = make_reg("group_lasso", ALGOS[case][3], "input")
    opts = (20, -1e30)  # fixed PG iteration count, as for float32 above
    a = trajectory(
        case, reg, SHAPES, dtype, lambda *args: emulated_step(emulator, tmp_path, *args), opts=opts
    )
    b = trajectory(case, reg, SHAPES, dtype, reference_step, opts=opts)
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    for x, y in zip(a[0], b[0]):
        assert x.dtype == dtype
        assert (x.double() - y.double()).abs().max().item() <= ulp * y.double().abs().max().item() + 1e-6
    for x, y in zip(sum(a[1], []), sum(b[1], [])):
        assert x.dtype == torch.float32
        assert _err(x, y) <= ulp


# Newton's rule of csrc/include/structsparse/math.h in the CUDA solves — one thread per element,
# a warp or a block per group, and groups above the on-chip limit in the global workspace — on the
# hard cases of tests/newton_cases.py (P spread over decades within a group, thresholds from tiny
# to near-screening): within rounding of the bisection root, as the reference and the cpu backend.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lam", [1e-6, 1e-2, 0.3, 3.0])
@pytest.mark.parametrize("grouping", ["input", "output"])
def test_emulated_newton_start_and_stop(emulator, tmp_path, lam, grouping, dtype):
    shapes = [(40, 30, 3, 3), (300, 50), (3, 700), (1100, 3), (3, 1100), (1, 1)]
    state = newton_cases.ramda_states(shapes, dtype)
    reg = ss.GroupLasso(lam, grouping)
    ws = [torch.zeros(s, dtype=dtype) for s in shapes]
    us, w0s, vs = ([t[i].clone() for t in state] for i in range(3))
    hp = dict(lr=0.1, c=1.0, eps=newton_cases.EPS)
    out = emulated_step(
        emulator, tmp_path, "ramda", "exact", hp, reg, ws, [torch.zeros_like(w) for w in ws], [w0s, vs, us], 1,
        newton_cases.ALPHA, (MAX_ITERS, RTOL),
    )  # fmt: skip
    assert set(out.split("paths")[1].split()) >= {"0", "1", "2", "3"}
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    newton_cases.assert_bisection(shapes, state, reg, lam, ws, tol, "cuda")


# The exact SparseGroupLasso, GroupMCP and MCP solves of the CUDA kernels (kernels.cuh
# team_exact_sgl / team_exact_gmcp, math.h mcp_weighted and gmcp_next) on crafted subproblems: one
# RAMDA "exact" step from a set state (W0 = 0, zero gradient, c = 1: the parameter is the solution
# of min ½Σ P(x − pz/P)² + a·ψ(x) with pz = −V), groups chosen to hit every branch — the screening
# boundary from both sides, GroupMCP groups that are convex (min P ≥ a/ω_g) and nonconvex, and among
# the latter all three candidates 0, X(s₁) and Z; MCP elements on both sides of P = a/ω with every
# outcome of the firm and the hard threshold — on every path (strided "input" and contiguous
# "output" groups; warp-, block-sized and larger groups; one element).
EXACT_SHAPES = {
    "input": [(6, 40), (40, 24, 3, 3), (1100, 14)],  # strided groups of 6 (warp), 360 (block), 1100
    "output": [(30, 7), (24, 300), (10, 1100), (1, 1)],  # contiguous 7, 300, 1100 and one element
}
EXACT_RATIOS = [0.5, 1 - 1e-3, 1 + 1e-3, 1.2, 1.7, 3.0, 10.0, 100.0]  # ‖pz‖ (SGL: ‖u‖) / T
A_EXACT = 0.7


def _exact_state(kind, shape, reg, dtype, gen):
    """(U, W0, V) in `dtype` and P (float64) with the group regimes above for one tensor."""
    A, G, B = reg.view_shape(shape)
    wg = reg.group_weight(shape)
    if kind == "mcp":
        lam, c = reg.lam, A_EXACT / reg.omega
        thr = A_EXACT * lam
    elif kind == "group_mcp":
        lam, c = reg.lam * wg, A_EXACT / (reg.omega * wg)
        thr = A_EXACT * lam
    else:
        c, thr = 1.0, A_EXACT * reg.lam_group * wg
    # per group: P = c·e^U(lo, hi) with (lo, hi) convex (> c), mixed, or all below c
    bands = torch.tensor([[0.05, 2.5], [-2.0, 2.0], [-2.5, -0.05]], dtype=torch.float64)
    band = bands[torch.arange(G) % 3]
    if kind == "mcp":  # one element per group: the band at random
        band = bands[torch.randint(0, 3, (G,), generator=gen)]
    t = torch.rand(A, G, B, generator=gen, dtype=torch.float64)
    p3 = c * torch.exp(band[:, 0].view(1, G, 1) + t * (band[:, 1] - band[:, 0]).view(1, G, 1))
    d = torch.randn(A, G, B, generator=gen, dtype=torch.float64)
    ratio = torch.tensor(EXACT_RATIOS, dtype=torch.float64)[(torch.arange(G) // 3) % len(EXACT_RATIOS)]
    if kind == "mcp":
        ratio = torch.exp(torch.empty(G, dtype=torch.float64).uniform_(-1.5, 3.5, generator=gen))
    if kind == "sgl":  # u = d scaled to ‖u‖ = ratio·T, a third of it 0 (|pz| < a·λ1)
        t1 = A_EXACT * reg.lam_l1
        d = torch.where(torch.rand(A, G, B, generator=gen, dtype=torch.float64) < 0.3, 0.0, d)
        d = d * (ratio * thr / d.pow(2).sum((0, 2)).sqrt().clamp_min(1e-300)).view(1, G, 1)
        frac = torch.rand(A, G, B, generator=gen, dtype=torch.float64)
        pz3 = torch.where(d == 0, (2 * frac - 1) * 0.99 * t1, torch.sign(d) * (d.abs() + t1))
    else:
        pz3 = d * (ratio * thr / d.pow(2).sum((0, 2)).sqrt()).view(1, G, 1)
    u = p3.pow(3).to(dtype)
    v = (-pz3).to(dtype)
    return u.reshape(shape), torch.zeros(shape, dtype=dtype), v.reshape(shape), p3


def _exact_reg(kind, grouping):
    return {
        "sgl": lambda: ss.SparseGroupLasso(0.02, 0.05, grouping),
        "group_mcp": lambda: ss.GroupMCP(0.05, 0.8, grouping),
        "mcp": lambda: ss.MCP(0.05, 0.8),
    }[kind]()


def _exact_outcomes(kind, reg, shape, p3, v, x):
    """The branches the reference solution `x` took, per group (float64 classification)."""
    A, G, B = reg.view_shape(shape)
    wg = reg.group_weight(shape)
    x3 = x.double().reshape(A, G, B)
    pz3 = -v.double().reshape(A, G, B)
    z3 = pz3 / p3
    zero = (x3 == 0).all(dim=(0, 2))
    out = set()
    if kind == "sgl":
        thr = A_EXACT * reg.lam_group * wg
        u = torch.sign(pz3) * (pz3.abs() - A_EXACT * reg.lam_l1).clamp_min(0)
        un = u.pow(2).sum((0, 2)).sqrt()
        near = (un / thr - 1).abs() < 2e-3
        out |= {"boundary screened"} if (near & zero).any() else set()
        out |= {"boundary kept"} if (near & ~zero).any() else set()
        if ((x3 == 0) & ~zero.view(1, G, 1)).any():
            out.add("l1 zeros in kept groups")
        return out
    if kind == "mcp":
        c, lam, om = A_EXACT / reg.omega, reg.lam, reg.omega
        p, xx, z = p3.flatten(), x3.flatten(), z3.flatten()
        firm = p > c
        out |= {"firm 0"} if (firm & (xx == 0)).any() else set()
        at_z = (xx - z).abs() <= 1e-5 * z.abs()
        out |= {"firm z"} if (firm & at_z & (z.abs() > om * lam)).any() else set()
        out |= {"firm middle"} if (firm & (xx != 0) & ~at_z).any() else set()
        out |= {"hard 0"} if (~firm & (xx == 0)).any() else set()
        out |= {"hard z"} if (~firm & (xx != 0)).any() else set()
        return out
    c = A_EXACT / (reg.omega * wg)
    convex = p3.amin((0, 2)) >= c
    is_z = ((x3 - z3).abs() <= 1e-6 * z3.abs().amax((0, 2), keepdim=True)).all(dim=(0, 2))
    for g in range(G):
        kind_g = "convex" if convex[g] else "nonconvex"
        what = "0" if zero[g] else ("Z" if is_z[g] else "X(s1)")
        out.add(f"{kind_g} {what}")
    return out


EXACT_EXPECTED = {
    "sgl": {"boundary screened", "boundary kept", "l1 zeros in kept groups"},
    "mcp": {"firm 0", "firm z", "firm middle", "hard 0", "hard z"},
    "group_mcp": {"convex 0", "convex X(s1)", "convex Z", "nonconvex 0", "nonconvex X(s1)", "nonconvex Z"},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["sgl", "group_mcp", "mcp"])
def test_emulated_exact_branches(emulator, tmp_path, kind, dtype):
    gen = torch.Generator().manual_seed(5)
    covered, paths = set(), set()
    groupings = ["input"] if kind == "mcp" else ["input", "output"]
    for grouping in groupings:
        reg = _exact_reg(kind, grouping)
        shapes = EXACT_SHAPES[grouping]
        st = [_exact_state(kind, s, reg, dtype, gen) for s in shapes]
        us, w0s, vs = ([t[i] for t in st] for i in range(3))
        n = len(shapes)
        hp = dict(lr=0.1, c=1.0, eps=1e-12)
        outs = {}
        for who in ("cuda", "reference"):
            ws = [torch.zeros(s, dtype=dtype) for s in shapes]
            states = [[x.clone() for x in w0s], [x.clone() for x in vs], [x.clone() for x in us]]
            grads = [torch.zeros_like(w) for w in ws]
            if who == "cuda":
                out = emulated_step(
                    emulator, tmp_path, "ramda", "exact", hp, reg, ws, grads, states, 1, A_EXACT,
                    (MAX_ITERS, RTOL),
                )  # fmt: skip
                paths.update(out.split("paths")[1].split())
            else:
                reference.ramda_step(
                    ws, grads, *states, steps=[1] * n, alphas=[A_EXACT] * n, reg=reg, solver="exact",
                    max_iters=MAX_ITERS, rtol=RTOL, **hp,
                )  # fmt: skip
            outs[who] = ws
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        for shape, x, y in zip(shapes, outs["cuda"], outs["reference"]):
            assert _err(x, y) <= tol, (grouping, shape, f"max rel err {_err(x, y):.2e}")
            assert torch.equal(x == 0, y == 0), (grouping, shape)
        for shape, (_, _, v, p3), y in zip(shapes, st, outs["reference"]):
            covered |= _exact_outcomes(kind, reg, shape, p3, v, y)
    assert covered >= EXACT_EXPECTED[kind], EXACT_EXPECTED[kind] - covered
    assert paths >= ({"0"} if kind == "mcp" else {"0", "1", "2", "3"}), paths
