"""DessiLBI (docs/math.md §6): the reference step against a hand-derived step, the inverse scale space
property, weight decay outside the buffer, masks, tickets, state_dict resume and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import structsparse as ss
from structsparse import lbi
from structsparse.backends import reference

pytestmark = pytest.mark.filterwarnings("ignore:structsparse. no fused backend:RuntimeWarning")


# -- an independent hand-derived step (plain loops over groups, no Regularizer.prox) ---------------


def soft(x: float, t: float) -> float:
    return math.copysign(max(abs(x) - t, 0.0), x)


def hand_step(w, g, d, z, gam, *, lr, kappa, nu, mu, wd, lam, groups, ms=False, floor=0.0):
    """docs/math.md §6 written out per element. ``groups``: list of lists of flat indices (the groups of Ω);
    group threshold λ·sqrt(|g|) (L1: groups of one element, threshold λ)."""
    w, g, d, z, gam = (t.double().flatten().tolist() for t in (w, g, d, z, gam))
    n = len(w)
    d_new = [mu * d[i] + g[i] for i in range(n)]
    w_new = [
        w[i] - lr * kappa * d_new[i] - lr * kappa * wd * w[i] - lr * kappa / nu * (w[i] - gam[i])
        for i in range(n)
    ]
    beta = [1.0] * n
    eps = [1.0] * n
    if ms:
        nnz_w = sum(1 for x in w if x != 0)
        ratio = sum(1 for x in gam if x != 0) / nnz_w if nnz_w else 0.0
        for grp in groups:
            nrm = math.sqrt(sum(w[i] ** 2 for i in grp))
            b = max(floor, min(1.0, 1.0 / nrm if nrm > 0 else math.inf) * (1 - ratio))
            for i in grp:
                beta[i], eps[i] = b, nrm
    z_new = [z[i] + lr / nu * beta[i] * (w[i] - gam[i]) for i in range(n)]
    gam_new = [0.0] * n
    for grp in groups:
        thr = lam * math.sqrt(len(grp))
        nrm = math.sqrt(sum(z_new[i] ** 2 for i in grp))
        scale = max(0.0, 1 - thr / nrm) if nrm > 0 else 0.0
        for i in grp:
            gam_new[i] = kappa * eps[i] * scale * z_new[i]
    return [torch.tensor(v, dtype=torch.float64) for v in (w_new, d_new, z_new, gam_new)]


def filter_groups(shape):
    per = math.prod(shape[1:])
    return [list(range(o * per, (o + 1) * per)) for o in range(shape[0])]


def input_groups(shape):
    o, i, k = shape[0], shape[1], math.prod(shape[2:])
    return [[(a * i + j) * k + b for a in range(o) for b in range(k)] for j in range(i)]


# (name, shape, regularizer for λ, groups, λ without / with magnitude scaling: chosen so that Γ is
# partially selected during the steps)
CASES = [
    ("l1", (5, 4), ss.L1, lambda s: [[i] for i in range(math.prod(s))], (0.5, 0.5)),
    ("filters", (4, 3, 2, 2), lambda lam: ss.GroupLasso(lam, "output"), filter_groups, (0.5, 0.5)),
    ("channels", (4, 3, 2, 2), lambda lam: ss.GroupLasso(lam, "input"), input_groups, (1.0, 0.3)),
]


@pytest.mark.parametrize("ms", [False, True])
@pytest.mark.parametrize("name,shape,make_reg,groups,lams", CASES, ids=[c[0] for c in CASES])
def test_reference_matches_hand_derived_steps(name, shape, make_reg, groups, lams, ms):
    torch.manual_seed(0)
    lam = lams[ms]
    reg = make_reg(lam)
    hp = dict(lr=0.3, kappa=2.0, nu=0.5, mu=0.9, wd=0.1)
    w = torch.randn(shape, dtype=torch.float64)
    d, z, gam = (torch.zeros_like(w) for _ in range(3))
    p = w.clone()
    pd, pz, pg = d.clone(), z.clone(), gam.clone()
    grps = groups(shape)
    nonzero_seen = False
    for _ in range(6):  # several steps so that Γ becomes nonzero and enters the W/Z updates
        g = torch.randn(shape, dtype=torch.float64)
        w, d, z, gam = hand_step(w, g, d, z, gam, lam=lam, groups=grps, ms=ms, floor=0.01, **hp)
        reference.dessilbi_step(
            [p], [g], [pd], [pz], [pg],
            lr=hp["lr"], kappa=hp["kappa"], nu=hp["nu"], momentum=hp["mu"], weight_decay=hp["wd"],
            reg=reg, magnitude_scaling=ms, scaling_floor=0.01,
        )  # fmt: skip
        for got, want in ((p, w), (pd, d), (pz, z), (pg, gam)):
            torch.testing.assert_close(got.flatten(), want, rtol=1e-12, atol=1e-12)
        w, d, z, gam = (t.view(shape) for t in (w, d, z, gam))
        nonzero_seen |= bool((pg != 0).any()) and bool((pg == 0).any())
    assert nonzero_seen, "test did not exercise a partially selected Γ"


def test_unregularized_is_kappa_scaled_heavy_ball():
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(7, dtype=torch.float64))
    q = nn.Parameter(p.detach().clone())
    opt = ss.DessiLBI([p], lr=0.05, kappa=3.0, momentum=0.8, backend="reference")
    sgd = torch.optim.SGD([q], lr=0.15, momentum=0.8)
    for _ in range(5):
        g = torch.randn(7, dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
    torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)
    assert set(opt.state[p]) == {"momentum_buffer", "step"}
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], sgd.state[q]["momentum_buffer"])


def test_weight_decay_not_in_momentum_buffer():
    torch.manual_seed(2)
    for reg in (None, ss.L1(0.1)):
        p = nn.Parameter(torch.randn(6, 5))
        opt = ss.DessiLBI([{"params": [p], "regularizer": reg}], lr=0.1, nu=2.0, weight_decay=0.5)
        grads = [torch.randn(6, 5) for _ in range(3)]
        for g in grads:
            p.grad = g.clone()
            opt.step()
        want = torch.zeros(6, 5)
        for g in grads:
            want = 0.9 * want + g
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], want)
    # and the decay does act on W (differs from wd=0)
    p0 = nn.Parameter(torch.ones(3))
    p1 = nn.Parameter(torch.ones(3))
    o0 = ss.DessiLBI([p0], lr=0.1, weight_decay=0.0)
    o1 = ss.DessiLBI([p1], lr=0.1, weight_decay=0.5)
    p0.grad = torch.zeros(3)
    p1.grad = torch.zeros(3)
    o0.step()
    o1.step()
    torch.testing.assert_close(p0.detach(), torch.ones(3))
    torch.testing.assert_close(p1.detach(), torch.full((3,), 1 - 0.1 * 0.5))


def _quadratic_run(lam, steps):
    """Least squares with a sparse truth; record the support size of Γ after each step."""
    torch.manual_seed(3)
    x = torch.randn(200, 20, dtype=torch.float64)
    truth = torch.zeros(20, dtype=torch.float64)
    truth[:4] = torch.tensor([3.0, -2.0, 1.5, 1.0])
    y = x @ truth
    w = nn.Parameter(torch.zeros(1, 20, dtype=torch.float64))
    opt = ss.DessiLBI([w], lr=0.1, kappa=1.0, nu=1.0, momentum=0.0, regularizer=ss.L1(lam))
    sizes, first = [], {}
    for k in range(steps):
        opt.zero_grad()
        ((x @ w.view(-1) - y) ** 2).mean().mul(0.5).backward()
        opt.step()
        gam = opt.state[w]["gamma"].view(-1)
        sizes.append(int((gam != 0).sum()))
        for i in torch.nonzero(gam).view(-1).tolist():
            first.setdefault(i, k)
    return sizes, first, opt.state[w]


def test_inverse_scale_space_support_grows_from_empty():
    sizes, first, st = _quadratic_run(lam=1.0, steps=400)
    assert sizes[0] == 0  # starts empty: Z has not reached the threshold
    assert max(sizes[:5]) == 0
    # the support grows (never by more than a few at a time early) and reaches the true support
    assert sizes[-1] >= 4
    assert all(b >= a - 1 for a, b in zip(sizes, sizes[1:]))  # essentially monotone
    # large true coefficients are selected first, all true ones before any false one
    order = sorted(first, key=first.get)
    assert order[0] == 0  # the largest coefficient enters first
    assert set(order[:4]) == {0, 1, 2, 3}
    # Γ is nonzero exactly where |Z| crossed the threshold λ
    z, gam = st["z"].view(-1), st["gamma"].view(-1)
    assert torch.equal(gam != 0, z.abs() > 1.0)


def test_large_threshold_selects_nothing():
    sizes, first, st = _quadratic_run(lam=1e6, steps=100)
    assert max(sizes) == 0 and not first
    assert float(st["z"].abs().max()) > 0  # Z still moved


# -- masks and their application --------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _opt_with_gamma(model):
    opt = ss.DessiLBI(lbi.dessilbi_groups(model, 0.1), lr=0.1)
    for n, p in model.named_parameters():
        opt.state[p]["step"] = 1
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        if n.endswith("weight"):
            opt.state[p]["z"] = torch.zeros_like(p)
            opt.state[p]["gamma"] = torch.zeros_like(p)
    st = opt.state
    gc = st[model.conv.weight]["gamma"]
    gc[1, 0, 0, 0] = 0.5  # filter 1 selected by one element
    gc[3] = 1.0  # filter 3 fully selected
    gf = st[model.fc.weight]["gamma"]
    gf[0, :5] = 2.0
    return opt


def test_masks_levels_and_apply():
    torch.manual_seed(4)
    model = Tiny()
    opt = _opt_with_gamma(model)
    mw = lbi.masks(model, opt, "weight")
    assert set(mw) == {"conv.weight", "fc.weight"}  # biases are never masked
    assert int(mw["conv.weight"].sum()) == 1 + 9 and int(mw["fc.weight"].sum()) == 5
    mf = lbi.masks(model, opt, "filter")
    assert mf["conv.weight"].flatten(1).all(dim=1).tolist() == [False, True, False, True]
    assert mf["fc.weight"].all(dim=1).tolist() == [True, False, False]
    mg = lbi.masks(model, opt, "group")  # conv: output filters (GroupLasso "output"), fc: L1 elements
    assert torch.equal(mg["conv.weight"], mf["conv.weight"]) and torch.equal(mg["fc.weight"], mw["fc.weight"])
    ml = lbi.masks(model, opt, "layer")
    assert ml["conv.weight"].all() and ml["fc.weight"].all()
    opt.state[model.fc.weight]["gamma"].zero_()
    assert not lbi.masks(model, opt, "layer")["fc.weight"].any()
    ratios = lbi.support_ratio(model, opt, "filter")
    assert ratios == {"conv.weight": 0.5, "fc.weight": 0.0}
    assert lbi.gamma_sparsity(model, opt) == pytest.approx(1 - 10 / (36 + 192))
    # applying: W ⊙ mask
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lbi.apply_masks(model, mf)
    assert torch.equal(model.conv.weight, before["conv.weight"] * mf["conv.weight"])
    assert torch.equal(model.conv.bias, before["conv.bias"])
    assert lbi.mask_density(mf) == pytest.approx((18 + 64) / (36 + 192))
    with pytest.raises(ValueError, match="level"):
        lbi.masks(model, opt, "rows")
    with pytest.raises(ValueError, match="shape"):
        lbi.apply_masks(model, {"fc.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_masked_context_equals_deep_copy_and_restores_bit_exactly():
    """``lbi.masked`` evaluates ``W ⊙ mask`` in place: the same logits and accuracy as a deep copy
    with :func:`apply_masks` (what the CLI did before), every parameter bit-identical afterwards
    (also when the block raises), and the CLI's DessiLBI metrics give the deep-copy figures."""
    from structsparse.cli.optimizers import _dessilbi_metrics

    torch.manual_seed(8)
    train, test = _blobs()
    model = Tiny()
    run = lbi.train_dessilbi(model, train, epochs=2, lam=0.02, lr=0.1, nu=5.0)
    opt = run["optimizer"]
    m = lbi.masks(model, opt, "weight")
    assert 0 < lbi.mask_density(m) < 1  # a partial support: masking changes the network
    x, y = test[0]
    sparse = copy.deepcopy(model)
    lbi.apply_masks(sparse, m)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        dense_out = model(x)
        want = sparse(x)
    assert not torch.equal(want, dense_out)
    with lbi.masked(model, m) as mm:
        assert mm is model
        for n, p in model.named_parameters():  # W ⊙ mask in place; others untouched
            assert torch.equal(p, before[n] * m[n] if n in m else before[n])
        with torch.no_grad():
            got = model(x)
        acc = lbi.evaluate(model, test)
    assert torch.equal(got, want)
    assert acc == lbi.evaluate(sparse, test)
    for n, p in model.named_parameters():  # bit for bit (int view: also signs of zeros, NaNs)
        assert torch.equal(p.detach().view(torch.int32), before[n].view(torch.int32)), n
    with pytest.raises(RuntimeError, match="inside"):
        with lbi.masked(model, m):
            raise RuntimeError("inside")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    metrics = _dessilbi_metrics(opt, model, lambda net: lbi.evaluate(net, test))
    assert metrics == {"gamma_sparsity": lbi.gamma_sparsity(model, opt), "sparse_val_acc": acc}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="no parameter"):
        with lbi.masked(model, {"nope.weight": m["fc.weight"]}):
            pass


