"""Random weights for the convolutional quality models (tests, benchmarks), drawn fast.

torchvision's initialisation of its conv nets: kernels He-normal over fan-out, BatchNorm scale
and running variance 1, biases and running means 0. The values are drawn with numpy, seeded from
the JAX key's data (deterministic for a key): JAX's counter-based generator takes minutes on a
CPU for the 23.5 M weights of a ResNet-50, numpy about a second. Not for use under `jit`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

_ONES = ("scale", "var")


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A numpy generator seeded from the data of a JAX PRNG key."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def conv_net(key: jax.Array, init: Callable, example: jax.ShapeDtypeStruct) -> dict:
  """Variables of a Flax conv net, shaped by `init(key, example)` (traced abstractly only).

  Args:
    key: PRNG key.
    init: the module's `init`.
    example: the input shape and dtype to trace `init` with.

  Returns:
    The variables pytree of `init`, filled as torchvision initialises conv nets.
  """
  shapes = jax.eval_shape(init, key, example)
  rng = numpy_rng(key)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_out = int(np.prod(leaf.shape[:-2])) * leaf.shape[-1]
      return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_out))
    return jnp.ones(leaf.shape) if name in _ONES else jnp.zeros(leaf.shape)

  return jax.tree_util.tree_map_with_path(fill, shapes)
