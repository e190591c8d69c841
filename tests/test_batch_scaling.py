"""A batch of B images costs B single images, not more (tiny SD, no compilation needed).

`restore` runs a batch as a `vmap` over per-image states; a batching rule that multiplies work
(a `lax.cond` on a batched predicate runs both branches, a per-image parameter that makes XLA
loop or expand) shows in XLA's cost analysis of the lowered program or in its control flow.
Both are read from the program `restore` compiles, lowered once per batch size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import torch_reference as tr
from upzeroir_jax import config as config_lib
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.models import sd

FLOPS_SLACK = 1.05  # batch 4 may cost at most 4.2x batch 1.


def _count(jaxpr, name: str) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == name
    for sub in jax.core.jaxprs_in_params(eqn.params):
      n += _count(sub, name)
  return n


@pytest.fixture(scope="module")
def lowered():
  """The traced and lowered restore of one image and of a batch of 4 (fixed schedule)."""
  models = restore_lib.Models(
    backbone=sd.tiny(jax.random.key(0)),
    vgg_params=jax.tree.map(jnp.asarray, tr.VGGRelu22().random_init().flax_params()))
  config = config_lib.preset("lowlight", steps=2, dqr=False, pcdm_features=(8, 16, 16),
                             disc_features=(8, 16, 16))
  y = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 64, 64, 3)), jnp.float32)

  def run(m, yy, key):
    return restore_lib.restore(m, yy, key, config).image

  out = {}
  for batch, yy in ((1, y[0]), (4, y)):
    traced = jax.jit(run).trace(models, yy, jax.random.key(1))
    out[batch] = (traced.jaxpr, traced.lower().cost_analysis()["flops"])
  return out


@pytest.mark.slow
def test_batch_of_four_costs_at_most_four_images_in_flops(lowered):
  one, four = lowered[1][1], lowered[4][1]
  assert one > 0
  assert four <= 4 * FLOPS_SLACK * one, four / one


@pytest.mark.slow
def test_batched_stage_switch_stays_a_branch(lowered):
  """The stage `lax.cond` (stage 1 skips the guidance) is still a cond in the batch: the
  timestep stays unbatched, so it is not turned into a select that runs both branches."""
  single, batch = (_count(lowered[b][0].jaxpr, "cond") for b in (1, 4))
  assert single >= 1
  assert batch == single
