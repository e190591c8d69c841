"""One guided reverse step of the UP-ZeroIR sampler (docs/method.md §3–§6), `state -> state`.

For the step's timestep t (stage s(t) of the docs/method.md §3 table):

1. model output at z_t (classifier-free guidance when a context is given) -> DDIM:
   ẑ0 from z_t (as DPS), thresholded per `config.threshold` (LD-RPS: clamped per image to ±s,
   s = clip(quantile(|ẑ0|, 0.995), 1, 100), no division), then
   z_{t−1} = sqrt(ᾱ_{t−1})·ẑ0 + sqrt(1−ᾱ_{t−1})·ε with ε as predicted;
2. x̂0 = D(ẑ0) of the thresholded ẑ0, decoded once; its VJP later carries the guidance gradient to ẑ0;
3. the PCDM discriminator takes one Adam step on (y real, ŷ fake), then PCDM one Adam step on
   L_PCDM (Eq. 12) with x̂0, y held fixed — the discriminator first, as LD-RPS's GANLoss;
4. stages 2–3 (t < stage2_t), in one `lax.cond`: ŷ = PCDM(x̂0) with the updated PCDM, the
   second discriminator takes one Adam step on (x̂0 − ŷ real, x̂0 − y fake), and the gradient of
   L = D(ŷ, y) + [t < stage3_t]·Q(x̂0) flows to ẑ0 through PCDM (its GGD conditioning
   included), the encoder E(ŷ) of DegLoss, and the decoder VJP;
5. z_{t−1} ← z_{t−1} − s·∇ẑ0 L (Eq. 9–10);
6. the divergence guard (`guard`, docs/method.md §3 [ours]): a step with a non-finite state or
   a guidance norm grown by `guard_ratio` is rejected and re-initiated from the last finite ẑ0,
   at most `guard_recoveries` times; the next one fails the image.

The per-task settings are read from the state's traced `LossWeights` (loss weights, s, the
discriminators' learning rates, the exposure patch, the stage-3 boundary), so one compiled step
serves every task preset and a batch may mix them; the stage-2 boundary (700 for every task)
and the thresholding mode stay static.

Choices where docs/method.md is silent [ours]:
- y meets x̂0 and ŷ in pixel space on the model grid (it is never resized inside the sampler);
  E(y) and its GGD fit, the GGD statistics of y and its VGG features are computed once at init
  (the state's `obs`).
- The second discriminator (Adv of Eq. 14) trains only while the guidance runs (t < stage2_t),
  as LD-RPS calls it only there; its generator loss is evaluated on x̂0 − y with "real" labels,
  and its gradient reaches x̂0 only through that input (its "real" side x̂0 − ŷ is detached).
- Perceptual damping (docs/method.md §4): applied to the weighted PCDM perceptual term
  w_per·Perc(ŷ, x̂0), from t < stage2_t, as LD-RPS's `dynamic_clip`.
- With `deg_loss="l1"` (docs/method.md §8) the λ_deg term is the pixel L1 between ŷ and y; no E(ŷ).
- In stage 1 the trace's distance terms are 0 (they are not computed).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from upzeroir_jax import config as config_lib
from upzeroir_jax import losses
from upzeroir_jax.models import pcdm
from upzeroir_jax.models import schedule as schedule_lib
from upzeroir_jax.sampler import models as models_lib
from upzeroir_jax.sampler import state as state_lib


def _bce_disc(disc_apply, params, real: jax.Array, fake: jax.Array) -> jax.Array:
  """Discriminator loss BCE(real → 1) + BCE(fake → 0), both batches in one call."""
  logits = disc_apply({"params": params}, jnp.concatenate([real, fake], axis=0))
  l_real, l_fake = jnp.split(logits, 2, axis=0)
  return losses.bce_with_logits(l_real, True) + losses.bce_with_logits(l_fake, False)


def _adam(tx: optax.GradientTransformation, grads, opt, params):
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), opt


def update_pcdm(st: state_lib.SamplerState, models: models_lib.Models,
                config: config_lib.RestoreConfig, x0: jax.Array, theta: jax.Array, t: jax.Array
                ) -> tuple[state_lib.SamplerState, dict[str, jax.Array]]:
  """One discriminator and one PCDM Adam step on fixed x̂0 and the observed y (docs/method.md
  §4, Eq. 12).

  Args:
    st: the state (its pcdm/disc params and Adam states are updated; y is `st.obs.y`).
    models: the networks (vgg_params).
    config: settings (static).
    x0: `[1, H, W, 3]` decoded estimate (treated as constant).
    theta: `[1, 12]` PCDM conditioning of (x̂0, y) (constant).
    t: timestep (selects the perceptual damping).

  Returns:
    The state with new PCDM / discriminator params and Adam states, and the loss terms
    (`pcdm_loss`, `pcdm_mse`, `pcdm_per`, `pcdm_adv`, `disc_loss`) before the update.
  """
  x0, theta = jax.lax.stop_gradient(x0), jax.lax.stop_gradient(theta)
  w, y = st.weights, st.obs.y
  net, disc = state_lib.degradation_net(config), state_lib.discriminator(config)
  pcdm_tx, disc_tx, _ = state_lib.optimizers(config, w)
  y_hat, net_vjp = jax.vjp(lambda p: net.apply({"params": p}, x0, theta), st.pcdm)
  d_loss, d_grads = jax.value_and_grad(
    lambda p: _bce_disc(disc.apply, p, y, jax.lax.stop_gradient(y_hat)))(st.disc)
  d_params, d_opt = _adam(disc_tx, d_grads, st.disc_opt, st.disc)

  def generator_loss(yh):
    l_mse = w.pcdm_w_mse * losses.mse(yh, x0)
    l_per = w.pcdm_w_per * losses.perceptual(models.vgg_params, yh, x0)
    l_per = jnp.where(t < config.stage2_t,
                      losses.damp(l_per, config.perc_damp_threshold, config.perc_damp_factor),
                      l_per)
    l_adv = w.pcdm_w_adv * losses.bce_with_logits(disc.apply({"params": d_params}, yh), True)
    return l_mse + l_per + l_adv, (l_mse, l_per, l_adv)

  (loss, (l_mse, l_per, l_adv)), g_yh = jax.value_and_grad(generator_loss, has_aux=True)(y_hat)
  (g_params,) = net_vjp(g_yh)
  params, opt = _adam(pcdm_tx, g_params, st.pcdm_opt, st.pcdm)
  st = st.replace(pcdm=params, pcdm_opt=opt, disc=d_params, disc_opt=d_opt)
  return st, {"pcdm_loss": loss, "pcdm_mse": l_mse, "pcdm_per": l_per, "pcdm_adv": l_adv,
              "disc_loss": d_loss}


def _guidance(st: state_lib.SamplerState, models: models_lib.Models,
              config: config_lib.RestoreConfig, x0: jax.Array, theta: jax.Array, theta_vjp,
              decode_vjp, t: jax.Array
              ) -> tuple[state_lib.SamplerState, jax.Array, dict[str, jax.Array]]:
  """The Adv discriminator step and ∇ẑ0 of D(PCDM(x̂0), y) + [t < stage3_t]·Q(x̂0) (§5–§6):
  (state with the new discriminator, gradient, loss terms)."""
  w, obs = st.weights, st.obs
  y = obs.y
  net, disc = state_lib.degradation_net(config), state_lib.discriminator(config)
  _, _, disc2_tx = state_lib.optimizers(config, w)
  y_hat, net_vjp = jax.vjp(lambda x, th: net.apply({"params": st.pcdm}, x, th), x0, theta)
  d2_grads = jax.grad(lambda p: _bce_disc(disc.apply, p, jax.lax.stop_gradient(x0 - y_hat),
                                          jax.lax.stop_gradient(x0 - y)))(st.disc2)
  d2_params, d2_opt = _adam(disc2_tx, d2_grads, st.disc2_opt, st.disc2)

  def objective(x, yh):
    if config.deg_loss == "kl":
      deg = losses.deg_loss(models.backbone.encode(yh).astype(jnp.float32), obs.zy_alpha,
                            obs.zy_beta)
    else:
      deg = losses.l1(yh, y)
    terms = {
      "deg": w.lambda_deg * deg,
      "mse": w.lambda_mse * losses.mse(yh, y),
      "per": w.lambda_per * losses.perceptual_to(models.vgg_params, yh, obs.y_feats),
      "adv": w.lambda_adv * losses.bce_with_logits(
        disc.apply({"params": d2_params}, x - y), True),
    }
    terms["distance"] = terms["deg"] + terms["mse"] + terms["per"] + terms["adv"]
    q = losses.quality(x, w.w_exp, w.w_col, w.exp_patch, config.exp_target)
    terms["quality"] = jnp.where(t < w.stage3_t, q, 0.0)
    return terms["distance"] + terms["quality"], terms

  (_, terms), (g_x, g_yh) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(x0, y_hat)
  g_x_net, g_theta = net_vjp(g_yh)
  (g_x_theta,) = theta_vjp(g_theta)
  (g_z0,) = decode_vjp(g_x + g_x_net + g_x_theta)
  return st.replace(disc2=d2_params, disc2_opt=d2_opt), g_z0, terms


def thresholded_schedule(sched: schedule_lib.DDIMSchedule, config: config_lib.RestoreConfig
                         ) -> schedule_lib.DDIMSchedule:
  """`sched` with the ẑ0 thresholding of `config.threshold` (docs/method.md §3): "clamp" clips
  ẑ0 to ±s (LD-RPS), "divide" also divides by s (stock diffusers), "off" leaves ẑ0 as predicted
  (the checkpoint's `clip_sample` still applies)."""
  if config.threshold == "off":
    return sched.replace(thresholding=False)
  return sched.replace(thresholding=True, dynamic_thresholding_ratio=config.threshold_ratio,
                       sample_max_value=config.threshold_max,
                       threshold_divide=config.threshold == "divide")


def step_at(st: state_lib.SamplerState, models: models_lib.Models,
            config: config_lib.RestoreConfig, t: jax.Array, context: Any = None
            ) -> state_lib.SamplerState:
  """`step` at an explicitly given timestep t (a scalar; unbatched under `vmap` it keeps the
  stage `lax.cond` a real branch)."""
  before = st
  backbone = models.backbone
  sched = thresholded_schedule(backbone.schedule, config)
  t = jnp.asarray(t, jnp.int32)
  prev_t = schedule_lib.prev_timestep(sched, t, config.steps)
  key, k_eta = jax.random.split(st.key)
  out = backbone.model_output(st.z, t, context, config.cfg_scale).astype(jnp.float32)
  z_prev, z0 = schedule_lib.step(sched, out, t, prev_t, st.z, eta=config.eta,
                                 key=k_eta if config.eta > 0 else None)
  x0, decode_vjp = jax.vjp(lambda z: backbone.decode(z).astype(jnp.float32), z0)
  theta, theta_vjp = jax.vjp(lambda x: pcdm.condition(x, st.obs.y_stats), x0)
  st, pcdm_terms = update_pcdm(st, models, config, x0, theta, t)

  def guided(st):
    return _guidance(st, models, config, x0, theta, theta_vjp, decode_vjp, t)

  def unguided(st):
    zero = jnp.zeros((), jnp.float32)
    terms = dict.fromkeys(("deg", "mse", "per", "adv", "distance", "quality"), zero)
    return st, jnp.zeros_like(z0), terms

  st, g_z0, terms = jax.lax.cond(t < config.stage2_t, guided, unguided, st)
  z_next = z_prev - st.weights.guidance_scale * g_z0
  stage = 1 + (t < config.stage2_t).astype(jnp.int32) + (t < st.weights.stage3_t).astype(jnp.int32)
  g_norm = jnp.sqrt(jnp.sum(jnp.square(g_z0)))
  row = {"t": t, "stage": stage, "grad_norm": g_norm, **pcdm_terms, **terms}
  st = st.replace(z=z_next, z0=z0, x0=x0,
                  g_min=jnp.where(t < config.stage2_t, jnp.minimum(st.g_min, g_norm), st.g_min))
  st, row["guard"] = guard(before, st, config, g_norm, t,
                           schedule_lib.alpha_at(sched, prev_t), jax.random.fold_in(k_eta, 1))
  trace = {k: v.at[st.n].set(jnp.asarray(row[k], v.dtype)) for k, v in st.trace.items()}
  return st.replace(i=st.i + 1, n=st.n + 1, key=key, trace=trace)


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def guard(before: state_lib.SamplerState, after: state_lib.SamplerState,
          config: config_lib.RestoreConfig, g_norm: jax.Array, t: jax.Array,
          alpha_prev: jax.Array, key: jax.Array) -> tuple[state_lib.SamplerState, jax.Array]:
  """The divergence guard of one step (docs/method.md §3, [ours]): `(state, trace code)`.

  The step from `before` to `after` (at timestep t, ‖∇ẑ0 L‖ = `g_norm`) has diverged when
  z_{t−1}, ẑ0, x̂0, the networks or the gradient hold a non-finite value, or when
  `g_norm > config.guard_ratio · before.g_min` (the smallest norm of the earlier guided steps).
  A diverged step is rejected and recovered: the networks, ẑ0 and x̂0 stay those of `before`
  (the last finite ones) and the last finite ẑ0 is re-initiated at the next timestep,
  z_{t−1} = sqrt(ᾱ_{t−1})·ẑ0 + sqrt(1 − ᾱ_{t−1})·ε, ε ~ N(0, I) from `key` (Eq. 17 with
  γ = 1). After `config.guard_recoveries` recoveries the next diverged step fails the image:
  `failure` names the rule, `failure_t` the timestep, and every later step leaves the state as
  it was (trace code 2). Codes: 0 fine, 1 recovered, 2 failed (or frozen after failing).
  """
  frozen = before.failure != 0
  finite = _all_finite((after.z, after.z0, after.x0, after.pcdm, after.disc, after.disc2, g_norm))
  blowup = g_norm > config.guard_ratio * before.g_min
  bad = ~frozen & (~finite | blowup)
  fail = bad & (before.recoveries >= config.guard_recoveries)
  eps = jax.random.normal(key, before.z0.shape, jnp.float32)
  renoised = jnp.sqrt(alpha_prev) * before.z0 + jnp.sqrt(1.0 - alpha_prev) * eps
  kept = before.replace(
    z=jnp.where(fail | frozen, before.z, renoised.astype(before.z.dtype)),
    recoveries=before.recoveries + (bad & ~fail).astype(jnp.int32),
    failure=jnp.where(fail, jnp.where(finite, 2, 1), before.failure).astype(jnp.int32),
    failure_t=jnp.where(fail, t, before.failure_t).astype(jnp.int32))
  reject = bad | frozen
  st = jax.tree.map(lambda a, b: jnp.where(reject, a, b), kept, after)
  code = jnp.where(frozen | fail, 2, jnp.where(bad, 1, 0))
  return st, code


def step(st: state_lib.SamplerState, models: models_lib.Models,
         config: config_lib.RestoreConfig, timesteps: jax.Array, context: Any = None
         ) -> state_lib.SamplerState:
  """One guided reverse step at t = timesteps[st.i] (docs/method.md §3–§6; the module docstring
  lists the parts).

  Pure; jit-able with `config` static.

  Args:
    st: the state before the step (`state.init`; it holds the observation y).
    models: the networks (backbone, vgg_params).
    config: settings (static); `config.steps` sets the DDIM stride t − T // steps.
    timesteps: int32 `[N]`, descending (`schedule.timesteps`).
    context: text context built outside jit (None: one unconditional pass).

  Returns:
    The state after the step: z = z_{t−1}, i and n advanced, ẑ0 / x̂0 of this step, updated
    PCDM and discriminators, the trace row n written.
  """
  return step_at(st, models, config, timesteps[st.i], context)
