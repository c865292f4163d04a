"""The NaN/Inf gradient check: verdicts taken by post-accumulate-grad hooks during backward and
reused by step() only for unchanged gradients; torch.amp.GradScaler's found_inf/grad_scale."""

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import structsparse as ss
import structsparse.backends.cpu  # noqa: F401  (ss.backends.cpu.available)

BACKENDS = ["reference"] + (["cpu"] if ss.backends.cpu.available() else [])


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 3, 6, 6, generator=g), torch.randint(0, 3, (5,), generator=g)


def _loss(m, seed):
    x, y = _batch(seed)
    return nn.functional.cross_entropy(m(x), y)


def _opt(m, backend, **kw):
    return ss.RMDA(ss.group_params(m, ss.GroupLasso(1e-3)), lr=0.05, momentum=0.9, backend=backend, **kw)


def _snapshot(m, o):
    ps = [p.detach().clone() for p in m.parameters()]
    st = [
        {k: (v.clone() if torch.is_tensor(v) else v) for k, v in o.state[p].items()} for p in m.parameters()
    ]
    return ps, st


def _unchanged(m, o, snap):
    ps, st = snap
    for p, q, s in zip(m.parameters(), ps, st):
        assert torch.equal(p, q)
        for k, v in o.state[p].items():
            assert torch.equal(v, s[k]) if torch.is_tensor(v) else v == s[k]


def _count_reads(monkeypatch):
    """Counts the gradients step() reads for its check (hooks excluded)."""
    from structsparse import _optimizer

    seen = []
    orig = _optimizer.StructuredOptimizer._all_finite_local

    def spy(grads):
        seen.extend(grads)
        return orig(grads)

    monkeypatch.setattr(_optimizer.StructuredOptimizer, "_all_finite_local", staticmethod(spy))
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_hook_verdicts_skip_the_reread_and_match_the_full_check(backend, monkeypatch):
    seen = _count_reads(monkeypatch)
    m1, m2 = _net(), _net()
    o1, o2 = _opt(m1, backend), _opt(m2, backend, skip_nonfinite=False)
    for i in range(3):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            _loss(m, i).backward()
            o.step()
    assert seen == []  # every gradient came with its hook's verdict
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def _clip_with_inf(m):
    """An infinite element makes clip_grad_norm_ scale every gradient by 0 (inf * 0 = NaN)."""
    with torch.no_grad():
        m[0].weight.grad[0, 0, 0, 0] = float("inf")
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, foreach=True)
    assert torch.isnan(m[0].weight.grad).any()


@pytest.mark.parametrize(
    "spoil",
    [
        lambda m: m[2].bias.grad.__setitem__(0, float("nan")),  # in place
        lambda m: setattr(m[2].bias, "grad", torch.full_like(m[2].bias, float("inf"))),  # replaced
        lambda m: _clip_with_inf(m),
    ],
)
def test_gradients_changed_after_backward_are_checked_again(spoil):
    m = _net()
    o = _opt(m, "reference")
    o.zero_grad()
    _loss(m, 0).backward()
    o.step()
    snap = _snapshot(m, o)
    o.zero_grad()
    _loss(m, 1).backward()
    spoil(m)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        o.step()
    assert o.skipped_steps == 1
    _unchanged(m, o, snap)


def test_nonfinite_backward_skips_and_accumulation_is_checked(monkeypatch):
    seen = _count_reads(monkeypatch)
    m = _net()
    o = _opt(m, "reference")
    o.zero_grad()
    _loss(m, 0).backward()
    o.step()
    snap = _snapshot(m, o)
    # accumulation: a finite micro-batch, then one whose loss is infinite
    o.zero_grad()
    _loss(m, 1).backward()
    (_loss(m, 2) * float("inf")).backward()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        o.step()
    _unchanged(m, o, snap)
    # finite accumulated gradients step without a re-read
    o.zero_grad(set_to_none=False)
    _loss(m, 1).backward()
    _loss(m, 2).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o.step()
    assert seen == [] and o.skipped_steps == 1


