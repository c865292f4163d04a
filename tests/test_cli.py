"""The ``structsparse`` command: small runs of each subcommand, the raw data readers on fake files,
bad input, and the identification experiment on a small instance."""

from __future__ import annotations

import argparse
import inspect
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import structsparse as ss
from structsparse import cli
from structsparse._optimizer import resolve_solver
from structsparse.cli.data import DataError, load_dataset, read_idx, write_idx
from structsparse.cli.models import MODELS, build_model
from structsparse.cli.optimizers import OPTIMIZERS, make_regularizer, resolve_hparams

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ train


def test_train_digits_writes_log_plot_and_summary(tmp_path, capsys):
    code, out, err = run(
        [
            "train",
            "--model",
            "logreg",
            "--optimizer",
            "ramda",
            "--lam",
            "3e-3",
            "--epochs",
            "8",
            "--milestones",
            "3",
            "--out",
            str(tmp_path),
            "--run-name",
            "r",
            "--no-progress",
            "--backend",
            "reference",
        ],
        capsys,
    )
    assert code == 0, err
    d = tmp_path / "r"
    assert {"config.json", "log.jsonl", "summary.json", "summary.md", "curves.png"} <= {
        p.name for p in d.iterdir()
    }
    rows = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    s = json.loads((d / "summary.json").read_text())
    assert s["val_acc"] == rows[-1]["val_acc"] and 0.85 < s["val_acc"] <= 1.0  # logreg on digits learns
    # RAMDA with c ramped to 1 zeroes input pixels (the border pixels of digits are constant)
    assert s["group_sparsity"] == rows[-1]["group_sparsity"] > 0
    layer = s["layers"][0]
    assert layer["groups"] == 64 and layer["kept"] == round(64 * (1 - s["group_sparsity"]))
    assert rows[-1]["c"] == pytest.approx(1.0)
    assert "validation accuracy" in out and "kept groups" in out
    assert (d / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_csv_dense_baseline_and_conv_model(tmp_path, capsys):
    code, out, err = run(
        [
            "train",
            "--model",
            "lenet5",
            "--optimizer",
            "sgd",
            "--grouping",
            "kernel",
            "--epochs",
            "1",
            "--milestones",
            "none",
            "--subset",
            "128",
            "--batch-size",
            "32",
            "--log-format",
            "csv",
            "--out",
            str(tmp_path),
            "--run-name",
            "c",
            "-q",
            "--no-plot",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.startswith("| metric | value |") and "epoch   1/1" not in out  # -q: the final table only
    lines = (tmp_path / "c" / "log.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,c,train_loss") and len(lines) == 2
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert s["group_sparsity"] == 0.0 and s["kernel_sparsity"] == 0.0  # dense: no exact zeros
    assert [x["layer"] for x in s["layers"]] == ["features.0.weight", "features.3.weight"]  # conv only
    assert not (tmp_path / "c" / "curves.png").exists()


def test_python_dash_m_and_help():
    r = subprocess.run(
        [sys.executable, "-m", "structsparse", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0 and all(c in r.stdout for c in ("train", "identify", "compare", "ticket"))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--grouping", "kernel", "--model", "mlp"], "--grouping 'kernel'"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"], "--download"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--milestones", "5,3"], "--milestones"),
        (["train", "--epochs", "3", "--milestones", "3"], "last milestone"),
        (["train", "--lr", "-1", "--epochs", "1", "--milestones", "none", "--subset", "10"], "lr"),
        (["compare", "--optimizers", "rmda,nope"], "nope"),
        (["compare", "--optimizers", "rmda", "--set", "rmda.lr"], "--set"),
        (["identify", "--optimizers", "sgd"], "not a regularized"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    code, out, err = run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--optimizer", "nope"], "--optimizer"),
        (["train", "--epochs", "x"], "--epochs"),
        (["train", "--milestones", "a,b"], "--milestones"),
        (["train", "--bogus"], "--bogus"),
        (["tran"], "tran"),
        ([], "required"),
        (["identify", "--n", "1.5"], "--n"),
        (["ticket", "--rewind", "x"], "--rewind"),
    ],
)
def test_argparse_errors_are_one_line_exit_2(capsys, argv, needle):
    """argparse's own errors follow the CLI's style: one line on stderr, no usage dump, exit 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and needle in err and "usage:" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--lam", "-1"], "--lam"),
        (["train", "--gamma", "0"], "--gamma"),
        (["train", "--subset", "0"], "--subset"),
        (["train", "--threads", "0"], "--threads"),
        (["train", "--momentum", "1.5"], "momentum"),
        (["train", "--optimizer", "proxgen", "--solver", "exact", "--regularizer", "nuclear"], "exact"),
        (["compare", "--lr", "-1", "--optimizers", "proxsgd"], "lr"),
        (["compare", "--set", "ramda.momentum=2", "--optimizers", "rmda,ramda"], "momentum"),
        (["identify", "--lam", "-1"], "--lam"),
        (["identify", "--ref-iters", "0"], "--ref-iters"),
        (["ticket", "--lr", "nan"], "--lr"),
        # a setting the chosen optimizer(s) would ignore
        (["train", "--optimizer", "rmda", "--solver", "exact"], "--solver: not used by rmda"),
        (["train", "--optimizer", "ramda", "--nu", "5"], "--nu: not used by ramda"),
        (["train", "--optimizer", "proxgen", "--momentum", "0.5"], "--momentum: not used by proxgen"),
        (["train", "--optimizer", "rmda", "--weight-decay", "0.1"], "--weight-decay: not used by rmda"),
        (["train", "--optimizer", "sgd", "--lam", "0.1"], "--lam: not used by sgd"),
        (["train", "--regularizer", "none", "--lam", "0.1"], "--lam: not used with --regularizer none"),
        (["compare", "--optimizers", "rmda,ramda", "--kappa", "2"], "--kappa: not used by rmda, ramda"),
        (["compare", "--optimizers", "rmda,ramda", "--set", "rmda.eps=0.1"], "rmda.eps"),
        (["compare", "--optimizers", "sgd,rmda", "--set", "sgd.lam=0.1"], "sgd.lam"),
        (["compare", "--optimizers", "rmda", "--target-acc", "200"], "--target-acc"),
        (["compare", "--optimizers", "rmda", "--target-acc", "nan"], "--target-acc"),
        (["identify", "--optimizers", "rmda,dessilbi"], "'dessilbi' is not scored"),
        (["identify", "--problems", ""], "--problems: empty list"),
        (["identify", "--optimizers", ","], "--optimizers: empty list"),
        (["ticket", "--lbi-epochs", "0"], "--lbi-epochs"),
        (["ticket", "--retrain-lr", "-1"], "--retrain-lr"),
        (["ticket", "--retrain-weight-decay", "-1"], "--retrain-weight-decay"),
        (["ticket", "--subset", "0"], "--subset"),
        # the run folder stays inside --out
        (["train", "--run-name", "../escaped"], "--run-name"),
        (["compare", "--run-name", "a/b"], "--run-name"),
        (["identify", "--run-name", ".."], "--run-name"),
        (["ticket", "--run-name", "../escaped"], "--run-name"),
    ],
)
def test_bad_values_fail_before_any_output(tmp_path, capsys, argv, needle):
    """Bad values are refused before the run folder exists: one line, exit 2, nothing written."""
    code, out, err = run([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "escaped").exists()


def test_a_setting_the_optimizer_reads_is_accepted():
    from structsparse.cli.config import check_flags_used

    check_flags_used({"solver": "exact", "eps": 1e-3, "momentum": 0.5, "lam": 1e-3}, ["ramda"])
    check_flags_used({"nu": 5.0, "kappa": 2.0, "weight_decay": 0.1}, ["rmda", "dessilbi"])
    check_flags_used({"weight_decay": 0.1, "momentum": 0.9}, ["sgd"])
    from structsparse.cli.optimizers import OPTION_KEYS

    class Reads(dict):
        def __init__(self, *a):
            super().__init__(*a)
            self.read = set()

        def __getitem__(self, k):
            self.read.add(k)
            return super().__getitem__(k)

        def get(self, k, default=None):
            self.read.add(k)
            return super().get(k, default)

    for name, spec in OPTIMIZERS.items():  # the declared settings are exactly those the build reads
        hp = Reads({**spec.defaults, "backend": "reference"})
        group = {"params": [torch.nn.Parameter(torch.zeros(2, 2))]}
        if spec.regularized:
            group["regularizer"] = ss.GroupLasso(1e-3)
        spec.build([group], hp)
        assert hp.read & set(OPTION_KEYS) == set(spec.options), name


@pytest.mark.parametrize("cmd", ["train", "compare", "identify", "ticket"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_unavailable_backend_is_a_one_line_error_without_a_run_folder(
    tmp_path, capsys, monkeypatch, cmd, backend
):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():  # the backends run here: the error case needs a machine without CUDA
        pytest.skip("CUDA is available")
    code, out, err = run([cmd, "--backend", backend, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--backend {backend}" in lines[0]
    assert not (tmp_path / "o").exists()


def test_default_milestones_follow_epochs(tmp_path, capsys):
    from structsparse.cli.config import default_milestones

    assert default_milestones(30) == [10, 20]  # the main job's
    assert default_milestones(45) == [15, 30] and default_milestones(3) == [1, 2]
    assert default_milestones(2) == [1] and default_milestones(1) == []
    argv = ["train", "--optimizer", "rmda", "--model", "logreg", "--epochs", "3", "--subset", "200"]
    code, out, err = run(
        [*argv, "--out", str(tmp_path), "--run-name", "r", "--no-plot", "--no-progress"], capsys
    )
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["milestones"] == [1, 2] and cfg["epochs"] == 3


def test_no_milestones_note_says_there_is_none(tmp_path, capsys):
    argv = ["train", "--model", "logreg", "--epochs", "1", "--subset", "64", "--milestones", "none"]
    code, out, err = run([*argv, "--out", str(tmp_path), "--no-plot", "--no-progress"], capsys)
    assert code == 0, err
    note = [ln for ln in out.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "has none" in note[0] and "c stays 0.1" in note[0]
    assert "iterations after" not in out


def test_help_texts_say_what_runs(capsys):
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        assert sp.description, name  # every subcommand describes itself in --help
    helps = {a.dest: a.help for a in sub.choices["train"]._actions}
    assert "auto for RAMDA" in helps["solver"]
    assert "10" in helps["nu"] and "100" in helps["nu"]  # the CLI's default and the library's
    assert "1/3 and 2/3" in helps["milestones"]
    assert "final table" in helps["quiet"]
    assert OPTIMIZERS["ramda"].defaults["solver"] == "auto"
    assert "pg for ProxGen" in helps["solver"] and OPTIMIZERS["proxgen"].defaults["solver"] == "pg"
    dessilbi_nu = inspect.signature(ss.DessiLBI).parameters["nu"].default
    assert OPTIMIZERS["dessilbi"].defaults["nu"] == 10.0 and dessilbi_nu == 100.0
    # "auto": the optimizer picks exact where the regularizer has one (every one but nuclear)
    for reg, solver in (("group_mcp", "exact"), ("group_lasso", "exact"), ("nuclear", "pg")):
        hp = resolve_hparams({**cli.TRAIN_DEFAULTS, "optimizer": "ramda", "regularizer": reg})
        assert (
            ss.RAMDA([torch.zeros(2, 2, requires_grad=True)], solver=hp["solver"]).defaults["solver"]
            == "auto"
        )
        assert resolve_solver(hp["solver"], make_regularizer(reg, 1e-3, "input", 3.0)) == solver


def test_rmda_defaults_give_structure(tmp_path, capsys):
    """``structsparse train --optimizer rmda`` with its defaults (digits, MLP, 30 epochs) ends with
    exact zero groups and a useful model."""
    argv = ["train", "--optimizer", "rmda", "--out", str(tmp_path), "--run-name", "r", "-q", "--no-plot"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["group_sparsity"] > 0.4 and s["val_acc"] > 0.93, s


def test_dessilbi_hook_is_a_table_row():
    # the optimizer table drives --optimizer's choices: adding a row is all a new optimizer needs
    p = cli.build_parser()
    spec = cli.OPTIMIZERS["rmda"]
    cli.OPTIMIZERS["fake"] = cli.OptimizerSpec("fake", spec.build, True, True, dict(spec.defaults))
    try:
        ns = cli.build_parser().parse_args(["train", "--optimizer", "fake"])
        assert ns.optimizer == "fake"
    finally:
        del cli.OPTIMIZERS["fake"]
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--optimizer", "fake"])


# ---------------------------------------------------------------------------------------- compare


def test_compare_table_and_stability(tmp_path, capsys):
    code, out, err = run(
        [
            "compare",
            "--optimizers",
            "ramda,proxsgd,adamw",
            "--model",
            "logreg",
            "--epochs",
            "3",
            "--milestones",
            "1",
            "--subset",
            "200",
            "--set",
            "ramda.momentum=0",
            "--out",
            str(tmp_path),
            "--run-name",
            "cmp",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    d = tmp_path / "cmp"
    for f in ("table.md", "summary.json", "sparsity_vs_epochs.png", "stability.png"):
        assert (d / f).exists(), f
    s = json.loads((d / "summary.json").read_text())
    assert list(s) == ["ramda", "proxsgd", "adamw"]
    assert s["ramda"]["hparams"]["momentum"] == 0 and s["adamw"]["hparams"]["lam"] is None
    table = (d / "table.md").read_text()
    for o, r in s.items():
        assert 0 <= r["last_pattern_change"] <= 3
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| {o} |"))
        assert f"{100 * r['val_acc']:.2f} %" in row and f"{100 * r['group_sparsity']:.2f} %" in row
    assert s["adamw"]["group_sparsity"] == 0.0  # dense baseline: no exact zeros
    assert (d / "ramda" / "log.jsonl").exists()


# --------------------------------------------------------------------------------------- identify


def test_identify_rmda_finds_the_exact_pattern(tmp_path):
    prob = cli.linear_problem(4000, 32, 3, 24, seed=0)  # the command's default instance
    hist = cli.run_identify_one(prob, "rmda", 2e-2, 30, [10, 20], 128, 0, "reference")
    assert hist[-1]["correctness"] == 1.0 and hist[-2]["correctness"] == 1.0
    assert hist[-1]["train_error"] < 0.1
    # before the c ramp reaches 1, W is a mix of iterates: no exact zeros yet
    assert hist[0]["correctness"] == pytest.approx(8 / 32)


def test_identify_command_small(tmp_path, capsys):
    code, out, err = run(
        [
            "identify",
            "--optimizers",
            "rmda,proxsgd",
            "--n",
            "600",
            "--features",
            "8",
            "--epochs",
            "4",
            "--milestones",
            "2",
            "--out",
            str(tmp_path),
            "--run-name",
            "id",
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads((tmp_path / "id" / "identify.json").read_text())
    assert set(data["results"]) == {"linear", "conv"} == set(data["reference"])
    assert data["reference"]["linear"]["agreement_with_truth"] == 1.0
    for res in data["results"].values():
        for h in res.values():
            assert len(h) == 4 and all(0 <= r["correctness"] <= 1 and 0 <= r["train_error"] <= 1 for r in h)
    assert (tmp_path / "id" / "identify.png").exists() and "final pattern correctness" in out


def test_pattern_correctness():
    t = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    w = torch.tensor([[0.0, 3.0, 1.0], [0.0, 1.0, 0.0]])
    assert cli.pattern_correctness([w], [(t, "input")]) == 1.0
    w[:, 1] = 0
    assert cli.pattern_correctness([w], [(t, "input")]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- data


def test_idx_roundtrip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02")
    with pytest.raises(DataError):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_reader_on_fake_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    ytr = (np.arange(40) % 10).astype(np.uint8)
    xte = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    yte = (np.arange(20) % 10).astype(np.uint8)
    write_idx(raw / "train-images-idx3-ubyte.gz", xtr)  # gzip, as torchvision leaves them
    write_idx(raw / "train-labels-idx1-ubyte", ytr)  # or extracted
    write_idx(raw / "t10k-images-idx3-ubyte", xte)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", yte)
    ds = load_dataset(name, tmp_path)
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_val.shape == (20, 1, 28, 28) and ds.num_classes == 10
    assert torch.equal(ds.y_train, torch.from_numpy(ytr.astype(np.int64)))
    # normalized with the training mean/std: pixel order preserved
    flat = ds.x_train.flatten()
    assert abs(float(flat.mean())) < 1e-4 and float(flat.std()) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(torch.from_numpy(xtr.reshape(-1)).argsort(stable=True), flat.argsort(stable=True))
    sub = load_dataset(name, tmp_path, subset=10)
    assert len(sub.y_train) == 10


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_on_fake_files(tmp_path, name, capsys):
    rng = np.random.default_rng(1)
    key = "labels" if name == "cifar10" else "fine_labels"
    classes = 10 if name == "cifar10" else 100
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir()
    files = (
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    )
    labels = {}
    for f in files:
        y = rng.integers(0, classes, 6).tolist()
        labels[f] = y
        batch = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), key.encode(): y}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh)
    ds = load_dataset(name, tmp_path)
    ntrain = 30 if name == "cifar10" else 6
    assert ds.x_train.shape == (ntrain, 3, 32, 32) and ds.num_classes == classes
    assert ds.y_val.tolist() == labels[files[-1]]
    # and the command trains on it (small VGG adapts to 32×32×3)
    code, out, err = run(
        [
            "train",
            "--dataset",
            name,
            "--data-dir",
            str(tmp_path),
            "--model",
            "vgg",
            "--optimizer",
            "proxsgd",
            "--epochs",
            "1",
            "--milestones",
            "none",
            "--out",
            str(tmp_path / "runs"),
            "--run-name",
            "v",
            "-q",
            "--no-plot",
            "--threads",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "runs" / "v" / "summary.json").read_text())["dataset"] == name


def test_corrupt_cifar_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for f in ("train", "test"):
        (folder / f).write_bytes(b"not a pickle")
    code, out, err = run(
        ["train", "--dataset", "cifar100", "--data-dir", str(tmp_path), "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "not a CIFAR python batch" in err and "Traceback" not in err


def test_synthetic_dataset_is_labeled_by_a_group_sparse_model():
    ds = load_dataset("synthetic", seed=3)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 4
    assert len(torch.unique(ds.y_train)) == 4


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_adapt_to_inputs(model, shape):
    m = build_model(model, shape, 7)
    assert m(torch.zeros(2, *shape)).shape == (2, 7)


# ------------------------------------------------------------------------------- DessiLBI, ticket


def test_train_dessilbi_reports_gamma_sparsity(tmp_path, capsys):
    argv = ["train", "--optimizer", "dessilbi", "--model", "logreg", "--regularizer", "l1", "--lam", "0.02"]
    argv += ["--epochs", "4", "--milestones", "none", "--subset", "400", "--out", str(tmp_path)]
    code, out, err = run([*argv, "--run-name", "d", "--no-progress", "--backend", "reference"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "d" / "log.jsonl").read_text().splitlines()]
    g = [r["gamma_sparsity"] for r in rows]
    # inverse scale space: Γ's support starts empty and grows
    assert g[0] > g[-1] and 0 < g[-1] < 1 and all(a >= b for a, b in zip(g, g[1:]))
    for r in rows:  # L1 (element groups): the structure's group sparsity is Γ's zero fraction
        assert r["group_sparsity"] == pytest.approx(r["gamma_sparsity"])
        assert 0 <= r["sparse_val_acc"] <= 1 and r["unstructured_sparsity"] == 0.0  # W itself is dense
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert s["gamma_sparsity"] == g[-1] and s["sparse_val_acc"] == rows[-1]["sparse_val_acc"]
    layer = s["layers"][0]
    assert layer["groups"] == 640 and layer["kept"] == round(640 * (1 - g[-1]))
    assert "sparsity of Γ" in out and "gamma sparsity" in out


def test_ticket_command_small(tmp_path, capsys):
    argv = [
        "ticket",
        "--model",
        "logreg",
        "--subset",
        "300",
        "--ticket-epochs",
        "1,3",
        "--retrain-epochs",
        "2",
    ]
    argv += ["--random-seeds", "0,1", "--lam", "0.02", "--out", str(tmp_path), "--run-name", "t"]
    code, out, err = run([*argv, "--backend", "reference"], capsys)
    assert code == 0, err
    d = tmp_path / "t"
    assert {"table.md", "ticket.json", "tickets.png"} <= {p.name for p in d.iterdir()}
    res = json.loads((d / "ticket.json").read_text())
    assert [h["epoch"] for h in res["lbi"]] == [1, 2, 3]
    tk = res["tickets"]
    assert [t["epoch"] for t in tk] == [1, 3]
    for t in tk:
        assert t["sparsity"] == pytest.approx(1 - t["density"]) and len(t["random_accuracy"]) == 2
        assert t["random_mean"] == pytest.approx(sum(t["random_accuracy"]) / 2)
        assert list(t["layers"]) == ["1.weight"] and t["layers"]["1.weight"] == pytest.approx(t["density"])
        # a ticket's density is the density of Γ's support at that epoch of the DessiLBI run
        assert t["density"] == pytest.approx(res["lbi"][t["epoch"] - 1]["density"])
    assert tk[0]["density"] <= tk[1]["density"]  # the support grows
    assert 0 <= res["dense_accuracy"] <= 1 and "random mask acc" in (d / "table.md").read_text()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["ticket", "--ticket-epochs", "3,2"], "--ticket-epochs"),
        (["ticket", "--ticket-epochs", "2", "--lbi-epochs", "1"], "--lbi-epochs"),
        (["ticket", "--ticket-epochs", "2", "--rewind", "5"], "--rewind"),
        (["train", "--optimizer", "dessilbi", "--regularizer", "nuclear", "--epochs", "1"], "regularizer"),
    ],
)
def test_ticket_and_dessilbi_bad_input(tmp_path, capsys, argv, needle):
    code, out, err = run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_compare_lambda_sweep_selects_sparsest_at_matched_accuracy(tmp_path, capsys):
    argv = [
        "compare",
        "--optimizers",
        "ramda,proxsgd",
        "--model",
        "logreg",
        "--epochs",
        "3",
        "--milestones",
        "1",
    ]
    argv += [
        "--subset",
        "300",
        "--lams",
        "ramda=1e-4,3e-3,1",
        "--set",
        "ramda.momentum=0",
        "--out",
        str(tmp_path),
    ]
    code, out, err = run([*argv, "--run-name", "sw", "--no-progress", "--no-plot"], capsys)
    assert code == 0, err
    d = tmp_path / "sw"
    runs = {
        lam: json.loads((d / "ramda" / f"lam{lam}" / "summary.json").read_text())
        for lam in ("0.0001", "0.003", "1")
    }
    s = json.loads((d / "summary.json").read_text())
    target = min(max(r["val_acc"] for r in runs.values()), s["proxsgd"]["val_acc"]) - 0.01
    ok = [r for r in runs.values() if r["val_acc"] >= target]
    best = max(ok, key=lambda r: r["group_sparsity"])
    assert s["ramda"]["hparams"]["lam"] == best["hparams"]["lam"] and s["ramda"]["val_acc"] >= target
    assert runs["1"]["group_sparsity"] == 1.0  # λ = 1 removes every pixel: too sparse to be chosen
    assert s["ramda"]["hparams"]["lam"] != 1.0
    table = (d / "table.md").read_text()
    assert "λ sweep" in table and f"{100 * target:.2f} %" in table


# ------------------------------------------------------------------------- atomic files, resume


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from structsparse.cli.common import atomic_open, save_torch, write_text

    path = tmp_path / "model.pt"
    save_torch({"w": torch.arange(3.0)}, path)
    with pytest.raises(RuntimeError), atomic_open(path, "wb") as f:
        f.write(b"truncated")
        raise RuntimeError("killed while writing")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3.0))
    write_text(tmp_path / "s.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "s.json"]  # no temporary left


_TIMING = {"run_dir", "mean_step_ms", "total_time_s"}


def _same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same results: summary (but timings), log rows, weights bitwise."""
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if k not in _TIMING} == {
        k: v for k, v in sb.items() if k not in _TIMING
    }

    def rows(d):
        return [
            {k: v for k, v in json.loads(ln).items() if k not in ("epoch_time", "step_time_ms")}
            for ln in (d / "log.jsonl").read_text().splitlines()
        ]

    assert rows(a) == rows(b)
    ma, mb = (torch.load(d / "model.pt", weights_only=True) for d in (a, b))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize("optimizer", ["ramda", "dessilbi", "sgd"])
def test_resume_is_bit_exact(tmp_path, capsys, optimizer):
    """6 epochs straight versus 3 epochs, an interruption, and ``--resume`` to 6: the same summary,
    log and weights, bit for bit (model, optimizer, scheduler and every generator restored)."""
    from structsparse.cli.common import _threads
    from structsparse.cli.train import run_train

    cfg = dict(optimizer=optimizer, epochs=6, subset=300, checkpoint_every=2, save_model=True, plot=False)

    def interrupt(msg):
        if msg.startswith("epoch   3/6"):
            raise KeyboardInterrupt

    with _threads(None, "digits"):  # as the command: one thread (the resume below runs through it)
        run_train({**cfg, "progress": False}, out_dir=tmp_path / "a", echo=lambda m: None)
        with pytest.raises(KeyboardInterrupt):
            run_train({**cfg, "progress": False}, out_dir=tmp_path / "b", echo=interrupt)
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 3
    code, out, err = run(["train", "--resume", str(tmp_path / "b"), "--no-progress"], capsys)
    assert code == 0, err
    assert (
        "resumed from the checkpoint of epoch 2" in out and "epoch   3/6" in out and "epoch   2/6" not in out
    )
    _same_run(tmp_path / "a", tmp_path / "b")
    # a finished run resumes to its report, unchanged
    code, out, err = run(["train", "--resume", str(tmp_path / "b"), "-q"], capsys)
    assert code == 0 and "| validation accuracy |" in out
    _same_run(tmp_path / "a", tmp_path / "b")


def test_resume_bad_input(tmp_path, capsys):
    code, out, err = run(["train", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "no config.json" in err
    argv = ["train", "--model", "logreg", "--epochs", "1", "--subset", "64", "--no-plot", "-q"]
    code, out, err = run([*argv, "--out", str(tmp_path), "--run-name", "r"], capsys)
    assert code == 0, err
    code, out, err = run(["train", "--resume", str(tmp_path / "r")], capsys)
    assert code == 2 and "no checkpoint" in err
    code, out, err = run(["train", "--resume", str(tmp_path / "r"), "--lr", "0.5"], capsys)
    assert code == 2 and "--lr" in err and len(err.strip().splitlines()) == 1


def test_compare_resume_skips_finished_runs(tmp_path, capsys):
    argv = [
        "compare",
        "--optimizers",
        "proxsgd,rmda",
        "--model",
        "logreg",
        "--epochs",
        "2",
        "--subset",
        "100",
    ]
    argv += [
        "--checkpoint-every",
        "1",
        "--no-plot",
        "--no-progress",
        "--out",
        str(tmp_path),
        "--run-name",
        "c",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    c = tmp_path / "c"
    table = (c / "table.md").read_text()
    shutil.rmtree(c / "rmda")  # as if interrupted before rmda started
    before = (c / "proxsgd" / "model.pt").exists(), (c / "proxsgd" / "checkpoint.pt").stat().st_mtime_ns
    code, out, err = run(["compare", "--resume", str(c), "--no-progress"], capsys)
    assert code == 0, err
    assert "== proxsgd" in out and "== rmda" in out
    assert (c / "proxsgd" / "checkpoint.pt").stat().st_mtime_ns == before[1]  # finished: not retrained

    def strip(t):  # the table without its timing columns
        return [ln.rsplit("|", 3)[0] for ln in t.splitlines()]

    assert strip((c / "table.md").read_text()) == strip(table)
