"""Sharded training (FSDP2 DTensor parameters, DDP) against the single-process reference.

Two process launches (gloo on 127.0.0.1, CPU; workers in tests/dist_worker.py):

- 2 ranks: every optimizer x grouping/regularizer in float64 (≤ 1e-12), DDP (replicas bit-identical,
  ≤ 1e-12 from the single-process run), bad configurations, DCP checkpoint saved and resumed
  bit-exactly;
- 3 ranks (uneven shards and an empty one): every optimizer x grouping in float32 (≤ 1e-6, the PG
  solvers included; measured: bitwise equal to the single-process run), and the 2-rank checkpoint
  loaded on 3 ranks;
- both again with ``backend="cpu"`` (the fused kernels on shards, against the single-process cpu run),
  the cpu solvers' redistribution to whole-group owners on a multi-tensor bucket, and the generic
  path of backends without shard support (cpu kernels with cpu's shard support switched off);
- a third launch (2 ranks): the Triton backend on shards under ``TRITON_INTERPRET=1``;
- ``torchrun``: ``structsparse train`` on 2 ranks (2-epoch digits runs, RAMDA and DessiLBI).

DessiLBI (with and without magnitude scaling; L1/GroupLasso cases) is in the trajectory and DDP
tasks (Z, Γ and the momentum buffer compared; zero groups of Γ identical), and ``lbi_metrics``
(2 and 3 ranks) checks the structure read from sharded Γ (:mod:`structsparse.lbi`).

Each trajectory runs 20 steps with ``restart()`` at step 10 and compares parameters and all state
(norm-wise relative error per shard, and ≤ 10x that elementwise relative to the largest entry),
zero groups (some but not all zero, asserted), group/kernel/unstructured sparsity, and the number of all-reduces of RMDA/ProxSGD.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import dist_worker  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _run(world, outdir, tasks):
    os.makedirs(outdir, exist_ok=True)
    dist_worker.launch(world, "suite", outdir=outdir, tasks=tasks)
    out = {}
    for r in range(world):
        with open(os.path.join(outdir, f"rank{r}.json")) as f:
            for name, res in json.load(f).items():
                out.setdefault(name, []).append(res)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    ckpt = str(base / "ckpt")
    two = _run(
        2,
        str(base / "w2"),
        [
            ("bad_config", "bad_config", {}),
            ("trajectory", "trajectory", {"dtypes": ("float64",)}),
            ("trajectory_cpu", "trajectory", {"dtypes": ("float64",), "backend": "cpu"}),
            ("owned_groups", "owned_groups", {}),
            ("generic", "trajectory", {"dtypes": ("float64",), "backend": "cpu", "native_shards": False}),
            ("ddp", "ddp", {}),
            ("checkpoint", "checkpoint", {"ckpt": ckpt, "phase": "save"}),
            ("lbi_metrics", "lbi_metrics", {}),
        ],
    )
    three = _run(
        3,
        str(base / "w3"),
        [
            ("trajectory", "trajectory", {"dtypes": ("float32",)}),
            ("trajectory_cpu", "trajectory", {"dtypes": ("float32",), "backend": "cpu"}),
            ("owned_groups", "owned_groups", {}),
            ("generic", "trajectory", {"dtypes": ("float32",), "backend": "cpu", "native_shards": False}),
            ("checkpoint", "checkpoint", {"ckpt": ckpt, "phase": "load"}),
            ("lbi_metrics", "lbi_metrics", {}),
        ],
    )
    return {2: two, 3: three}


def _check(runs, world, name):
    res = runs[world][name]
    assert len(res) == world
    for r, x in enumerate(res):
        assert x["ok"], f"rank {r}:\n{x.get('error')}"


def test_bad_configuration_raises(runs):
    _check(runs, 2, "bad_config")


def test_fsdp2_trajectories_2_ranks_float64(runs):
    _check(runs, 2, "trajectory")


def test_fsdp2_trajectories_3_ranks_float32(runs):
    _check(runs, 3, "trajectory")


@pytest.mark.skipif(os.environ.get("STRUCTSPARSE_NO_EXT") == "1", reason="STRUCTSPARSE_NO_EXT=1")
@pytest.mark.parametrize("world", [2, 3])
def test_fsdp2_trajectories_cpu_backend(runs, world):
    """backend="cpu" on shards against the single-process cpu run: 2 ranks float64 ≤ 1e-12, 3 ranks
    float32 ≤ 1e-6 for every optimizer (measured: bitwise equal). RMDA/ProxSGD/DessiLBI run fused on
    the shards (one all-reduce per split bucket); the solvers' (RAMDA, ProxGen, ProxSSI) split
    buckets are redistributed to whole-group owners (two all_to_alls per bucket, no all-reduce)."""
    _check(runs, world, "trajectory_cpu")


@pytest.mark.skipif(os.environ.get("STRUCTSPARSE_NO_EXT") == "1", reason="STRUCTSPARSE_NO_EXT=1")
@pytest.mark.parametrize("world", [2, 3])
def test_cpu_solvers_redistributed_to_group_owners(runs, world):
    """distributed.owned_groups on one multi-tensor bucket (input-wise 2-D/4-D shards, a whole-tensor
    group, an empty shard, a channels_last shard, a replicated tensor; float32/float64/bf16):
    bitwise equal to one single-process call, two all_to_alls per step with the documented bytes."""
    _check(runs, world, "owned_groups")


@pytest.mark.skipif(os.environ.get("STRUCTSPARSE_NO_EXT") == "1", reason="STRUCTSPARSE_NO_EXT=1")
@pytest.mark.parametrize("world", [2, 3])
def test_generic_path_of_backends_without_shard_support(runs, world):
    """The path Triton and CUDA take on shards (distributed.owned_bucket: every split bucket on
    whole-group owners), exercised with the cpu kernels by switching off the cpu backend's own shard
    support: every optimizer x grouping, 20 steps with a restart, 2 ranks float64 and 3 ranks
    float32, ≤ 1e-12 / 1e-6 against the single-process cpu run (measured: bitwise), two all_to_alls
    per split bucket and step (magnitude-scaled DessiLBI: reference, its all-reduces)."""
    _check(runs, world, "generic")


def test_fsdp2_trajectories_triton_backend(tmp_path):
    """A backend without shard support (Triton, here on CPU tensors under TRITON_INTERPRET=1) steps
    FSDP2 shards on whole-group owners (distributed.owned_bucket): 2 ranks, float32, 20 steps with a
    restart at 10, ≤ 1e-6 against the single-process Triton run (measured: bitwise; magnitude-scaled
    DessiLBI runs on reference, 7.2e-7 at 3 ranks over 20 steps), two all_to_alls per split bucket
    and step, no group all-reduce."""
    pytest.importorskip("triton")
    opts = ("rmda", "ramda_pg", "proxgen_exact", "proxssi", "dessilbi", "dessilbi_ms")
    res = _run(
        2,
        str(tmp_path),
        [("triton", "trajectory", {"dtypes": ("float32",), "backend": "triton", "opts": opts})],
    )
    for r, x in enumerate(res["triton"]):
        assert x["ok"], f"rank {r}:\n{x.get('error')}"


def test_ddp_replicas_identical_and_match_single_process(runs):
    _check(runs, 2, "ddp")


def test_checkpoint_resumes_bit_exactly(runs):
    _check(runs, 2, "checkpoint")


def test_checkpoint_loads_with_another_rank_count(runs):
    _check(runs, 3, "checkpoint")


@pytest.mark.parametrize("world", [2, 3])
def test_dessilbi_structure_from_sharded_gamma(runs, world):
    """structsparse.lbi on sharded Γ: masks (DTensors), ratios, tracker, random masks global."""
    _check(runs, world, "lbi_metrics")


def _torchrun_train(args, out, name):
    """``torchrun --standalone --nproc_per_node 2 -m structsparse train ARGS``; its stdout lines."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "structsparse", "train", *args, "--out", str(out), "--run-name", name]
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_cli_train_under_torchrun_2_ranks(tmp_path):
    """``structsparse train`` launched by torchrun on 2 ranks (FSDP2, gloo): only rank 0 prints;
    the reported accuracy and structure are those of the saved (gathered) model, and the run
    matches the single-process one up to gradient-summation rounding."""
    import torch

    import structsparse as ss
    from structsparse.cli.data import load_dataset
    from structsparse.cli.models import build_model
    from structsparse.cli.train import _evaluate, run_train

    args = ["--optimizer", "ramda", "--momentum", "0", "--milestones", "none", "--epochs", "2"]
    args += ["--lam", "1e-3", "--no-plot", "--no-progress", "--save-model"]
    lines = _torchrun_train(args, tmp_path, "fsdp")
    assert sum(ln.startswith("epoch   2/2") for ln in lines) == 1, lines  # rank 0 only
    assert sum("FSDP2 data-parallel over 2 ranks" in ln for ln in lines) == 1, lines
    run = tmp_path / "fsdp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    (printed,) = [ln for ln in lines if ln.startswith("epoch   2/2")]
    assert f"val {100 * last['val_acc']:5.1f}%" in printed, (printed, last)
    assert last["val_acc"] == summary["val_acc"]

    # the saved model (full tensors) has exactly the reported structure and accuracy
    sd = torch.load(run / "model.pt", weights_only=True)
    data = load_dataset("digits", seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes)
    model.load_state_dict(sd)
    ws = [(n, w) for n, w in model.named_parameters() if n.endswith("weight")]
    zs = [ss.zero_groups(w, "input") for _, w in ws]
    zero = sum(int(z.sum()) for z in zs)
    groups = sum(z.numel() for z in zs)
    wzero = sum(int(z.sum()) * w.shape[0] for z, (_, w) in zip(zs, ws))
    assert 0 < zero < groups
    assert summary["group_sparsity"] == zero / groups
    assert summary["weighted_group_sparsity"] == wzero / sum(w.numel() for _, w in ws)
    assert [x["kept"] for x in summary["layers"]] == [int((~z).sum()) for z in zs]
    _, acc = _evaluate(model, data.x_val, data.y_val, 1024)
    assert summary["val_acc"] == acc

    # the single-process run of the same configuration
    cfg = dict(optimizer="ramda", momentum=0.0, milestones=[], epochs=2, lam=1e-3, plot=False)
    one = run_train({**cfg, "quiet": True, "save_model": True}, data=data, out_dir=tmp_path / "one")
    sd1 = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    for k, v in sd1.items():
        assert float((sd[k] - v).norm() / v.norm()) <= 1e-4, k
    assert abs(one["val_acc"] - summary["val_acc"]) <= 2 / len(data.y_val)
    assert abs(one["group_sparsity"] - summary["group_sparsity"]) <= 2 / groups


