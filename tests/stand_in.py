"""A stand-in for the driver in pipeline tests: nothing compiles, every image of a group is
"restored" at once by a function of the group's inputs and per-image settings."""

from collections.abc import Callable

import jax
import numpy as np

from upzeroir_jax import driver
from upzeroir_jax import restore as restore_lib


def patch_driver(mp, restored: Callable, compiled: list | None = None) -> None:
  """Makes `driver.compile_programs` record the static config it is given (in `compiled`) and
  `driver.restore_queue` yield `restored(ys [G, H, W, 3], keys [G, 2], weights)` (images `[G]`,
  info with a leading `[G]` axis) image by image, weights stacked over the group."""

  def compile_programs(models, config, shape, *, slots, context=None, lowered=None, **kw):
    del models, shape, slots, context, kw
    if lowered is not None:
      lowered(None)
    if compiled is not None:
      compiled.append(config)

  def restore_queue(models, items, config, *, slots, context=None, **kw):
    del models, config, slots, context, kw
    items = list(items)
    weights = jax.tree.map(lambda *v: np.stack([np.asarray(x) for x in v]),
                           *[it.weights for it in items])
    images, info = restored(np.stack([it.y for it in items]),
                            np.stack([it.key for it in items]), weights)
    for i in range(len(items)):
      yield driver.Result(i, restore_lib.RestoreResult(
          images[i], {k: np.asarray(v)[i] for k, v in info.items()}))

  mp.setattr(driver, "compile_programs", compile_programs)
  mp.setattr(driver, "restore_queue", restore_queue)
