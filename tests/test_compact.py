"""structsparse.compact: the compact model has the outputs of the original and no removable channel."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

import structsparse as ss  # noqa: E402
from structsparse import lbi  # noqa: E402
from structsparse.compact import compact_run, latency_ms, load_compact, model_stats  # noqa: E402
from structsparse.models import build_model  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models: one thread is faster than two (and steadier on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


def _zero(model: nn.Module, side: str, frac: float, gen: torch.Generator) -> None:
    """Zero a random ``frac`` of the input columns (side "input") or output rows ("output") of
    every Conv2d/Linear, each layer with its own pattern."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                dim = 1 if side == "input" else 0
                k = m.weight.shape[dim]
                idx = torch.randperm(k, generator=gen)[: int(k * frac)]
                m.weight.index_fill_(dim, idx, 0.0)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = 4 * mid
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class BottleneckNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Bottleneck(16, 8, 1), Bottleneck(32, 8, 1))
        self.layer2 = nn.Sequential(Bottleneck(32, 16, 2), Bottleneck(64, 16, 1))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape

        def heads(t):
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        a = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, n, -1))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int = 32, num_heads: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


def _models():
    return {
        "mlp": lambda: build_model("mlp", (1, 8, 8), 10),
        "lenet5": lambda: build_model("lenet5", (1, 8, 8), 10),
        "vgg": lambda: build_model("vgg", (3, 16, 16), 10),
        "resnet": lambda: build_model("resnet", (3, 16, 16), 10),
        "bottleneck": lambda: BottleneckNet(),
    }


_SHAPES = {
    "mlp": (1, 8, 8),
    "lenet5": (1, 8, 8),
    "vgg": (3, 16, 16),
    "resnet": (3, 16, 16),
    "bottleneck": (3, 16, 16),
}


@pytest.mark.parametrize("side", ["input", "output"])
@pytest.mark.parametrize("arch", list(_SHAPES))
def test_random_zero_patterns_keep_outputs(arch, side):
    gen = torch.Generator().manual_seed(sum(map(ord, arch + side)))
    model = _models()[arch]()
    _randomize_bn(model, gen)
    _zero(model, side, 0.5, gen)
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, *_SHAPES[arch], generator=gen)
    small, rep = ss.compact(model, x, return_report=True)
    assert small.compact_report is rep
    # the original is untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # same outputs on inputs it has not seen
    x2 = torch.randn(32, *_SHAPES[arch], generator=gen) * 2
    with torch.no_grad():
        assert _rel(model(x2), small(x2)) <= 1e-5
    p0 = sum(p.numel() for p in model.parameters())
    p1 = sum(p.numel() for p in small.parameters())
    assert rep.params == {"before": p0, "after": p1}
    assert p1 < 0.75 * p0, (arch, side, p0, p1)
    assert rep.macs["after"] < rep.macs["before"]
    assert rep.removed and rep.max_rel_error <= 1e-5


def test_mlp_removes_exactly_the_zero_columns():
    gen = torch.Generator().manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10).eval()  # Flatten, 64→256, ReLU, 256→128, ReLU, 128→10
    with torch.no_grad():
        model[3].weight[:, :100] = 0  # consumer side: 100 of the 256 hidden units
        model[3].weight[:, 100:105] = 0
        model[3].weight[7, 100:105] = 1  # not a zero column: kept
        model[3].weight[17:40] = 0  # producer side: 23 of 128; constant relu(bias) folds into model[5]
        model[1].weight[:, 3:9] = 0  # input pixels: the model's input, never removed
    x = torch.randn(64, 1, 8, 8, generator=gen)
    small = ss.compact(model, x)
    assert small[1].weight.shape == (156, 64)  # 64 input pixels stay
    assert small[3].weight.shape == (105, 156)
    assert small[5].weight.shape == (10, 105)
    with torch.no_grad():
        assert _rel(model(x), small(x)) <= 1e-5
    rep = small.compact_report
    kinds = {tuple(sorted(r["by_rule"].items())) for r in rep.removed}
    assert (("consumer", 100),) in kinds and (("producer", 23),) in kinds
    assert rep.removed[[r["by_rule"] == {"producer": 23} for r in rep.removed].index(True)][
        "folded_into"
    ] == ["5"]
    assert all(k["reason"] == "reaches the model's output" for k in rep.kept), rep.kept


def test_bn_shift_folds_into_linear_not_across_zero_padding():
    gen = torch.Generator().manual_seed(1)
    model = build_model("vgg", (3, 16, 16), 10).eval()  # conv-BN-ReLU ×4, avgpool, Linear
    _randomize_bn(model, gen)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        convs[-1].weight[:40] = 0  # last conv: its constant BN shift goes through avgpool into the Linear
        convs[1].weight[:15] = 0  # a middle conv: the next conv pads with zeros
        bn = model.features[5]
        bn.running_mean[:15] = convs[1].bias[:15]
        bn.bias[:10] = 1.0  # channels 0-9 carry the constant 1: kept
        bn.bias[10:15] = -1.0  # channels 10-14 carry ReLU(-1) = 0: removed, nothing to fold
    x = torch.randn(8, 3, 16, 16, generator=gen)
    small = ss.compact(model, x)
    rep = small.compact_report
    assert [m for m in small.features if isinstance(m, nn.Conv2d)][-1].out_channels == 128 - 40
    assert small.classifier.in_features == 88
    kept = [k for k in rep.kept if k["channels"] == list(range(10))]
    assert kept and "pads with zeros" in kept[0]["reason"], rep.kept
    assert [m for m in small.features if isinstance(m, nn.Conv2d)][1].out_channels == 64 - 5
    with torch.no_grad():
        x2 = torch.randn(8, 3, 16, 16, generator=gen)
        assert _rel(model(x2), small(x2)) <= 1e-5


