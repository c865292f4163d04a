"""Process launch and data-parallel training helpers (``examples/fsdp_train.py``, ``structsparse
train`` under torchrun): the process group from torchrun's environment, FSDP2 sharding of a model,
per-rank batch slices, buffer broadcast and a clean process exit."""

from __future__ import annotations

from typing import Any, NoReturn

import torch
import torch.distributed as dist


def init_from_env(backend: str = "gloo") -> tuple[int, int]:
    """``(rank, world size)``: of the default process group when one is initialized; else, when
    launched by ``torchrun`` with ``WORLD_SIZE > 1``, initialize it from torchrun's environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) with ``backend``; else ``(0, 1)``."""
    import os

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def exit_process() -> NoReturn:
    """End a data-parallel process that finished without error: a barrier (every rank done before
    gloo is torn down), ``destroy_process_group``, then ``os._exit(0)`` without finalizing the
    interpreter.

    The gloo process group outlives ``destroy_process_group`` while FSDP2 modules and DTensors
    still refer to it, and its worker thread may drop the last reference to a finished collective
    (the barrier's work, which holds FSDP2's all-gathers) only after the main thread has reached
    ``Py_Finalize``: the tensors' decref then takes the GIL from a finalizing interpreter, the
    thread is cancelled and the process aborts ("terminate called without an active exception",
    in a small fraction of runs). Files must be closed by the caller; stdout and stderr are
    flushed here."""
    import os
    import sys

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def shard_model(model: torch.nn.Module, device_type: str = "cpu") -> Any:
    """FSDP2 data parallelism over the default process group: ``fully_shard`` on every submodule
    that owns parameters directly (a Linear, a Conv2d, a BatchNorm: one all-gather per layer), then
    on the root. Every weight becomes a DTensor sharded on dim 0 (the layout this package steps
    exactly). Returns the 1-D device mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for m in model.modules():
        if m is not model and any(True for _ in m.parameters(recurse=False)):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous share ``[r·n//w, (r+1)·n//w)`` of ``n`` items (a global batch, a
    validation set); the shares of all ranks partition ``range(n)`` and differ by at most 1."""
    return slice(rank * n // world, (rank + 1) * n // world)


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Copy the buffers (BatchNorm running statistics: computed on each rank's slice of the batch)
    from rank ``src`` to every rank, as DDP does, so every rank holds the same model."""
    for b in model.buffers():
        dist.broadcast(b.data, src=src)
