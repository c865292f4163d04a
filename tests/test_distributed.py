"""Sharded training (FSDP2 DTensor parameters, DDP) against the single-process reference.

Two process launches (gloo on 127.0.0.1, CPU; workers in tests/dist_worker.py):

- 2 ranks: every optimizer x grouping/regularizer in float64 (≤ 1e-12), DDP (replicas bit-identical,
  ≤ 1e-12 from the single-process run), bad configurations, DCP checkpoint saved and resumed
  bit-exactly;
- 3 ranks (uneven shards and an empty one): every optimizer x grouping in float32 (≤ 1e-6), and
  the 2-rank checkpoint loaded on 3 ranks.

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
            ("ddp", "ddp", {}),
            ("checkpoint", "checkpoint", {"ckpt": ckpt, "phase": "save"}),
        ],
    )
    three = _run(
        3,
        str(base / "w3"),
        [
            ("trajectory", "trajectory", {"dtypes": ("float32",)}),
            ("checkpoint", "checkpoint", {"ckpt": ckpt, "phase": "load"}),
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


def test_ddp_replicas_identical_and_match_single_process(runs):
    _check(runs, 2, "ddp")


def test_checkpoint_resumes_bit_exactly(runs):
    _check(runs, 2, "checkpoint")


def test_checkpoint_loads_with_another_rank_count(runs):
    _check(runs, 3, "checkpoint")
