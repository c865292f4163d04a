"""Checkpoints of ``structsparse train`` (``--checkpoint-every N``) and resuming them (``--resume``).

A checkpoint holds everything the next epoch depends on: the model, the optimizer, the scheduler,
the random number generators (torch, CUDA, NumPy, Python and the data order's generator), the epoch
and the run's bookkeeping (per-epoch history, last pattern change, step times). A resumed run
therefore continues bit for bit as if it had not stopped.

- One process: ``checkpoint.pt`` in the run folder, written atomically.
- Under ``torchrun``: the model and optimizer shards through ``torch.distributed.checkpoint``
  (DCP) into ``checkpoint-eNNNN/``, each rank's generators and the bookkeeping beside them; rank 0
  then points ``checkpoint.json`` at that folder (atomically) and removes the previous one, so an
  interrupted save leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .common import CLIError, save_torch, write_text

SINGLE = "checkpoint.pt"
POINTER = "checkpoint.json"


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every generator a training epoch may draw from (plain data and tensors only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "python": random.getstate(),
        "loader": gen.get_state(),
    }


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    random.setstate(_tuples(state["python"]))
    gen.set_state(state["loader"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _scheduler_state(sched: Any) -> dict[str, Any]:
    sd = sched.state_dict()
    if isinstance(sd.get("milestones"), dict):  # MultiStepLR keeps a Counter: plain dict on disk
        sd = {**sd, "milestones": dict(sd["milestones"])}
    return sd


def _load_scheduler(sched: Any, sd: dict[str, Any]) -> None:
    if isinstance(sched, torch.optim.lr_scheduler.MultiStepLR):
        from collections import Counter

        sd = {**sd, "milestones": Counter(sd["milestones"])}
    sched.load_state_dict(sd)


def save(
    run_dir: Path,
    epoch: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    book: dict[str, Any],
    rank: int,
    world: int,
) -> None:
    """Write the checkpoint of the end of ``epoch`` (a collective when ``world > 1``)."""
    extra = {"epoch": epoch, "scheduler": _scheduler_state(sched), "rng": rng_state(gen), "book": book}
    if world == 1:
        save_torch({**extra, "model": model.state_dict(), "optimizer": opt.state_dict()}, run_dir / SINGLE)
        return
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = run_dir / f"checkpoint-e{epoch:04d}"
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder))
    save_torch(extra, folder / f"extra-rank{rank}.pt")
    dist.barrier()  # every rank's part is on disk before the pointer moves
    if rank == 0:
        old = _pointer(run_dir)
        write_text(run_dir / POINTER, json.dumps({"epoch": epoch, "folder": folder.name}) + "\n")
        if old is not None and old["folder"] != folder.name:
            shutil.rmtree(run_dir / old["folder"], ignore_errors=True)


def _pointer(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / POINTER
    return json.loads(p.read_text()) if p.exists() else None


def exists(run_dir: Path, world: int) -> bool:
    return (run_dir / (SINGLE if world == 1 else POINTER)).exists()


def load(
    run_dir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    rank: int,
    world: int,
) -> tuple[int, dict[str, Any]]:
    """Restore the checkpoint of ``run_dir`` into the freshly built run; ``(epoch, bookkeeping)``."""
    if world == 1:
        path = run_dir / SINGLE
        if not path.exists():
            what = "a data-parallel run's checkpoint" if (run_dir / POINTER).exists() else "no checkpoint"
            raise CLIError(
                f"--resume: {run_dir} holds {what} ({SINGLE} missing; run with --checkpoint-every)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        ptr = _pointer(run_dir)
        if ptr is None:
            raise CLIError(f"--resume: {run_dir} holds no data-parallel checkpoint ({POINTER} missing)")
        folder = run_dir / ptr["folder"]
        state = torch.load(folder / f"extra-rank{rank}.pt", map_location="cpu", weights_only=True)
        msd, osd = get_state_dict(model, opt)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=str(folder))
        set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    _load_scheduler(sched, state["scheduler"])
    set_rng_state(state["rng"], gen)
    return int(state["epoch"]), state["book"]