def test_cli_train_resume_under_torchrun_2_ranks(tmp_path):
    """``--checkpoint-every`` under torchrun saves through torch.distributed.checkpoint; a run of 2
    epochs resumed to 3 (``--resume --epochs 3``) ends bit for bit where a straight 3-epoch run
    does: summary (but timings), log rows and gathered weights."""
    import torch

    args = ["--optimizer", "ramda", "--momentum", "0", "--milestones", "1", "--lam", "1e-3"]
    args += ["--subset", "400", "--checkpoint-every", "1", "--no-plot", "--no-progress", "--save-model"]
    _torchrun_train([*args, "--epochs", "3"], tmp_path, "a")
    _torchrun_train([*args, "--epochs", "2"], tmp_path, "b")
    a, b = tmp_path / "a", tmp_path / "b"
    assert json.loads((b / "checkpoint.json").read_text())["epoch"] == 2
    lines = _torchrun_train(["--resume", str(b), "--epochs", "3"], tmp_path, "b")
    assert any("resumed from the checkpoint of epoch 2" in ln for ln in lines), lines
    assert sorted(p.name for p in b.glob("checkpoint-e*")) == ["checkpoint-e0003"]  # the old one removed
    timing = {"run_dir", "mean_step_ms", "total_time_s"}
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if k not in timing} == {
        k: v for k, v in sb.items() if k not in timing
    }
    assert 0 < sa["group_sparsity"] < 1

    def rows(d):
        drop = ("epoch_time", "step_time_ms")
        return [{k: v for k, v in json.loads(ln).items() if k not in drop} for ln in (d / "log.jsonl").open()]

    assert rows(a) == rows(b) and len(rows(b)) == 3
    ma, mb = (torch.load(d / "model.pt", weights_only=True) for d in (a, b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_cli_train_dessilbi_under_torchrun_2_ranks(tmp_path):
    """``structsparse train --optimizer dessilbi`` under torchrun on 2 ranks: the per-epoch
    accuracy of ``W ⊙ 1[Γ ≠ 0]`` masks the FSDP2 shards in place and restores them
    (``lbi.masked``, no deep copy): the saved model is the unmasked one, and the figures match the
    single-process run (measured: identical to the printed digits; asserted up to
    gradient-summation rounding, as the RAMDA twin above)."""
    import torch

    from structsparse.cli.data import load_dataset
    from structsparse.cli.models import build_model
    from structsparse.cli.train import _evaluate, run_train

    args = ["--optimizer", "dessilbi", "--epochs", "2", "--lam", "0.02"]
    lines = _torchrun_train([*args, "--no-plot", "--no-progress", "--save-model"], tmp_path, "lbi")
    assert sum(ln.startswith("epoch   2/2") for ln in lines) == 1, lines  # rank 0 only
    run = tmp_path / "lbi"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    (printed,) = [ln for ln in lines if ln.startswith("epoch   2/2")]
    for key in ("val_acc", "sparse_val_acc", "gamma_sparsity", "group_sparsity"):
        assert last[key] == summary[key], key
    assert f"sparse val acc {100 * last['sparse_val_acc']:5.1f}%" in printed, printed
    assert f"gamma sparsity {100 * last['gamma_sparsity']:5.1f}%" in printed, printed
    # a partial support: the masked network is a different one (lower accuracy)
    assert 0 < summary["gamma_sparsity"] < 1
    assert 0 < summary["sparse_val_acc"] < summary["val_acc"]

    # the saved (gathered) model is W, restored after the masked evaluation
    sd = torch.load(run / "model.pt", weights_only=True)
    data = load_dataset("digits", seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes)
    model.load_state_dict(sd)
    assert _evaluate(model, data.x_val, data.y_val, 1024)[1] == summary["val_acc"]

    # the single-process run of the same arguments
    cfg = dict(optimizer="dessilbi", epochs=2, lam=0.02, plot=False, quiet=True, save_model=True)
    one = run_train(cfg, data=data, out_dir=tmp_path / "one")
    sd1 = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    for k, v in sd1.items():
        assert float((sd[k] - v).norm() / v.norm()) <= 1e-4, k
    n_val = len(data.y_val)
    n_gamma = sum(v.numel() for k, v in sd1.items() if k.endswith("weight"))
    groups = sum(x["groups"] for x in summary["layers"])
    assert abs(one["val_acc"] - summary["val_acc"]) <= 2 / n_val
    assert abs(one["sparse_val_acc"] - summary["sparse_val_acc"]) <= 2 / n_val
    assert abs(one["gamma_sparsity"] - summary["gamma_sparsity"]) <= 2 / n_gamma
    assert abs(one["group_sparsity"] - summary["group_sparsity"]) <= 2 / groups
