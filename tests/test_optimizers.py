"""Optimizers on the reference backend: closed forms, restarts, param groups, state_dicts,
dtypes, bad input, non-finite gradients, schedulers."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn

import structsparse as ss

REF = {"backend": "reference"}

_SPECS = {
    "rmda": (ss.RMDA, dict(lr=0.05, momentum=0.9)),
    "ramda_pg": (ss.RAMDA, dict(lr=0.05, momentum=0.9, solver="pg")),
    "ramda_exact": (ss.RAMDA, dict(lr=0.05, momentum=0.9, solver="exact")),
    "proxsgd": (ss.ProxSGD, dict(lr=0.05, momentum=0.9)),
    "proxgen_pg": (ss.ProxGen, dict(lr=1e-2, weight_decay=1e-3)),
    "proxgen_exact": (ss.ProxGen, dict(lr=1e-2, solver="exact")),
    "proxssi": (ss.ProxSSI, dict(lr=1e-2, weight_decay=1e-3)),
}


def _factory(name):
    cls, defaults = _SPECS[name]
    return lambda params, **kw: cls(params, **{**defaults, **REF, **kw})


OPTIMIZERS = {name: _factory(name) for name in _SPECS}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _data(n, dtype=torch.float32, seed=0):
    """Batches whose label depends on input channel 0 only (channels 1, 2 are noise)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, 6, 6, generator=g)
        out.append((x.to(dtype), x[:, 0, 1:6, 2].argmax(1)))
    return out


def _train(model, opt, batches, restart_at=None):
    for i, (x, y) in enumerate(batches):
        if restart_at is not None and i == restart_at:
            opt.restart()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return Net().to(dtype)