def test_residual_group_partly_zero_is_kept_and_reported():
    gen = torch.Generator().manual_seed(2)
    model = build_model("resnet", (3, 16, 16), 10).eval()
    _randomize_bn(model, gen)
    b1 = model.blocks[1]  # input: the 16-channel stream of stem + block 0; consumers b1.conv1, b1.shortcut
    with torch.no_grad():
        b1.conv1.weight[:, :4] = 0
        b1.shortcut[0].weight[:, :4] = 0  # channels 0-3: zero in every consumer → removed
        model.blocks[0].conv1.weight[:, :4] = 0
        b1.conv1.weight[:, 8:12] = 0  # channels 8-11: zero in b1.conv1 only → kept
    x = torch.randn(8, 3, 16, 16, generator=gen)
    small = ss.compact(model, x)
    rep = small.compact_report
    assert small.stem[0].out_channels == 12 and small.blocks[0].conv2.out_channels == 12
    assert small.blocks[1].conv1.in_channels == 12
    kept = [k for k in rep.kept if k["channels"] == [8, 9, 10, 11]]
    assert kept, rep.kept
    assert "blocks.1.shortcut.0" in kept[0]["reason"] and "blocks.0.conv1" in kept[0]["reason"]
    with torch.no_grad():
        assert _rel(model(x), small(x)) <= 1e-5


def test_transformer_block_mlp_units_and_heads():
    gen = torch.Generator().manual_seed(3)
    model = TransformerBlock().eval()  # dim 32, 4 heads of 8, hidden 64
    with torch.no_grad():
        model.fc2.weight[:, :20] = 0  # 20 hidden units, consumer side
        model.fc1.weight[20:30] = 0  # 10 hidden units, producer side: GELU(bias) folds into fc2
        model.attn.o.weight[:, 8:16] = 0  # head 1, consumer side
        model.attn.q.weight[24:32] = 0  # head 3, producer side: uniform attention, output = v's bias
        model.attn.k.weight[24:32] = 0
        model.attn.v.weight[24:32] = 0
        model.attn.o.weight[:, 0:4] = 0  # half of head 0: kept
    x = torch.randn(4, 6, 32, generator=gen)
    small = ss.compact(model, x, heads={"attn": 4})
    assert small.fc1.out_features == 34 and small.fc2.in_features == 34
    assert small.attn.num_heads == 2 and small.attn.q.out_features == 16 and small.attn.o.in_features == 16
    kept = [k for k in small.compact_report.kept if k["channels"] == list(range(8))]
    assert kept and "part of the head" in kept[0]["reason"]
    with torch.no_grad():
        x2 = torch.randn(3, 9, 32, generator=gen)
        assert _rel(model(x2), small(x2)) <= 1e-5
    # without `heads`, the attention group is kept whole, with the reason
    plain = ss.compact(model, x)
    assert plain.attn.q.out_features == 32
    assert any("heads=" in k["reason"] for k in plain.compact_report.kept)