def test_random_masks_keep_counts_per_layer():
    torch.manual_seed(5)
    model = Tiny()
    opt = _opt_with_gamma(model)
    for level in ("weight", "filter"):
        m = lbi.masks(model, opt, level)
        r0 = lbi.random_masks(m, level, seed=0)
        r1 = lbi.random_masks(m, level, seed=1)
        for n in m:
            assert int(r0[n].sum()) == int(m[n].sum())
        assert any(not torch.equal(r0[n], r1[n]) for n in m)
    rf = lbi.random_masks(lbi.masks(model, opt, "filter"), "filter", seed=3)
    per_filter = rf["conv.weight"].flatten(1)
    assert bool((per_filter.all(dim=1) | ~per_filter.any(dim=1)).all())  # whole filters


def test_support_tracker_entry_epochs():
    model = Tiny()
    opt = _opt_with_gamma(model)
    tr = lbi.SupportTracker(model, opt, "filter")
    tr.update(1)
    opt.state[model.conv.weight]["gamma"][0, 0, 1, 1] = -1.0
    tr.update(2)
    e = tr.entry_epochs["conv.weight"]
    assert e[:2].tolist() == [2.0, 1.0] and math.isnan(e[2]) and e[3] == 1.0
    assert tr.entered_by(1)["conv.weight"] == 0.5 and tr.entered_by(2)["conv.weight"] == 0.75


