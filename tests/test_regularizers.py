"""Regularizers: value and prox checked against their definitions, not against the code."""

from __future__ import annotations

import math

import pytest
import torch

import structsparse as ss
from structsparse.grouping import group_view


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# (name, shape) of the layer weights of docs/math.md §1's table
SHAPES = {
    "linear": (7, 5),
    "conv1d": (4, 3, 5),
    "conv2d": (6, 4, 3, 3),
    "lstm": (4 * 3, 5),
}
GROUPINGS = ["input", "output", "kernel", "element", (0,), (0, 2, 3), (1, 2, 3), (2, 3)]


def _cases():
    for lname, shape in SHAPES.items():
        for gr in GROUPINGS:
            try:
                group_view(gr, shape)
            except ValueError:
                continue
            yield lname, shape, gr


CASES = list(_cases())


def test_group_views_match_spec_table():
    assert group_view("input", (7, 5)) == (7, 5, 1)
    assert group_view("input", (6, 4, 3, 3)) == (6, 4, 9)
    assert group_view("input", (4, 3, 5)) == (4, 3, 5)
    assert group_view("output", (7, 5)) == (1, 7, 5)
    assert group_view("output", (6, 4, 3, 3)) == (1, 6, 36)
    assert group_view("kernel", (6, 4, 3, 3)) == (1, 24, 9)
    assert group_view("element", (6, 4, 3, 3)) == (1, 216, 1)
    # the public code's dims
    assert group_view((0,), (7, 5)) == (7, 5, 1)
    assert group_view((0, 2, 3), (6, 4, 3, 3)) == (6, 4, 9)
    assert group_view((1, 2, 3), (6, 4, 3, 3)) == (1, 6, 36)
    assert group_view((2, 3), (6, 4, 3, 3)) == (1, 24, 9)


@pytest.mark.parametrize("bad", [("kernel", (7, 5)), ("input", (5,)), ((0, 2), (6, 4, 3, 3)), ((4,), (7, 5))])
def test_grouping_that_does_not_fit_raises(bad):
    gr, shape = bad
    with pytest.raises(ValueError, match="grouping|dims"):
        ss.GroupLasso(0.1, grouping=gr).check(torch.zeros(shape))


def test_unknown_grouping_raises():
    with pytest.raises(ValueError, match="grouping"):
        ss.GroupLasso(0.1, grouping="rows")


def _groups(w, gr):
    return w.reshape(group_view(gr, w.shape))


def test_group_lasso_value_is_the_definition():
    w = torch.randn(6, 4, 3, 3)
    reg = ss.GroupLasso(0.3, grouping="input")
    expected = sum(0.3 * math.sqrt(6 * 9) * w[:, j].norm() for j in range(4))
    assert torch.allclose(reg.value(w), expected)
    assert torch.allclose(ss.L1(0.2).value(w), 0.2 * w.abs().sum())


def _objective(reg, x, z, tau):
    return 0.5 * (x - z).pow(2).sum() + tau * reg.value(x)


@pytest.mark.parametrize("lname,shape,gr", CASES)
@pytest.mark.parametrize("kind", ["group_lasso", "l1", "sgl"])
def test_convex_prox_is_the_minimizer(lname, shape, gr, kind):
    torch.manual_seed(hash((lname, str(gr), kind)) % 1000)
    z = torch.randn(shape)
    tau = 0.7
    reg = {
        "group_lasso": ss.GroupLasso(0.15, grouping=gr),
        "l1": ss.L1(0.4),
        "sgl": ss.SparseGroupLasso(0.2, 0.1, grouping=gr),
    }[kind]
    x = reg.prox(z, tau)
    vs = group_view(reg.grouping, shape)
    x3, z3 = x.reshape(vs), z.reshape(vs)
    norms = x3.pow(2).sum((0, 2)).sqrt()
    kept = norms > 0
    if kind in ("group_lasso", "l1"):
        # kept groups: gradient of ½‖x − z‖² + τψ(x) vanishes
        xg = x.clone().requires_grad_(True)
        _objective(reg, xg, z, tau).backward()
        grad3 = xg.grad.reshape(vs)
        assert grad3[:, kept].abs().max() < 1e-10 if kept.any() else True
        # zero groups: subgradient condition ‖z_g‖ ≤ τλw_g
        thr = tau * reg.lam * math.sqrt(vs[0] * vs[2])
        znorm = z3.pow(2).sum((0, 2)).sqrt()
        assert torch.all(znorm[~kept] <= thr + 1e-12)
        assert torch.all(znorm[kept] > thr)
    # global optimality (convex): no random or coordinate perturbation does better
    f0 = _objective(reg, x, z, tau)
    for scale in (1e-1, 1e-3, 1e-6):
        for _ in range(20):
            d = torch.randn(shape) * scale
            assert _objective(reg, x + d, z, tau) >= f0 - 1e-12
    assert _objective(reg, torch.zeros(shape), z, tau) >= f0 - 1e-12
    assert _objective(reg, z, z, tau) >= f0 - 1e-12


