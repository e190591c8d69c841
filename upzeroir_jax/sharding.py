"""Restoring a batch sharded over devices: a 1-D mesh, replication, and per-process rows.

The batch axis is split over a 1-D device mesh (`NamedSharding`, axis "batch"), and each
device restores its rows (vmapped `restore.restore`) under `jax.shard_map`, so every device
runs its own sampling loop. Multi-host runs (`jax.distributed`) use the same code: every
process takes part in every batch and reads and writes only the rows of its own devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from upzeroir_jax import config as config_lib
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.sampler import state as state_lib

BATCH_AXIS = "batch"


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes), axis "batch"."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (BATCH_AXIS,))


def rows(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch whose axis 0 is split over the mesh."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


@functools.partial(jax.jit, static_argnames=("config", "mesh", "on_step"))
def restore_sharded(models: restore_lib.Models, ys: jax.Array, keys: jax.Array,
                    weights: state_lib.LossWeights, ctx: Any,
                    config: config_lib.RestoreConfig, mesh: Mesh,
                    on_step: Callable[[Any, Any], None] | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`restore` on a batch `[G, H, W, 3]` (keys `[G, 2]`) whose axis 0 is split over `mesh`.

  `weights`: each image's per-task settings (`sampler.state.LossWeights`, leading axis G,
  split like the batch), so images of different task presets share the batch
  (`restore.restore_weighted`); `config` gives the static rest.

  `on_step`: optional host callback after each sampling step (`restore.restore`'s).
  Returns the images `[G, H, W, 3]` and the info dict (leading axis G), both batch-sharded.
  """
  batch_rows = PartitionSpec(BATCH_AXIS)

  def local(models, ys, keys, weights, ctx):
    result = restore_lib.restore_weighted(models, ys, keys, weights, config, context=ctx,
                                          on_step=on_step)
    return result.image, result.info

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(PartitionSpec(), batch_rows, batch_rows, batch_rows,
                                 PartitionSpec()),
                       out_specs=batch_rows, check_vma=False)(models, ys, keys, weights, ctx)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree on every device of the mesh (host copies first on multi-host runs)."""
  if tree is None:
    return None
  if jax.process_count() > 1:
    tree = jax.tree.map(np.asarray, tree)
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def local_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> list[int]:
  """The global row indices of a batch of `shape` that this process's devices hold."""
  out = set()
  for index in sharding.addressable_devices_indices_map(shape).values():
    out.update(range(*index[0].indices(shape[0])))
  return sorted(out)


def from_rows(shape: tuple[int, ...], sharding: NamedSharding,
              values: dict[int, np.ndarray]) -> jax.Array:
  """A batch-sharded array of `shape` from this process's rows (`values[row]`, `shape[1:]`)."""
  def gather(index: Any) -> np.ndarray:
    return np.stack([values[r] for r in range(*index[0].indices(shape[0]))])

  return jax.make_array_from_callback(shape, sharding, gather)


def rows_of(array: jax.Array) -> dict[int, np.ndarray]:
  """This process's rows of a batch-sharded array, by global row index."""
  out = {}
  for shard in array.addressable_shards:
    start = shard.index[0].start or 0
    data = np.asarray(shard.data)
    for i in range(data.shape[0]):
      out[start + i] = data[i]
  return out


def broadcast_from_first(values: np.ndarray) -> np.ndarray:
  """`values` as process 0 has them, on every process (itself on single-process runs)."""
  if jax.process_count() > 1 and values.size:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(values))
  return values