def test_gradients_flow_and_compact_model_trains_on():
    gen = torch.Generator().manual_seed(4)
    model = build_model("resnet", (3, 8, 8), 4).eval()
    _randomize_bn(model, gen)
    _zero(model, "input", 0.5, gen)
    x = torch.randn(32, 3, 8, 8, generator=gen)
    y = torch.randint(0, 4, (32,), generator=gen)
    small = ss.compact(model, x)
    small.train()
    opt = torch.optim.SGD(small.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(small(x), y)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in small.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    # and with a structured-sparsity optimizer of this package
    groups = ss.group_params(small, ss.GroupLasso(1e-4, "input"))
    ramda = ss.RAMDA(groups, lr=0.01)
    for _ in range(3):
        ramda.zero_grad()
        nn.functional.cross_entropy(small(x), y).backward()
        ramda.step()
    assert all(torch.isfinite(p).all() for p in small.parameters())


def test_dessilbi_masks_then_compact():
    from sklearn.datasets import load_digits

    torch.manual_seed(5)
    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor((xs - xs.mean()) / xs.std(), dtype=torch.float32).view(-1, 1, 8, 8)[:512]
    y = torch.tensor(ys)[:512]
    model = build_model("lenet5", (1, 8, 8), 10)
    opt = ss.DessiLBI(lbi.dessilbi_groups(model, lam=1.0), lr=0.1, kappa=1.0, nu=10.0)
    for i in range(0, 512, 64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
        opt.step()
    masks = lbi.masks(model, opt, level="filter")
    dead = {n: int((~m.flatten(1).any(1)).sum()) for n, m in masks.items()}
    assert sum(dead.values()) > 0, dead  # some filters/neurons not yet in Γ's support
    lbi.apply_masks(model, masks)
    model.eval()
    small = ss.compact(model, x[:128])
    with torch.no_grad():
        assert _rel(model(x), small(x)) <= 1e-5
    # every masked filter whose constant folds exactly is gone: the last conv and the hidden Linear
    # (their consumers are Linear); the first conv's feed a zero-padded conv
    conv2, fc1 = model.features[3], model.classifier[0]
    assert small.features[3].out_channels <= conv2.out_channels - dead["features.3.weight"] + 1
    assert small.classifier[0].out_features <= fc1.out_features - dead["classifier.0.weight"] + 1
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_fsdp2_gathered_state_dict(tmp_path):
    """FSDP2 training (one gloo rank), the full state dict gathered, loaded unsharded, compacted."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from structsparse.distributed import shard_model

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(6)
        model = build_model("mlp", (1, 8, 8), 10)
        with torch.no_grad():
            model[3].weight[:, :64] = 0  # structure the sharded optimizer keeps (RAMDA's zero pattern)
        shard_model(model)
        opt = ss.RAMDA(ss.group_params(model, ss.GroupLasso(1e-3, "input")), lr=0.01)
        x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with pytest.raises(ValueError, match="sharded"):
            ss.compact(model, x)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    finally:
        dist.destroy_process_group()
    dense = build_model("mlp", (1, 8, 8), 10)
    dense.load_state_dict(full)
    dense.eval()
    zero_cols = int((dense[3].weight == 0).all(0).sum())
    assert zero_cols > 0
    small = ss.compact(dense, x)
    assert small[3].in_features == 256 - zero_cols
    with torch.no_grad():
        assert _rel(dense(x), small(x)) <= 1e-5


def test_trained_digits_run_compacted_with_accuracy_unchanged(tmp_path, capsys):
    """``structsparse train --compact`` (RAMDA on digits), then ``structsparse compact RUN_DIR``."""
    from structsparse.cli import main

    argv = ["train", "--optimizer", "ramda", "--epochs", "7", "--milestones", "2,3", "--compact"]
    argv += ["--out", str(tmp_path), "--run-name", "digits", "--no-plot", "--device", "cpu"]
    assert main(argv) == 0
    assert "## Compact model" in capsys.readouterr().out
    run = tmp_path / "digits"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["group_sparsity"] > 0.2
    b, a = summary["compact"]["before"], summary["compact"]["after"]
    assert a["val_acc"] == b["val_acc"] and abs(b["val_acc"] - summary["val_acc"]) < 1e-12
    assert a["params"] < 0.8 * b["params"] and a["macs"] < 0.8 * b["macs"]
    for f in ("model.pt", "model.pt2", "report.json", "report.md"):
        assert (run / "compact" / f).is_file()
    assert "## Compact model" in (run / "summary.md").read_text()
    # the exported program rebuilds the compact model: same outputs as the dense trained model
    dense = build_model("mlp", (1, 8, 8), 10)
    dense.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    rebuilt = load_compact(run)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert _rel(dense.eval()(x), rebuilt(x)) <= 1e-5
    # `structsparse compact RUN_DIR` on the existing run replaces the table instead of adding one
    assert main(["compact", str(run), "--reps", "2", "-q"]) == 0
    assert (run / "summary.md").read_text().count("## Compact model") == 1
    r = compact_run(run, reps=1, echo=lambda _m: None)
    assert r["after"]["params"] == a["params"]
    assert main(["compact", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("reps", ["0", "-3"])
def test_compact_command_refuses_a_nonpositive_reps(tmp_path, capsys, reps):
    from structsparse.cli import main

    (tmp_path / "config.json").write_text('{"dataset": "digits"}')
    assert main(["compact", str(tmp_path), "--reps", reps]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reps" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    with pytest.raises(ValueError, match="reps"):
        compact_run(tmp_path, reps=int(reps))


def test_stats_and_latency():
    m = build_model("mlp", (1, 8, 8), 10)
    x = torch.randn(4, 1, 8, 8)
    st = model_stats(m, x, batches=(1, 3), reps=2)
    assert st["params"] == sum(p.numel() for p in m.parameters())
    assert st["macs"] == 64 * 256 + 256 * 128 + 128 * 10 + 256 + 128 + 10 or st["macs"] > 64 * 256
    assert st["latency_ms_b1"] > 0 and st["latency_ms_b3"] > 0
    t = latency_ms([m, m], x, reps=2)
    assert len(t) == 2 and min(t) > 0


def test_missing_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match=r"structsparse\[compact\]"):
        ss.compact(build_model("mlp", (1, 8, 8), 10), torch.randn(2, 1, 8, 8))


def test_bad_input_named():
    with pytest.raises(TypeError, match="nn.Module"):
        ss.compact(object(), torch.randn(2, 3))
    with pytest.raises(TypeError, match="example_inputs"):
        ss.compact(build_model("mlp", (1, 8, 8), 10), "x")