def _mcp_scalar(r, lam, omega):
    return torch.where(
        r <= omega * lam, lam * r - r * r / (2 * omega), torch.full_like(r, omega * lam * lam / 2)
    )


@pytest.mark.parametrize("gr", ["input", "output", "element"])
@pytest.mark.parametrize("tau", [0.05, 0.5, 3.0])  # firm (ω_g > τ) and hard (ω_g ≤ τ) regimes
def test_group_mcp_prox_is_the_global_minimizer_along_each_group(gr, tau):
    torch.manual_seed(3)
    shape = (4, 6, 3, 3) if gr != "element" else (5, 7)
    z = torch.randn(shape) * 2
    lam, omega = 0.3, 0.5
    reg = ss.GroupMCP(lam, omega, grouping=gr) if gr != "element" else ss.MCP(lam, omega)
    vs = group_view(reg.grouping, shape)
    w = math.sqrt(vs[0] * vs[2])
    x3 = reg.prox(z, tau).reshape(vs)
    z3 = z.reshape(vs)
    rho = z3.pow(2).sum((0, 2)).sqrt()
    r_out = x3.pow(2).sum((0, 2)).sqrt()
    # the minimizer lies on the ray of z_g: minimize over the radius by a fine grid
    grid = torch.linspace(0, float(rho.max()) * 1.2, 200001)
    for j in range(vs[1]):
        f = 0.5 * (grid - rho[j]) ** 2 + tau * _mcp_scalar(grid, lam * w, omega * w)
        f_out = 0.5 * (r_out[j] - rho[j]) ** 2 + tau * _mcp_scalar(r_out[j], lam * w, omega * w)
        assert f_out <= f.min() + 1e-8
    # direction preserved
    kept = r_out > 0
    cos = (x3 * z3).sum((0, 2))[kept] / (r_out[kept] * rho[kept])
    assert torch.allclose(cos, torch.ones_like(cos))
    # value is the definition
    assert torch.allclose(reg.value(z), _mcp_scalar(rho, lam * w, omega * w).sum())


def test_mcp_firm_threshold_formula():
    reg = ss.MCP(1.0, 2.0)
    z = torch.tensor([0.05, -0.1, 0.5, -1.5, 2.5, -3.0])
    tau = 0.1  # τ < ω: firm threshold of docs/math.md §2
    x = reg.prox(z, tau)
    expected = torch.where(
        z.abs() <= tau * 1.0,
        torch.zeros_like(z),
        torch.where(z.abs() <= 2.0 * 1.0, torch.sign(z) * (z.abs() - tau) / (1 - tau / 2.0), z),
    )
    assert torch.allclose(x, expected)


def test_nuclear_norm_prox_soft_thresholds_singular_values():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    reg = ss.NuclearNorm(0.5)
    m = w.reshape(6, -1)
    s = torch.linalg.svdvals(m)
    assert torch.allclose(reg.value(w), 0.5 * s.sum())
    tau = 2.0
    x = reg.prox(w, tau)
    sx = torch.linalg.svdvals(x.reshape(6, -1))
    assert torch.allclose(sx, (s - tau * 0.5).clamp_min(0), atol=1e-10)
    f0 = _objective(reg, x, w, tau)
    for _ in range(30):
        assert _objective(reg, x + 1e-3 * torch.randn_like(x), w, tau) >= f0 - 1e-12
    assert ss.low_rank_level([x]) == pytest.approx(float((sx <= 1e-9).sum()) / 6)


def test_zero_input_and_zero_threshold_are_safe():
    z = torch.zeros(4, 3)
    for reg in (ss.GroupLasso(0.1), ss.L1(0.1), ss.SparseGroupLasso(0.1, 0.1), ss.GroupMCP(0.1, 1.0)):
        assert torch.equal(reg.prox(z, 1.0), z)
        assert torch.isfinite(reg.prox(torch.randn(4, 3), 0.0)).all()
    y = torch.randn(4, 3)
    assert torch.equal(ss.GroupLasso(0.0).prox(y, 1.0), y)


@pytest.mark.parametrize(
    "reg",
    [
        ss.GroupLasso(0.1, grouping=(0, 2, 3)),
        ss.L1(0.2),
        ss.SparseGroupLasso(0.1, 0.2, grouping="output"),
        ss.GroupMCP(0.1, 2.0),
        ss.MCP(0.3, 1.5),
        ss.NuclearNorm(0.4),
    ],
)
def test_serialization_round_trip(reg):
    from structsparse.regularizers import regularizer_from_dict

    d = reg.to_dict()
    assert all(isinstance(v, (str, float, int, list)) for v in d.values())
    assert regularizer_from_dict(d) == reg


@pytest.mark.parametrize(
    "make",
    [
        lambda: ss.GroupLasso(-1.0),
        lambda: ss.L1(float("nan")),
        lambda: ss.GroupMCP(0.1, 0.0),
        lambda: ss.SparseGroupLasso(0.1, -0.1),
    ],
)
def test_bad_regularizer_hyperparameters(make):
    with pytest.raises(ValueError, match="lam|omega"):
        make()
