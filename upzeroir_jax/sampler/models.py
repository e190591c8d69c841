"""The networks a restoration uses, as one pytree passed to every sampler function."""

from typing import Any

import flax.struct


@flax.struct.dataclass
class Models:
  """The networks of one restoration (docs/method.md §3–§7).

  Attributes:
    backbone: a `Backbone` (models/backbone.py): the latent diffusion prior (SD, or the
      analytic prior of the tests).
    vgg_params: VGG16 params for the perceptual losses (models/vgg.py).
    scorer: the DQR quality model (`sampler.dqr.Scorer`, or any `score(img) -> [B]`); needed
      when `config.dqr` is True.
  """

  backbone: Any
  vgg_params: Any
  scorer: Any = None