# -- ticket extraction on a small model -------------------------------------------------------------


def _blobs(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.randn(3, 1, 4, 4, generator=g) * 2
    x = centers[y] + 0.5 * torch.randn(n, 1, 4, 4, generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=40, shuffle=True, generator=g), [(x, y)]


def test_winning_ticket_on_small_model():
    torch.manual_seed(6)
    train, test = _blobs()
    model = Tiny()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    res = lbi.winning_tickets(
        model, train, test, ticket_epochs=[2, 4], lbi_epochs=5, retrain_epochs=3, level="weight",
        random_seeds=[0, 1], lam=0.02, lr=0.1, nu=5.0,
    )  # fmt: skip
    # the model passed in is not modified (tickets rewind to its initialization)
    assert all(torch.equal(v, init[k]) for k, v in model.state_dict().items())
    hist = res["lbi"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    dens = [h["density"] for h in hist]
    assert dens[0] < dens[-1] <= 1.0 and dens[0] < 1.0  # support grows along the path
    assert all(0 <= h["gamma_sparsity"] <= 1 for h in hist)
    t2, t4 = res["tickets"]
    assert t2["epoch"] == 2 and t2["density"] == pytest.approx(dens[1])
    assert t2["density"] <= t4["density"] and t2["sparsity"] == pytest.approx(1 - t2["density"])
    assert len(t2["random_accuracy"]) == 2
    assert 0.9 <= t4["accuracy"] <= 1.0  # an easy problem: the ticket still learns it
    assert res["dense_accuracy"] >= 0.9


def test_train_masked_keeps_masked_weights_zero():
    torch.manual_seed(7)
    train, test = _blobs()
    model = Tiny()
    opt = _opt_with_gamma(model)
    m = lbi.masks(model, opt, "weight")
    out = lbi.train_masked(model, m, train, test, epochs=2, lr=0.1)
    for n, p in model.named_parameters():
        if n in m:
            assert bool((p[~m[n]] == 0).all())
            assert bool((p[m[n]] != 0).all())
    assert out["density"] == pytest.approx(lbi.mask_density(m)) and len(out["history"]) == 2


def test_winning_tickets_rewind_to_epoch_and_errors():
    train, test = _blobs()
    res = lbi.winning_tickets(
        Tiny(), train, test, ticket_epochs=[2], retrain_epochs=1, rewind_to=1, random_seeds=[],
        dense_baseline=False, lam=0.02, nu=5.0,
    )  # fmt: skip
    assert res["dense_accuracy"] is None and math.isnan(res["tickets"][0]["random_mean"])
    with pytest.raises(ValueError, match="rewind_to"):
        lbi.winning_tickets(Tiny(), train, test, ticket_epochs=[2], rewind_to=3)
    with pytest.raises(ValueError, match="ticket_epochs"):
        lbi.winning_tickets(Tiny(), train, test, ticket_epochs=[0])


# -- state_dict, dtypes, backends, errors ------------------------------------------------------------


def _train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 1, 4, 4, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("ms", [False, True])
def test_state_dict_resume_bit_exact(ms):
    torch.manual_seed(8)
    a = Tiny()
    oa = ss.DessiLBI(lbi.dessilbi_groups(a, 0.01), lr=0.1, nu=2.0, weight_decay=1e-3, magnitude_scaling=ms)
    _train(a, oa, 5, 0)
    b = copy.deepcopy(a)
    ob = ss.DessiLBI(lbi.dessilbi_groups(b, 0.5), lr=0.3, nu=7.0, magnitude_scaling=not ms)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))
    assert ob.param_groups[0]["regularizer"] == ss.GroupLasso(0.01, "output")
    _train(a, oa, 5, 1)
    _train(b, ob, 5, 1)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        sa, sb = oa.state[p], ob.state[q]
        assert set(sa) == set(sb)
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    assert set(oa.state[a.conv.weight]) == {"momentum_buffer", "z", "gamma", "step"}
    assert set(oa.state[a.conv.bias]) == {"momentum_buffer", "step"}
    assert (oa.state[a.fc.weight]["gamma"] != 0).any()