# --- closed forms -----------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_rmda_without_regularizer_is_its_closed_form(momentum):
    torch.manual_seed(0)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w_init = w.detach().clone()
    opt = ss.RMDA([w], lr=0.3, momentum=momentum, **REF)
    grads = [torch.randn(5, 3, dtype=torch.float64) for _ in range(6)]
    c = 1 - momentum
    expected = w_init.clone()
    v = torch.zeros_like(w_init)
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        v += 0.3 * math.sqrt(t) * g
        expected = (1 - c) * expected + c * (w_init - v / math.sqrt(t))
        assert torch.allclose(w.detach(), expected, rtol=1e-13, atol=1e-14)
    st = opt.state[w]
    assert st["step"] == 6
    assert st["alpha"] == pytest.approx(sum(0.3 * math.sqrt(t) for t in range(1, 7)), rel=1e-14)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ramda_without_regularizer_is_w0_minus_v_over_p_mixed_by_c(momentum):
    torch.manual_seed(1)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w_init = w.detach().clone()
    opt = ss.RAMDA([w], lr=0.2, momentum=momentum, eps=1e-4, **REF)
    v = torch.zeros_like(w_init)
    u = torch.zeros_like(w_init)
    expected = w_init.clone()
    for t in range(1, 6):
        g = torch.randn(4, 6, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        s = 0.2 * math.sqrt(t)
        v += s * g
        u += s * g * g
        expected = momentum * expected + (1 - momentum) * (w_init - v / (u.pow(1 / 3) + 1e-4))
        assert torch.allclose(w.detach(), expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(opt.state[w]["sq_grad_sum"], u)


def test_proxsgd_closed_form_and_first_step_buffer():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.1]], dtype=torch.float64, requires_grad=True)
    opt = ss.ProxSGD([{"params": [w], "regularizer": ss.L1(0.5)}], lr=0.1, momentum=0.9, **REF)
    g = torch.tensor([[1.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    w.grad = g.clone()
    opt.step()
    b = 0.1 * g  # first step: b = c·g
    assert torch.allclose(opt.state[w]["momentum_buffer"], b)
    y = torch.tensor([[1.0, -2.0], [0.5, 0.1]], dtype=torch.float64) - 0.1 * b
    expected = torch.sign(y) * (y.abs() - 0.1 * 0.5).clamp_min(0)
    assert torch.allclose(w.detach(), expected)


def test_proxgen_without_regularizer_is_adamw():
    torch.manual_seed(2)
    w1 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    ours = ss.ProxGen([w1], lr=1e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, **REF)
    adamw = torch.optim.AdamW([w2], lr=1e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(6, 5, dtype=torch.float64)
        w1.grad, w2.grad = g.clone(), g.clone()
        ours.step()
        adamw.step()
    assert torch.allclose(w1, w2, rtol=1e-12, atol=1e-14)


def test_proxssi_without_regularizer_is_hf_adamw():
    torch.manual_seed(3)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    expected = w.detach().clone()
    opt = ss.ProxSSI([w], lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05, **REF)
    m = torch.zeros_like(expected)
    v = torch.zeros_like(expected)
    for t in range(1, 5):
        g = torch.randn(4, 4, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        step = 1e-2 * math.sqrt(1 - 0.99**t) / (1 - 0.9**t)
        expected = expected - step * m / (v.sqrt() + 1e-6)
        expected = expected - 1e-2 * 0.05 * expected
        assert torch.allclose(w.detach(), expected, rtol=1e-12)


def test_proxssi_applies_the_weighted_group_prox():
    torch.manual_seed(4)
    w = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    reg = ss.GroupLasso(0.25)
    opt = ss.ProxSSI([{"params": [w], "regularizer": reg}], lr=0.1, **REF)
    w_before = w.detach().clone()
    g = torch.randn(5, 8, dtype=torch.float64)
    w.grad = g
    opt.step()
    m = 0.1 * g
    v = 0.001 * g * g
    denom = v.sqrt() + 1e-6
    y = w_before - 0.1 * math.sqrt(0.001) / 0.1 * m / denom
    # optimality of argmin ½‖X − y‖²_denom + lr·ψ(X): gradient zero on kept groups
    x = w.detach().clone().requires_grad_(True)
    (0.5 * (denom * (x - y) ** 2).sum() + 0.1 * reg.value(x)).backward()
    kept = (w.detach() != 0).any(0)
    assert kept.any() and (~kept).any()
    assert x.grad[:, kept].abs().max() < 1e-9
    # zero groups satisfy the screening inequality
    thr = 0.1 * 0.25 * math.sqrt(5)
    assert torch.all((denom * y).norm(dim=0)[~kept] <= thr)


# --- regularized training produces structure -----------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_trains_and_finds_group_structure(name):
    model = _model(torch.float64)
    reg = ss.GroupLasso({"rmda": 0.02, "ramda_pg": 2e-3, "ramda_exact": 2e-3}.get(name, 0.05))
    kw = {"momentum": 0.0} if name in ("rmda", "ramda_pg", "ramda_exact") else {}
    opt = OPTIMIZERS[name](ss.group_params(model, reg), **kw)
    data = _data(20, torch.float64)

    def loss():
        with torch.no_grad():
            return sum(nn.functional.cross_entropy(model(x), y).item() for x, y in data)

    loss0 = loss()
    for _ in range(2):
        _train(model, opt, data)
    assert loss() < loss0
    assert ss.group_sparsity(model) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- restarts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rmda", "ramda_pg", "ramda_exact"])
def test_restart_resets_exactly_spec_7(name):
    model = _model(torch.float64)
    opt = OPTIMIZERS[name](ss.group_params(model, ss.GroupLasso(1e-3)))
    _train(model, opt, _data(3, torch.float64))
    lrs = [g["lr"] for g in opt.param_groups]
    opt.restart()
    assert [g["lr"] for g in opt.param_groups] == lrs
    for p in model.parameters():
        st = opt.state[p]
        assert st["step"] == 0 and st["alpha"] == 0.0
        assert torch.equal(st["anchor"], p.detach())
        assert st["anchor"].shape == p.shape  # conv weights keep their 4-D shape (docs/math.md §9)
        assert not st["grad_sum"].any()
        if "sq_grad_sum" in st:
            assert not st["sq_grad_sum"].any()
    # after a restart the trajectory is a fresh optimizer's started at the current point,
    # except that W keeps its own momentum average — which for dual averaging is just W itself
    fresh_model = _model(torch.float64)
    fresh_model.load_state_dict(model.state_dict())
    fresh = OPTIMIZERS[name](ss.group_params(fresh_model, ss.GroupLasso(1e-3)))
    more = _data(3, torch.float64, seed=9)
    _train(model, opt, more)
    _train(fresh_model, fresh, more)
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)


def test_restart_is_a_noop_for_the_baselines():
    model = _model()
    opt = OPTIMIZERS["proxgen_pg"](ss.group_params(model, ss.GroupLasso(1e-3)))
    _train(model, opt, _data(2))
    before = {
        p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
        for p in model.parameters()
    }
    opt.restart()
    for p in model.parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(v, before[p][k]) if torch.is_tensor(v) else v == before[p][k]


def test_tensor_whose_groups_are_all_screened_out():
    model = _model(torch.float64)
    for name in ("rmda", "ramda_pg", "ramda_exact", "proxgen_pg", "proxgen_exact", "proxssi", "proxsgd"):
        m = _model(torch.float64)
        opt = OPTIMIZERS[name](
            ss.group_params(m, ss.GroupLasso(1e3)), **({"momentum": 0.0} if "da" in name else {})
        )
        _train(m, opt, _data(2, torch.float64), restart_at=1)
        assert torch.equal(m.conv.weight, torch.zeros_like(m.conv.weight)), name
        assert torch.equal(m.fc.weight, torch.zeros_like(m.fc.weight)), name
    del model


@pytest.mark.parametrize("named,dims", [("input", (0, 2, 3)), ("output", (1, 2, 3)), ("kernel", (2, 3))])
def test_conv_groupings_by_name_and_by_dims_agree_including_filter_wise(named, dims):
    results = []
    for gr in (named, dims):
        m = _model(torch.float64)
        groups = [
            {"params": [m.conv.weight], "regularizer": ss.GroupLasso(10.0, grouping=gr)},
            {"params": [p for n, p in m.named_parameters() if n != "conv.weight"]},
        ]
        opt = ss.RAMDA(groups, momentum=0.0, **REF)
        _train(m, opt, _data(4, torch.float64), restart_at=2)
        results.append((m.conv.weight.detach().clone(), ss.group_sparsity(opt)))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1] > 0


# --- param groups -----------------------------------------------------------------------------


def test_param_groups_advance_independently():
    torch.manual_seed(5)
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    together = ss.RAMDA(
        [
            {"params": [a], "regularizer": ss.GroupLasso(0.1), "lr": 0.1},
            {"params": [b], "regularizer": ss.L1(0.01), "momentum": 0.5, "solver": "exact", "eps": 1e-3},
        ],
        lr=0.02,
        **REF,
    )
    sep_a = ss.RAMDA([{"params": [a2], "regularizer": ss.GroupLasso(0.1)}], lr=0.1, **REF)
    sep_b = ss.RAMDA(
        [{"params": [b2], "regularizer": ss.L1(0.01)}], lr=0.02, momentum=0.5, solver="exact", eps=1e-3, **REF
    )
    for i in range(5):
        ga, gb = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
        a.grad, a2.grad = ga.clone(), ga.clone()
        b.grad = gb.clone() if i != 2 else None  # b skips a step: its counters must not advance
        b2.grad = gb.clone() if i != 2 else None
        together.step()
        sep_a.step()
        if b2.grad is not None:
            sep_b.step()
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert together.state[a]["step"] == 5 and together.state[b]["step"] == 4  # per-tensor counters


# --- state_dict -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_resume_is_bit_identical(name):
    reg = ss.GroupLasso(5e-3, grouping="input")
    data = _data(8)
    m1 = _model()
    o1 = OPTIMIZERS[name](ss.group_params(m1, reg))
    sched1 = ss.RestartScheduler(o1, milestones=[2], gamma=0.5)
    for i, (x, y) in enumerate(data):
        o1.zero_grad()
        nn.functional.cross_entropy(m1(x), y).backward()
        o1.step()
        sched1.step_iteration()
        if i % 2 == 1:
            sched1.step()
        if i == 4:
            buf = io.BytesIO()
            torch.save({"model": m1.state_dict(), "opt": o1.state_dict(), "sched": sched1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    m2 = _model(seed=123)
    m2.load_state_dict(ckpt["model"])
    o2 = OPTIMIZERS[name](ss.group_params(m2, reg))
    o2.load_state_dict(ckpt["opt"])
    sched2 = ss.RestartScheduler(o2, milestones=[2], gamma=0.5)
    sched2.load_state_dict(ckpt["sched"])
    for i, (x, y) in enumerate(data[5:], start=5):
        o2.zero_grad()
        nn.functional.cross_entropy(m2(x), y).backward()
        o2.step()
        sched2.step_iteration()
        if i % 2 == 1:
            sched2.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
        for k, v in o1.state[p1].items():
            v2 = o2.state[p2][k]
            assert torch.equal(v, v2) if torch.is_tensor(v) else v == v2
    assert [g["lr"] for g in o1.param_groups] == [g["lr"] for g in o2.param_groups]


def test_loaded_state_is_a_copy_not_shared():
    m = _model()
    o = OPTIMIZERS["rmda"](ss.group_params(m, ss.GroupLasso(1e-3)))
    _train(m, o, _data(1))
    m2 = _model()
    m2.load_state_dict(m.state_dict())
    o2 = OPTIMIZERS["rmda"](ss.group_params(m2, ss.GroupLasso(1e-3)))
    o2.load_state_dict(o.state_dict())
    _train(m2, o2, _data(1, seed=4))
    p, p2 = next(m.parameters()), next(m2.parameters())
    assert not torch.equal(o.state[p]["grad_sum"], o2.state[p2]["grad_sum"])


@pytest.mark.parametrize("name", ["rmda", "ramda_pg", "proxsgd", "proxgen_pg", "proxssi"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_fp32_state_through_load(name, dtype):
    m = _model(dtype)
    o = OPTIMIZERS[name](ss.group_params(m, ss.GroupLasso(1e-3)))
    _train(m, o, _data(2, dtype))
    for p in m.parameters():
        assert p.dtype == dtype
        for v in o.state[p].values():
            if torch.is_tensor(v):
                assert v.dtype == torch.float32
    sd = o.state_dict()
    m2 = _model(dtype)
    o2 = OPTIMIZERS[name](ss.group_params(m2, ss.GroupLasso(1e-3)))
    o2.load_state_dict(sd)
    for p, p2 in zip(m.parameters(), m2.parameters()):
        for k, v in o.state[p].items():
            if torch.is_tensor(v):
                assert o2.state[p2][k].dtype == torch.float32
                assert torch.equal(o2.state[p2][k], v)


def test_state_dict_of_another_optimizer_is_rejected():
    m = _model()
    rmda = OPTIMIZERS["rmda"](ss.group_params(m, None))
    _train(m, rmda, _data(1))
    ramda = OPTIMIZERS["ramda_pg"](ss.group_params(m, None))
    with pytest.raises(ValueError, match="state_dict.*rmda"):
        ramda.load_state_dict(rmda.state_dict())
    sd = rmda.state_dict()
    sd["algorithm"] = "ramda"
    with pytest.raises(ValueError, match="state keys"):
        ramda.load_state_dict(sd)
    torch_sgd = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="state_dict"):
        rmda.load_state_dict(torch_sgd.state_dict())


def test_state_dict_with_mismatched_shapes_is_rejected():
    m = _model()
    o = OPTIMIZERS["rmda"]([{"params": [m.fc.weight]}])
    _train(m, o, _data(1))
    other = nn.Linear(3, 2)
    o2 = OPTIMIZERS["rmda"]([{"params": [other.weight]}])
    with pytest.raises(ValueError, match="shape"):
        o2.load_state_dict(o.state_dict())


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: ss.RMDA(p, lr=-0.1), "lr"),
        (lambda p: ss.RMDA(p, momentum=1.0), "momentum"),
        (lambda p: ss.RMDA(p, momentum=-0.1), "momentum"),
        (lambda p: ss.RAMDA(p, eps=0.0), "eps"),
        (lambda p: ss.RAMDA(p, solver="newton"), "solver"),
        (lambda p: ss.RAMDA(p, max_iters=0), "max_iters"),
        (lambda p: ss.RAMDA(p, rtol=float("nan")), "rtol"),
        (lambda p: ss.ProxSGD(p, lr=float("inf")), "lr"),
        (lambda p: ss.ProxGen(p, betas=(0.9, 1.0)), "betas"),
        (lambda p: ss.ProxGen(p, weight_decay=-1.0), "weight_decay"),
        (lambda p: ss.ProxSSI(p, eps=-1e-8), "eps"),
        (lambda p: ss.RMDA(p, backend="gpu"), "backend"),
        (lambda p: ss.RMDA([{"params": p, "lr": -1.0}]), "lr"),
        (lambda p: ss.RMDA(p, regularizer="l1"), "regularizer"),
        (lambda p: ss.RMDA(p, regularizer=ss.GroupLasso(0.1, grouping="kernel")), "kernel"),
        (lambda p: ss.RAMDA(p, solver="exact", regularizer=ss.NuclearNorm(0.1)), "solver"),
        (lambda p: ss.ProxGen(p, solver="newton"), "solver"),
        (lambda p: ss.ProxSSI(p, regularizer=ss.NuclearNorm(0.1)), "NuclearNorm"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_parameter(make, match):
    params = [nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match=match):
        make(params)


def test_unknown_backend_and_unavailable_explicit_backend():
    p = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="backend"):
        ss.RMDA([p], backend="fast")
    o = ss.RMDA([p], backend="cuda")
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="cuda"):
        o.step()


def test_sparse_gradients_are_rejected():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = ss.RMDA(emb.parameters(), **REF)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"sparse gradients.*param_groups\[0\]\['params'\]\[0\]"):
        opt.step()


def test_integer_params_rejected():
    with pytest.raises(ValueError, match="floating"):
        ss.RMDA([torch.zeros(3, dtype=torch.long)])


# --- non-finite gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_skips_the_step(name, bad):
    m = _model()
    o = OPTIMIZERS[name](ss.group_params(m, ss.GroupLasso(1e-3)))
    _train(m, o, _data(2))
    params = [p.detach().clone() for p in m.parameters()]
    state = {
        i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in o.state[p].items()}
        for i, p in enumerate(m.parameters())
    }
    o.zero_grad()
    x, y = _data(1, seed=3)[0]
    nn.functional.cross_entropy(m(x), y).backward()
    m.fc.bias.grad[0] = bad
    with pytest.warns(RuntimeWarning, match="non-finite"):
        o.step()
    assert o.skipped_steps == 1
    for i, p in enumerate(m.parameters()):
        assert torch.equal(p, params[i])
        for k, v in o.state[p].items():
            assert torch.equal(v, state[i][k]) if torch.is_tensor(v) else v == state[i][k]
    assert o.state_dict()["skipped_steps"] == 1


def test_skip_nonfinite_false_turns_the_check_off():
    p = nn.Parameter(torch.ones(3))
    o = ss.RMDA([p], skip_nonfinite=False, **REF)
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o.step()
    assert torch.isnan(p).any()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_grad_scaler_works(name):
    data = _data(3)
    m1, m2 = _model(), _model()
    o1 = OPTIMIZERS[name](ss.group_params(m1, ss.GroupLasso(1e-3)))
    o2 = OPTIMIZERS[name](ss.group_params(m2, ss.GroupLasso(1e-3)))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in data:
        o1.zero_grad()
        nn.functional.cross_entropy(m1(x), y).backward()
        o1.step()
        o2.zero_grad()
        scaler.scale(nn.functional.cross_entropy(m2(x), y)).backward()
        scaler.step(o2)
        scaler.update()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # an overflow makes the scaler skip the step and lower its scale
    before = [p.detach().clone() for p in m2.parameters()]
    o2.zero_grad()
    scaler.scale(nn.functional.cross_entropy(m2(data[0][0]), data[0][1]) * float("inf")).backward()
    scaler.step(o2)
    scaler.update()
    assert scaler.get_scale() < 2.0**10
    assert all(torch.equal(a, b) for a, b in zip(m2.parameters(), before))


# --- torch.optim conventions --------------------------------------------------------------------


def test_closure_and_zero_grad():
    m = _model()
    o = OPTIMIZERS["ramda_pg"](ss.group_params(m, ss.GroupLasso(1e-3)))
    x, y = _data(1)[0]

    def closure():
        o.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        return loss

    loss = o.step(closure)
    assert torch.is_tensor(loss) and loss.item() > 0
    o.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_torch_lr_scheduler_drives_the_step():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, dtype=torch.float64))
    o = ss.RMDA([w], lr=1.0, momentum=0.0, **REF)
    sched = torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
    w0 = w.detach().clone()
    g1, g2 = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    w.grad = g1
    o.step()
    sched.step()
    assert o.param_groups[0]["lr"] == 0.5
    w.grad = g2
    o.step()
    v = 1.0 * g1 + 0.5 * math.sqrt(2) * g2
    assert torch.allclose(w.detach(), w0 - v / math.sqrt(2))


