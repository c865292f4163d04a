"""torch.optim's generic contracts, checked on every structsparse optimizer.

An OptimizerInfo-style table (:data:`INFOS`: algorithm, constructor options, the regularizer it
takes) crossed with the backends ``reference`` and ``cpu`` and with/without a regularizer; each
test states one contract of ``torch.optim.Optimizer`` (copy/pickle, hooks, state_dict, closures,
param groups, dtypes) and checks it with numbers.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import structsparse as ss
from structsparse.backends import cpu as cpu_backend


@dataclass(frozen=True)
class OptimInfo:
    name: str
    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    reg: Any = None  # the regularizer of the "with regularizer" cases

    def make(self, params, backend: str, regularized: bool, **extra) -> Any:
        return self.cls(
            params, backend=backend, regularizer=self.reg if regularized else None, **{**self.kwargs, **extra}
        )


INFOS = [
    OptimInfo("rmda", ss.RMDA, dict(lr=0.1, momentum=0.5), ss.GroupLasso(0.05)),
    OptimInfo("ramda", ss.RAMDA, dict(lr=0.05, momentum=0.5, max_iters=20), ss.GroupLasso(0.05)),
    OptimInfo("proxsgd", ss.ProxSGD, dict(lr=0.1, momentum=0.5), ss.GroupLasso(0.05)),
    OptimInfo("proxgen", ss.ProxGen, dict(lr=0.05, max_iters=20), ss.GroupLasso(0.05)),
    OptimInfo("proxssi", ss.ProxSSI, dict(lr=0.05), ss.GroupLasso(0.05)),
    OptimInfo("dessilbi", ss.DessiLBI, dict(lr=0.1, kappa=1.0, nu=10.0), ss.GroupLasso(0.05)),
]
BACKENDS = ["reference"] + (["cpu"] if cpu_backend.available()[0] else [])
CASES = [
    pytest.param(info, b, r, id=f"{info.name}-{b}-{'reg' if r else 'noreg'}")
    for info in INFOS
    for b in BACKENDS
    for r in (True, False)
]
ONE_PER_ALGO = [pytest.param(info, id=info.name) for info in INFOS]


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(6, 5, generator=g, dtype=dtype))
    b = torch.nn.Parameter(torch.randn(5, generator=g, dtype=dtype))
    return w, b


def grads_for(params, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def run(opt, params, steps, start=0):
    for i in range(start, start + steps):
        for p, gr in zip(params, grads_for(params, i)):
            p.grad = gr
        opt.step()


def groups(w, b):
    return [{"params": [w]}, {"params": [b], "regularizer": None}]


def assert_same_state(o1, o2):
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1.keys() == s2.keys()
    for k in s1["state"]:
        for key, v in s1["state"][k].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, s2["state"][k][key]), key
            else:
                assert v == s2["state"][k][key], key


# -- copy.deepcopy and pickle --------------------------------------------------------------------
@pytest.mark.parametrize("info,backend,regularized", CASES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_keeps_flags_counters_and_steps_alike(info, backend, regularized, how):
    w, b = make_params()
    opt = info.make(groups(w, b), backend, regularized, skip_nonfinite=True)
    run(opt, [w, b], 2)
    w.grad = torch.full_like(w, float("nan"))
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step()
    assert opt.skipped_steps == 1
    if how == "deepcopy":
        opt2 = copy.deepcopy(opt)
    else:
        opt2 = pickle.loads(pickle.dumps(opt))
    assert opt2.skip_nonfinite is True and opt2.skipped_steps == 1
    assert_same_state(opt, opt2)
    w2, b2 = opt2.param_groups[0]["params"][0], opt2.param_groups[1]["params"][0]
    assert w2 is not w and torch.equal(w2, w)
    run(opt, [w, b], 2, start=5)
    run(opt2, [w2, b2], 2, start=5)
    assert torch.equal(w, w2) and torch.equal(b, b2)
    assert_same_state(opt, opt2)
    flag_off = copy.deepcopy(info.make(groups(*make_params()), backend, regularized, skip_nonfinite=False))
    assert flag_off.skip_nonfinite is False


# -- load_state_dict hooks -----------------------------------------------------------------------
@pytest.mark.parametrize("info,backend,regularized", CASES)
def test_load_pre_hook_result_is_what_gets_loaded(info, backend, regularized):
    w, b = make_params()
    opt = info.make(groups(w, b), backend, regularized)
    run(opt, [w, b], 2)
    sd = opt.state_dict()
    key = info.cls.tensor_state[0]

    def pre_hook(optimizer, state_dict):
        out = copy.deepcopy(state_dict)
        for st in out["state"].values():
            st[key] = torch.full_like(st[key], 42.0)
        return out

    calls = []
    opt.register_load_state_dict_pre_hook(pre_hook)
    opt.register_load_state_dict_post_hook(lambda o: calls.append(o))
    opt.load_state_dict(sd)
    assert calls == [opt]
    for p in (w, b):
        assert torch.equal(opt.state[p][key], torch.full_like(p, 42.0))
    # the caller's dict is untouched
    assert not torch.equal(sd["state"][0][key], torch.full_like(w, 42.0))


@pytest.mark.parametrize("info", ONE_PER_ALGO)
def test_load_pre_hook_can_migrate_old_keys(info):
    w, b = make_params()
    opt = info.make(groups(w, b), "reference", True)
    run(opt, [w, b], 2)
    sd = opt.state_dict()
    old = copy.deepcopy(sd)
    for st in old["state"].values():
        for k in list(st):
            st["old_" + k] = st.pop(k)

    def migrate(optimizer, state_dict):
        for st in state_dict["state"].values():
            for k in [k for k in st if k.startswith("old_")]:
                st[k[4:]] = st.pop(k)

    w2, b2 = make_params(seed=1)
    opt2 = info.make(groups(w2, b2), "reference", True)
    with pytest.raises(ValueError, match="state keys"):
        opt2.load_state_dict(old)
    opt2.register_load_state_dict_pre_hook(migrate)
    opt2.load_state_dict(old)
    assert_same_state(opt, opt2)


@pytest.mark.parametrize("info,backend,regularized", CASES)
def test_state_dict_post_hook_sees_the_finished_dict(info, backend, regularized, tmp_path):
    w, b = make_params()
    opt = info.make(groups(w, b), backend, regularized)
    run(opt, [w, b], 2)
    seen = {}

    def post_hook(optimizer, state_dict):
        seen["keys"] = set(state_dict)
        seen["reg"] = state_dict["param_groups"][0]["regularizer"]
        torch.save(state_dict, tmp_path / "opt.pt")
        state_dict["extra"] = 7
        return state_dict

    handle = opt.register_state_dict_post_hook(post_hook)
    sd = opt.state_dict()
    handle.remove()
    assert sd["extra"] == 7 and {"algorithm", "skipped_steps", "state", "param_groups"} <= seen["keys"]
    assert seen["reg"] == (info.reg.to_dict() if regularized else None)
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    w2, b2 = make_params(seed=1)
    opt2 = info.make(groups(w2, b2), backend, regularized)
    opt2.load_state_dict(loaded)
    assert_same_state(opt, opt2)


# -- step hooks, zero_grad, closure ------------------------------------------------------------------
@pytest.mark.parametrize("info,backend,regularized", CASES)
def test_step_hooks_zero_grad_and_closure(info, backend, regularized):
    w, b = make_params()
    opt = info.make(groups(w, b), backend, regularized)
    events = []
    h1 = opt.register_step_pre_hook(lambda o, args, kwargs: events.append(("pre", o is opt)))
    h2 = opt.register_step_post_hook(lambda o, args, kwargs: events.append(("post", o is opt)))
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))

    def closure():
        opt.zero_grad()
        assert torch.is_grad_enabled()
        loss = ((x @ w + b) ** 2).mean()
        loss.backward()
        return loss

    before = w.detach().clone()
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert events == [("pre", True), ("post", True)]
    assert not torch.equal(w, before)
    h1.remove(), h2.remove()
    opt.step(closure)
    assert len(events) == 2
    opt.zero_grad(set_to_none=False)
    assert w.grad is not None and torch.count_nonzero(w.grad) == 0
    opt.zero_grad()
    assert w.grad is None and b.grad is None
    # a step without gradients changes nothing
    after = w.detach().clone()
    opt.step()
    assert torch.equal(w, after)


# -- add_param_group, dtypes -----------------------------------------------------------------------
@pytest.mark.parametrize("info,backend,regularized", CASES)
def test_add_param_group_steps_like_a_fresh_optimizer(info, backend, regularized):
    w, b = make_params()
    opt = info.make([{"params": [w]}], backend, regularized)
    run(opt, [w], 2)
    opt.add_param_group({"params": [b], "regularizer": None})
    assert opt.param_groups[1]["lr"] == info.kwargs.get("lr", opt.defaults["lr"])
    b_ref = torch.nn.Parameter(b.detach().clone())
    ref = info.make([b_ref], backend, False)
    for i in range(2):
        gw, gb = grads_for([w, b], 10 + i)
        w.grad, b.grad, b_ref.grad = gw, gb, gb.clone()
        opt.step()
        ref.step()
    assert torch.equal(b, b_ref)


@pytest.mark.parametrize("info,backend,regularized", CASES)
def test_params_of_different_dtypes(info, backend, regularized):
    w32, b32 = make_params(torch.float32)
    w64, b64 = make_params(torch.float64, seed=1)
    opt = info.make(
        [{"params": [w32, w64]}, {"params": [b32, b64], "regularizer": None}], backend, regularized
    )
    c32 = [torch.nn.Parameter(t.detach().clone()) for t in (w32, b32)]
    c64 = [torch.nn.Parameter(t.detach().clone()) for t in (w64, b64)]
    o32 = info.make(groups(*c32), backend, regularized)
    o64 = info.make(groups(*c64), backend, regularized)
    for i in range(3):
        g32, g64 = grads_for([w32, b32], i), grads_for([w64, b64], 50 + i)
        for p, g in zip((w32, b32, w64, b64, *c32, *c64), (*g32, *g64, *g32, *g64)):
            p.grad = g.clone()
        opt.step(), o32.step(), o64.step()
    for p, q in zip((w32, b32, w64, b64), (*c32, *c64)):
        assert p.dtype == q.dtype and torch.equal(p, q)


# -- state_dict: resumable, backend of the machine, validation -------------------------------------
@pytest.mark.parametrize("info,backend,regularized", CASES)
def test_state_dict_resumes_exactly_on_any_backend(info, backend, regularized):
    w, b = make_params()
    opt = info.make(groups(w, b), backend, regularized)
    run(opt, [w, b], 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    w2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (w, b))
    other = "cpu" if backend == "reference" and "cpu" in BACKENDS else backend
    opt2 = info.make(groups(w2, b2), other, regularized)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert [g["backend"] for g in opt2.param_groups] == [other, other]
    if other == backend:
        run(opt, [w, b], 2, start=3)
        run(opt2, [w2, b2], 2, start=3)
        assert torch.equal(w, w2) and torch.equal(b, b2)
        assert_same_state(opt, opt2)


def test_checkpoint_backend_never_overrides_the_constructor():
    w, b = make_params()
    opt = ss.ProxSGD(groups(w, b), lr=0.1, regularizer=ss.GroupLasso(0.05), backend="reference")
    run(opt, [w, b], 1)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        g["backend"] = "cuda"  # a checkpoint from a GPU machine
    w2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (w, b))
    opt2 = ss.ProxSGD(groups(w2, b2), lr=0.1, regularizer=ss.GroupLasso(0.05), backend="reference")
    opt2.load_state_dict(sd)
    assert [g["backend"] for g in opt2.param_groups] == ["reference", "reference"]
    run(opt, [w, b], 1, start=1)
    run(opt2, [w2, b2], 1, start=1)
    assert torch.equal(w, w2)


def corrupt(sd, what):
    sd = copy.deepcopy(sd)
    st = sd["state"][0]
    tkey = next(k for k, v in st.items() if isinstance(v, torch.Tensor))
    if what == "step_negative":
        st["step"] = -3
    elif what == "step_fraction":
        st["step"] = 2.5
    elif what == "step_string":
        st["step"] = "a"
    elif what == "alpha_nan":
        st["alpha"] = float("nan")
    elif what == "alpha_negative":
        st["alpha"] = -1.0
    elif what == "lr_negative":
        sd["param_groups"][0]["lr"] = -1
    elif what == "lr_inf":
        sd["param_groups"][1]["lr"] = float("inf")
    elif what == "momentum":
        sd["param_groups"][0]["momentum"] = 1.5
    elif what == "complex":
        st[tkey] = st[tkey].to(torch.complex64)
    elif what == "integer":
        st[tkey] = st[tkey].to(torch.int64)
    elif what == "shape":
        st[tkey] = st[tkey].reshape(-1)
    elif what == "skipped":
        sd["skipped_steps"] = -1
    return sd


CORRUPTIONS = {
    "step_negative": "step",
    "step_fraction": "step",
    "step_string": "step",
    "alpha_nan": "alpha",
    "alpha_negative": "alpha",
    "lr_negative": "Invalid lr",
    "lr_inf": "Invalid lr",
    "momentum": "Invalid momentum",
    "complex": "complex",
    "integer": "int64",
    "shape": "shape",
    "skipped": "skipped_steps",
}


@pytest.mark.parametrize(
    "name,what",
    [("rmda", w) for w in CORRUPTIONS]
    + [("proxgen", w) for w in CORRUPTIONS if "alpha" not in w and w != "momentum"],
)
def test_corrupt_state_is_refused_before_anything_changes(name, what):
    info = next(i for i in INFOS if i.name == name)
    w, b = make_params()
    opt = info.make(groups(w, b), "reference", True)
    run(opt, [w, b], 2)
    good = opt.state_dict()
    w2, b2 = make_params(seed=3)
    opt2 = info.make(groups(w2, b2), "reference", True)
    run(opt2, [w2, b2], 1)
    before = copy.deepcopy(opt2.state_dict())
    with pytest.raises(ValueError, match=CORRUPTIONS[what]):
        opt2.load_state_dict(corrupt(good, what))
    after = opt2.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k in before["state"]:
        for key, v in before["state"][k].items():
            assert (
                torch.equal(v, after["state"][k][key])
                if isinstance(v, torch.Tensor)
                else v == after["state"][k][key]
            )
    opt2.load_state_dict(good)  # the good one still loads
    assert_same_state(opt, opt2)


def test_integral_tensor_step_is_accepted():
    w, b = make_params()
    opt = ss.ProxGen(groups(w, b), backend="reference")
    run(opt, [w, b], 2)
    sd = opt.state_dict()
    sd["state"][0]["step"] = torch.tensor(2.0)
    opt.load_state_dict(sd)
    assert opt.state[w]["step"] == 2 and type(opt.state[w]["step"]) is int


# -- param-group checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("info", ONE_PER_ALGO)
def test_unknown_hyperparameter_is_named(info):
    w, b = make_params()
    extra = "weight_decay" if "weight_decay" not in info.cls(groups(w, b)).defaults else "nesterov"
    with pytest.raises(ValueError, match=f"no hyperparameter '{extra}'"):
        info.cls([{"params": [w], extra: 0.01}])
    opt = info.cls([w])
    with pytest.raises(ValueError, match=f"'{extra}'"):
        opt.add_param_group({"params": [b], extra: 0.01})
    assert len(opt.param_groups) == 1
    # keys torch's LR schedulers write are not hyperparameters
    info.cls([{"params": [w], "initial_lr": 0.1}])


def test_hugging_face_style_weight_decay_groups_raise_for_rmda():
    m = torch.nn.Linear(4, 3)
    hf = [
        {"params": [m.weight], "weight_decay": 0.01},
        {"params": [m.bias], "weight_decay": 0.0},
    ]
    with pytest.raises(ValueError, match="RMDA has no hyperparameter 'weight_decay'"):
        ss.RMDA(hf)


def test_a_parameter_listed_twice_raises():
    w, b = make_params()
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] is the same tensor as .*\['params'\]\[0\]"):
        ss.ProxSGD([w, w], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        ss.ProxSGD([{"params": [w]}, {"params": [b, w]}], lr=0.1)
    opt = ss.ProxSGD([w], lr=0.1)
    with pytest.raises(ValueError, match="same tensor"):
        opt.add_param_group({"params": [b, b]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("lr", -1.0, "Invalid lr"),
        ("lr", float("inf"), "Invalid lr"),
        ("momentum", 1.5, "Invalid momentum"),
        ("regularizer", "group_lasso", "regularizer"),
        ("backend", "gpu", "unknown backend"),
        ("maximize", 1, "maximize"),
    ],
)
def test_param_group_edits_are_checked_at_step(key, value, match):
    w, b = make_params()
    opt = ss.RMDA(groups(w, b), lr=0.1, regularizer=ss.GroupLasso(0.05), backend="reference")
    run(opt, [w, b], 1)
    before = w.detach().clone()
    good = opt.param_groups[0][key]
    opt.param_groups[0][key] = value
    w.grad = torch.ones_like(w)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert torch.equal(w, before)
    opt.param_groups[0][key] = good
    opt.step()
    assert not torch.equal(w, before)


def test_a_regularizer_set_after_construction_is_checked_against_the_params():
    b = torch.nn.Parameter(torch.randn(5))
    opt = ss.RAMDA([b], backend="reference")
    opt.param_groups[0]["regularizer"] = ss.NuclearNorm(0.1)  # needs >= 2 dims
    b.grad = torch.ones_like(b)
    with pytest.raises(ValueError, match="NuclearNorm"):
        opt.step()


@pytest.mark.parametrize("skip", [True, False])
def test_meta_parameters_raise_at_step(skip):
    w = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    opt = ss.ProxSGD([w], lr=0.1, skip_nonfinite=skip)
    w.grad = torch.empty(4, 3, device="meta")
    with pytest.raises(RuntimeError, match="meta tensor"):
        opt.step()


# -- torch.optim flags ---------------------------------------------------------------------------
@pytest.mark.parametrize("info,backend,regularized", CASES)
def test_maximize_steps_on_the_negated_gradient(info, backend, regularized):
    w, b = make_params()
    w2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (w, b))
    opt = info.make(groups(w, b), backend, regularized, maximize=True)
    ref = info.make(groups(w2, b2), backend, regularized)
    for i in range(3):
        for p, q, g in zip((w, b), (w2, b2), grads_for([w, b], i)):
            p.grad, q.grad = g, -g
        opt.step(), ref.step()
    assert torch.equal(w, w2) and torch.equal(b, b2)


def test_foreach_capturable_differentiable():
    w, b = make_params()
    for fe in (None, True, False):
        opt = ss.RMDA([w], foreach=fe, backend="reference")
        assert opt.param_groups[0]["foreach"] is fe
    with pytest.raises(ValueError, match="capturable=True is not supported"):
        ss.RMDA([w], capturable=True)
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        ss.ProxGen([w], differentiable=True)
    with pytest.raises(ValueError, match="foreach"):
        ss.ProxSGD([w], foreach="yes")


def test_checkpoint_without_the_new_flags_loads():
    w, b = make_params()
    opt = ss.RMDA(groups(w, b), backend="reference")
    run(opt, [w, b], 1)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["maximize"], g["foreach"]
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["maximize"] is False
    run(opt, [w, b], 1, start=1)


@pytest.mark.parametrize("bad", [None, "a", [0.1], float("nan"), -1.0])
def test_regularizer_weights_are_checked(bad):
    for make in (lambda v: ss.GroupLasso(v), lambda v: ss.L1(v), lambda v: ss.GroupMCP(v, 1.0)):
        with pytest.raises(ValueError, match="lam"):
            make(bad)
    with pytest.raises(ValueError, match="omega"):
        ss.GroupMCP(0.1, bad)


def test_skipped_steps_warning_counts():
    w, b = make_params()
    opt = ss.ProxSGD(groups(w, b), lr=0.1, backend="reference")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(2):
            w.grad, b.grad = torch.full_like(w, float("inf")), torch.zeros_like(b)
            opt.step()
    assert opt.skipped_steps == 2 and "2 skipped so far" in str(rec[-1].message)
    assert opt.state_dict()["skipped_steps"] == 2