def test_state_dict_key_mismatch_is_rejected():
    a = Tiny()
    oa = ss.DessiLBI(lbi.dessilbi_groups(a, 0.01), lr=0.1)
    _train(a, oa, 1, 0)
    sd = oa.state_dict()
    ob = ss.DessiLBI(a.parameters(), lr=0.1)  # one unregularized group with 4 params
    sd2 = copy.deepcopy(sd)
    sd2["param_groups"] = [{**sd["param_groups"][0], "params": [0, 1, 2, 3]}]
    with pytest.raises(ValueError, match="state keys"):
        ob.load_state_dict({**sd2, "param_groups": [{**sd2["param_groups"][0], "regularizer": None}]})
    with pytest.raises(ValueError, match="saved by optimizer"):
        ss.RMDA(a.parameters()).load_state_dict(sd)


def test_bf16_param_keeps_fp32_state():
    p = nn.Parameter(torch.randn(4, 3).to(torch.bfloat16))
    opt = ss.DessiLBI([p], lr=0.1, nu=1.0, regularizer=ss.L1(0.01))
    p.grad = torch.randn(4, 3).to(torch.bfloat16)
    opt.step()
    assert all(opt.state[p][k].dtype == torch.float32 for k in ("momentum_buffer", "z", "gamma"))
    opt.load_state_dict(opt.state_dict())
    assert all(opt.state[p][k].dtype == torch.float32 for k in ("momentum_buffer", "z", "gamma"))