def test_restart_scheduler_milestones_and_ramps():
    m = _model()
    o = ss.RAMDA(ss.group_params(m, ss.GroupLasso(1e-3)), lr=0.1, momentum=0.99, eps=1e-6, **REF)
    s = ss.RestartScheduler(o, milestones=[2, 4], gamma=0.1, ramp="sqrt")
    data = _data(1)
    _train(m, o, data)
    s.step()
    assert o.param_groups[0]["lr"] == pytest.approx(0.1)
    p = m.fc.weight
    assert o.state[p]["step"] == 1
    s.step()  # milestone 2: lr, eps scaled, restart
    assert o.param_groups[0]["lr"] == pytest.approx(0.01)
    assert o.param_groups[0]["eps"] == pytest.approx(1e-7)
    assert o.state[p]["step"] == 0 and torch.equal(o.state[p]["anchor"], p.detach())
    s.step_iteration()  # before the last milestone: no ramp
    assert o.param_groups[0]["momentum"] == pytest.approx(0.99)
    s.step()
    s.step()  # milestone 4 (last): ramp starts
    for i in range(1, 5):
        s.step_iteration()
        assert 1 - o.param_groups[0]["momentum"] == pytest.approx(min(0.01 * math.sqrt(i), 1))
    for _ in range(20000):
        s.step_iteration()
    assert o.param_groups[0]["momentum"] == 0.0


