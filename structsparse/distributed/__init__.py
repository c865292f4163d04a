"""Sharded training: exact *global* group reductions under FSDP2 (and plain DDP).

A split grouping (dim 0 among its norm dims) all-reduces per-group partial sums inside
:func:`tensor_scope` (:func:`group_sum`, :func:`group_max`, :func:`reduce_groups`, :func:`batched`);
aligned groupings communicate nothing; the fused solvers redistribute split buckets to whole-group
owners (:func:`owned_groups`, :func:`owned_bucket`). Never an all-gather of parameters;
:func:`comm_stats` counts calls and bytes. The layout, the communication per step, the backends'
sharded paths and the measurements: docs/distributed.md.

The package has three parts: :mod:`.hook` (the reductions and the per-step
:class:`~.hook.ReductionContext` the optimizer passes to :func:`sharded_bucket`), :mod:`.sharding`
(local views of a bucket, redistribution to whole-group owners, metrics of sharded tensors) and
:mod:`.launch` (process group, FSDP2 sharding of a model, clean exit); :mod:`.comm` issues and
counts the collectives. Every name is exported here.
"""

from .comm import _all_reduce, _all_to_all, _stats, all_reduce_sums, comm_stats, reset_comm_stats  # noqa: F401 (used by lbi, tests)
from .hook import (
    ReductionContext,
    ShardInfo,
    active,
    batched,
    global_shape,
    group_max,
    group_sum,
    reduce_groups,
    shard_info,
    tensor_scope,
    tensor_sum,
)
from .launch import broadcast_buffers, exit_process, init_from_env, rank_slice, shard_model
from .sharding import (  # noqa: F401 (the private names: used by lbi, structure, tests)
    _buffers,
    _chunk_rows,
    _group_of,
    _row_offset,
    _splits,
    all_finite,
    check_param,
    count_zeros,
    is_sharded,
    local,
    owned_bucket,
    owned_groups,
    release_buffers,
    sharded_bucket,
    split_group,
    splits_groups,
    zero_groups,
)

__all__ = [
    "ShardInfo",
    "ReductionContext",
    "active",
    "all_finite",
    "local",
    "splits_groups",
    "exit_process",
    "is_sharded",
    "check_param",
    "sharded_bucket",
    "tensor_scope",
    "shard_info",
    "all_reduce_sums",
    "split_group",
    "owned_groups",
    "owned_bucket",
    "release_buffers",
    "global_shape",
    "group_sum",
    "group_max",
    "tensor_sum",
    "reduce_groups",
    "batched",
    "comm_stats",
    "zero_groups",
    "count_zeros",
    "reset_comm_stats",
    "init_from_env",
    "shard_model",
    "rank_slice",
    "broadcast_buffers",
]