def test_manual_gradients_are_read_once_then_trusted_until_changed(monkeypatch):
    seen = _count_reads(monkeypatch)
    p = nn.Parameter(torch.ones(4, 3))
    frozen = torch.ones(3, requires_grad=False)  # no hook: checked by step
    o = ss.RMDA([p, frozen], lr=0.1, backend="reference")
    p.grad = torch.full((4, 3), 0.5)
    frozen.grad = torch.ones(3)
    o.step()
    assert len(seen) == 2
    o.step()
    assert len(seen) == 2  # same gradients, same versions: not read again
    frozen.grad.mul_(float("nan"))
    before = p.detach().clone()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        o.step()
    assert torch.equal(p, before) and len(seen) == 3


def test_copies_and_pickles_hook_their_own_parameters(monkeypatch):
    m = _net()
    o = _opt(m, "reference")
    o.zero_grad()
    _loss(m, 0).backward()
    o.step()
    o2 = copy.deepcopy(o)
    o3 = pickle.loads(pickle.dumps(o))
    for c in (o2, o3):
        ps = [p for g in c.param_groups for p in g["params"]]
        assert all(len(p._post_accumulate_grad_hooks or {}) == 1 for p in ps)
    # the original's parameters keep exactly one hook each; load_state_dict adds none
    o.load_state_dict(o.state_dict())
    assert all(len(p._post_accumulate_grad_hooks) == 1 for p in m.parameters())
    seen = _count_reads(monkeypatch)
    ps3 = [p for g in o3.param_groups for p in g["params"]]
    o3.zero_grad()
    sum((p * p).sum() for p in ps3).backward()
    o3.step()
    assert seen == []


def test_collected_optimizer_removes_its_hooks():
    import gc

    m = _net()
    o = _opt(m, "reference")
    assert all(len(p._post_accumulate_grad_hooks) == 1 for p in m.parameters())
    del o
    gc.collect()
    assert all(len(p._post_accumulate_grad_hooks) == 0 for p in m.parameters())


# --- torch.amp.GradScaler ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unscale_first", [False, True])
def test_grad_scaler_matches_the_unscaled_run_bit_for_bit(backend, unscale_first, monkeypatch):
    seen = _count_reads(monkeypatch)
    m1, m2 = _net(), _net()
    o1, o2 = _opt(m1, backend, skip_nonfinite=False), _opt(m2, backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    for i in range(4):
        o1.zero_grad()
        _loss(m1, i).backward()
        o2.zero_grad()
        scaler.scale(_loss(m2, i)).backward()
        if unscale_first:
            scaler.unscale_(o2)
        scaler.step(o2)
        scaler.update()
        # the reference run steps on exactly the gradients the scaled run unscaled to
        for a, b in zip(m1.parameters(), m2.parameters()):
            a.grad = b.grad.clone()
        o1.step()
        for a, b in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(a, b)
            for k, v in o1.state[a].items():
                w = o2.state[b][k]
                assert torch.equal(v, w) if torch.is_tensor(v) else v == w
    assert scaler.get_scale() > 2.0**12  # it grew: no step was skipped
    assert not hasattr(o2, "found_inf") and not hasattr(o2, "grad_scale")
    assert seen == []  # no check pass of the optimizer's own


def test_grad_scaler_unscales_the_gradients_in_the_step():
    m1, m2 = _net(), _net()
    o1, o2 = _opt(m1, "reference"), _opt(m2, "reference")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    o1.zero_grad()
    _loss(m1, 0).backward()
    o2.zero_grad()
    scaler.scale(_loss(m2, 0)).backward()
    scaled = [p.grad.clone() for p in m2.parameters()]
    scaler.step(o2)
    for a, b, s in zip(m1.parameters(), m2.parameters(), scaled):
        assert torch.equal(b.grad, s / 2.0**8)  # unscaled in place, exactly (a power of two)
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_found_inf_skips_with_state_unchanged(backend):
    m = _net()
    o = _opt(m, backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    o.zero_grad()
    scaler.scale(_loss(m, 0)).backward()
    scaler.step(o)
    scaler.update()
    snap = _snapshot(m, o)
    o.zero_grad()
    scaler.scale(_loss(m, 1) * float("inf")).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scaler's own skip: no warning, not counted
        scaler.step(o)
    scaler.update()
    assert scaler.get_scale() == 2.0**9
    _unchanged(m, o, snap)
    assert o.skipped_steps == 0