def test_restart_scheduler_geometric_ramp_and_baselines():
    m = _model()
    o = ss.RMDA(ss.group_params(m, None), lr=0.1, momentum=0.9, **REF)
    s = ss.RestartScheduler(o, milestones=[1, 2, 3], gamma=0.1, ramp="geometric")
    s.step()
    assert 1 - o.param_groups[0]["momentum"] == pytest.approx(1.0)
    o2 = ss.ProxGen(ss.group_params(m, None), lr=0.1, **REF)
    s2 = ss.RestartScheduler(o2, milestones=[1], gamma=0.5)
    s2.step()
    assert o2.param_groups[0]["lr"] == pytest.approx(0.05)
    assert o2.param_groups[0]["eps"] == 1e-8  # only RAMDA scales eps
    with pytest.raises(ValueError, match="milestones"):
        ss.RestartScheduler(o, milestones=[3, 2])
    with pytest.raises(ValueError, match="ramp"):
        ss.RestartScheduler(o, milestones=[1], ramp="linear")
    with pytest.raises(ValueError, match="gamma"):
        ss.RestartScheduler(o, milestones=[1], gamma=0.0)


# --- group_params and metrics -------------------------------------------------------------------


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lstm = nn.LSTM(4, 3)
        self.conv1 = nn.Conv1d(3, 5, 3)
        self.conv = nn.Conv2d(2, 3, 3)
        self.ln = nn.LayerNorm(5)
        self.fc = nn.Linear(5, 2)