def test_auto_and_reference_backends_agree():
    torch.manual_seed(9)
    a = Tiny()
    b = copy.deepcopy(a)
    oa = ss.DessiLBI(lbi.dessilbi_groups(a, 0.01), lr=0.1, nu=2.0, backend="auto")
    ob = ss.DessiLBI(lbi.dessilbi_groups(b, 0.01), lr=0.1, nu=2.0, backend="reference")
    _train(a, oa, 3, 0)
    _train(b, ob, 3, 0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        for k in oa.state[p]:
            torch.testing.assert_close(torch.as_tensor(oa.state[p][k]), torch.as_tensor(ob.state[q][k]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(kappa=0.0), "kappa"),
        (dict(nu=0.0), "nu"),
        (dict(nu=float("inf")), "nu"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(scaling_floor=2.0), "scaling_floor"),
        (dict(magnitude_scaling="yes"), "magnitude_scaling"),
        (dict(regularizer=ss.GroupMCP(0.1, 1.0)), "regularizer"),
        (dict(regularizer=ss.NuclearNorm(0.1)), "regularizer"),
        (dict(regularizer=ss.SparseGroupLasso(0.1, 0.1)), "regularizer"),
        (dict(backend="gpu"), "backend"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ss.DessiLBI([nn.Parameter(torch.zeros(3, 3))], **kwargs)


def test_reference_step_rejects_inconsistent_lists():
    p, g, d = torch.zeros(2), torch.zeros(2), torch.zeros(2)
    kw = dict(lr=0.1, kappa=1.0, nu=1.0, momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match="zs and gammas"):
        reference.dessilbi_step([p], [g], [d], [], [], reg=ss.L1(0.1), **kw)
    with pytest.raises(ValueError, match="zs and gammas"):
        reference.dessilbi_step([p], [g], [d], [torch.zeros(2)], [torch.zeros(2)], reg=None, **kw)
