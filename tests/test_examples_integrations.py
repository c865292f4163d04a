"""examples/lightning_digits.py and examples/hf_trainer_digits.py: RAMDA with torch's
CosineAnnealingLR inside a Lightning module and a Hugging Face Trainer ends with exact zero groups
(``sparsify()`` in a callback at the end of training) and a well-trained model. Needs the
``examples`` extra (``pip install -e .[examples]``: lightning, transformers, accelerate)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def restore_threads():
    """The examples run on one intra-op thread (tiny tensors); the other tests keep theirs."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lightning_module_ends_with_exact_zeros():
    pytest.importorskip("lightning")
    r = _load("lightning_digits").run(epochs=10)
    # measured: 94.71 % validation accuracy, 31.64 % zero groups (81 of 256 input features)
    assert r["val_acc"] > 0.92
    assert r["zero_groups"] > 40
    assert r["optimizer_group_sparsity"] == pytest.approx(r["zero_groups"] / 256)
    assert r["group_sparsity"] == r["optimizer_group_sparsity"]


def test_hf_trainer_ends_with_exact_zeros(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing read from or written to a cache
    monkeypatch.chdir(tmp_path)  # the Trainer writes under its temporary output_dir only
    r = _load("hf_trainer_digits").run(epochs=10)
    # measured: 95.54 % validation accuracy, 31.64 % zero groups (81 of 256 input features)
    assert r["val_acc"] > 0.92
    assert r["zero_groups"] > 40
    assert r["group_sparsity"] == pytest.approx(r["zero_groups"] / 256)
    assert r["last_lr"] == pytest.approx(0.0, abs=1e-12)  # the scheduler ran every iteration
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["hf"]