def test_group_params_regularizes_weights_only():
    m = Mixed()
    groups = ss.group_params(m, ss.GroupLasso(0.1))
    reg_ids = {id(p) for p in groups[0]["params"]}
    expected = {
        id(m.lstm.weight_ih_l0),
        id(m.lstm.weight_hh_l0),
        id(m.conv1.weight),
        id(m.conv.weight),
        id(m.fc.weight),
    }
    assert reg_ids == expected
    assert groups[1]["regularizer"] is None
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.parameters()} - expected
    kernel = ss.group_params(m, ss.GroupLasso(0.1, grouping="kernel"))
    assert {id(p) for p in kernel[0]["params"]} == {id(m.conv1.weight), id(m.conv.weight)}
    with pytest.raises(ValueError, match="fits no"):
        ss.group_params(nn.Sequential(nn.Linear(3, 2)), ss.GroupLasso(0.1, grouping="kernel"))
    assert len(ss.group_params(m, None)) == 1
    ss.RAMDA(groups, **REF)  # every grouping fits


def test_metrics():
    lin = nn.Linear(4, 3, bias=False)
    conv = nn.Conv2d(2, 2, 3, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.weight[:, 1] = 0  # input group 1 of 4
        conv.weight.fill_(1.0)
        conv.weight[:, 0] = 0  # input channel 0 of 2
        conv.weight[1, 1] = 0  # kernel (1, 1)
    model = nn.Sequential(conv, nn.Flatten(), lin)
    assert ss.group_sparsity(model) == pytest.approx(2 / 6)
    assert ss.group_sparsity(model, weighted=True) == pytest.approx((3 + 18) / (12 + 36))
    assert ss.group_sparsity(model, grouping="output") == pytest.approx(1 / 5)  # conv filter 1
    assert ss.kernel_sparsity(model) == pytest.approx(3 / 4)
    assert ss.unstructured_sparsity(model) == pytest.approx((3 + 27) / 48)
    assert ss.unstructured_sparsity([lin.weight]) == pytest.approx(0.25)
    opt = ss.RMDA(ss.group_params(model, ss.GroupLasso(0.1, grouping="output")), **REF)
    assert ss.group_sparsity(opt) == pytest.approx(1 / 5)
    low = torch.outer(torch.arange(1.0, 4.0), torch.ones(5))
    assert ss.low_rank_level([low]) == pytest.approx(2 / 3)
    tracker = ss.StructureTracker(model)
    assert tracker.update() and tracker.last_change == 0
    assert not tracker.update()
    with torch.no_grad():
        lin.weight[:, 2] = 0
    assert tracker.update() and tracker.last_change == 3


def test_empty_and_mixed_dtype_parameters():
    empty = nn.Parameter(torch.zeros(0, 3))
    half = nn.Parameter(torch.ones(2, 3, dtype=torch.bfloat16))
    full = nn.Parameter(torch.ones(4, 3, dtype=torch.float64))
    opt = ss.RAMDA([{"params": [empty, half, full], "regularizer": ss.GroupLasso(0.1)}], **REF)
    for p in (empty, half, full):
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[empty]["step"] == 1 and empty.shape == (0, 3)
    assert torch.isfinite(half.float()).all() and torch.isfinite(full).all()


@pytest.mark.parametrize("cls", [ss.RAMDA, ss.ProxGen])
@pytest.mark.parametrize(
    "reg,resolved",
    [
        (ss.GroupLasso(0.05), "exact"),
        (ss.SparseGroupLasso(0.01, 0.05), "exact"),
        (ss.GroupMCP(0.05, 2.0), "exact"),
        (ss.MCP(0.05, 2.0), "exact"),
        (ss.NuclearNorm(0.05), "pg"),
        (None, "exact"),
    ],
)
def test_auto_solver_is_exact_where_the_regularizer_has_one(cls, reg, resolved):
    """solver="auto" (the default) steps exactly as the solver it resolves to, and stays "auto" in
    the param group (and so in state_dicts)."""
    torch.manual_seed(0)
    w0 = torch.randn(6, 5, dtype=torch.float64)
    grads = [torch.randn(6, 5, dtype=torch.float64) for _ in range(3)]
    out = {}
    for solver in ("auto", resolved):
        w = nn.Parameter(w0.clone())
        kw = {} if solver == "auto" else {"solver": solver}
        opt = cls([w], lr=0.05, regularizer=reg, **kw, **REF)
        assert opt.param_groups[0]["solver"] == solver
        for g in grads:
            w.grad = g.clone()
            opt.step()
        out[solver] = w.detach().clone()
    assert torch.equal(out["auto"], out[resolved])
