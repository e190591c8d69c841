"""One guided step on the tiny random SD against the method written out plainly here
(docs/method.md §3–§6), for every task preset.

From the same state the test recomputes, without the sampler's code paths:

- ẑ0 from the UNet output, clamped per image to ±s, s = clip(quantile_0.995(|ẑ0|), 1, 100),
  with no division (LD-RPS), and z_{t−1} = sqrt(ᾱ_{t−1})·ẑ0 + sqrt(1−ᾱ_{t−1})·ε, ε as predicted;
- ∇ẑ0 of the whole objective D(PCDM(x̂0), y) + [t < stage3_t]·Q(x̂0) as one `jax.grad`
  (x̂0 = D(ẑ0), θ = [GGD(x̂0), GGD(y)] inside, the updated PCDM and Adv discriminator of the
  step), scaled by s·N/512²;
- the per-task settings from the table below (typed here, not read from the presets): the
  discriminators' first Adam step moves each parameter by about ±lr, the exposure patch sets
  Q, the stage-3 boundary decides whether Q is in the objective (t = 120 is stage 3 only for
  dehaze).

PCDM's FiLM layer starts at zero (a fresh PCDM ignores θ); the test sets it to small random
values first, so the θ path carries gradient. One more case scales Q up (w_exp = w_col = 5) so
that its gradient is large next to the distance's. Each case also checks that the step's pull
is far from the gradient with Q left out and from the one with θ cut, so the comparison can
tell those apart. All presets and timesteps share one compiled step (the settings are traced).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_runs

from upzeroir_jax import config, losses
from upzeroir_jax.models import pcdm
from upzeroir_jax.sampler import state as state_lib
from upzeroir_jax.sampler import step as step_lib

STEPS = 50  # DDIM stride 1000 // 50 = 20.
S = 4.0e5  # guidance scale; on the 64² grid s_eff = S·64²/512² = 6250.
S_EFF = S * 64 * 64 / 512**2
NARROW = {"pcdm_features": (8, 16, 16), "disc_features": (8, 16, 16), "dqr": False}
# docs/method.md §4–§6 [LD-RPS]: (disc lr, Adv disc lr, exposure patch, stage-3 boundary).
TASKS = {
  "lowlight": (1e-3, 4e-5, 32, 100),
  "dehaze": (2e-5, 2e-5, 64, 150),
  "denoise": (1e-4, 1e-3, 64, 100),
  "mixed": (1e-3, 4e-5, 32, 100),
  "lowlight_q": (1e-3, 4e-5, 32, 100),
}
# Weights of Eq. 12 / 14 / 15 (docs/method.md §4, §6): (λ_deg, λ_mse, λ_per, λ_adv, w_exp, w_col).
WEIGHTS = {
  "lowlight": (1e-5, 1.0, 2e-3, 5e-5, 1e-2, 1e-2),
  "dehaze": (1e-3, 1.0, 5e-3, 5e-5, 1e-2, 1e-3),
  "denoise": (1e-3, 1.0, 5e-4, 5e-5, 1e-5, 1e-5),
  "mixed": (1e-5, 1.0, 2e-3, 5e-5, 1e-2, 1e-2),
  "lowlight_q": (1e-5, 1.0, 2e-3, 5e-5, 5.0, 5.0),
}
PRESETS = {"lowlight_q": ("lowlight", {"w_exp": 5.0, "w_col": 5.0})}
CASES = [(task, t) for task in TASKS if task != "lowlight_q" for t in (40, 120)]
CASES.append(("lowlight_q", 40))
FILM_STD = 0.1  # std of the random FiLM kernel


def _input() -> jnp.ndarray:
  """A 64×64 image whose four quadrants differ in brightness (so L_exp(32) ≠ L_exp(64))."""
  yy, xx = np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 64), indexing="ij")
  base = 0.1 + 0.3 * (yy >= 0.5) + 0.15 * (xx >= 0.5)
  img = np.stack([base + 0.1 * xx, base + 0.05 * yy, base], axis=-1)
  return jnp.asarray(np.clip(img, 0, 1)[None], jnp.float32)


@functools.cache
def _compiled():
  """(models, static config, step, objective gradient, ε, decoder), each jitted once for every
  preset and timestep."""
  models = tiny_runs.models()
  bb = models.backbone
  static = state_lib.weightless(config.preset("lowlight", steps=STEPS, **NARROW))

  @jax.jit
  def step(y, key, weights, t):
    st = state_lib.init(models, static, y, key, weights=weights)

    def film(path, leaf):
      names = [getattr(p, "key", None) for p in path]
      if names == ["film", "kernel"]:
        return FILM_STD * jax.random.normal(jax.random.key(9), leaf.shape, leaf.dtype)
      return leaf

    st = st.replace(pcdm=jax.tree_util.tree_map_with_path(film, st.pcdm))
    return st, step_lib.step_at(st, models, static, t)

  @jax.jit
  def objective_grad(z0, y, st0, st1, w, patch, q_on, theta_on):
    return jax.grad(_objective)(z0, models, y, st0, st1, w, patch, q_on, theta_on)

  eps = jax.jit(lambda z, t: bb.model_output(z, t, None, 8.0))
  return models, static, step, objective_grad, eps, jax.jit(bb.decode)


def _exposure(x, patch):
  """L_exp with non-overlapping patch×patch windows (64×64 images; patch 32 or 64)."""
  m = x.mean(axis=-1).reshape(x.shape[0], 64 // patch, patch, 64 // patch, patch)
  return jnp.mean(jnp.square(m.mean(axis=(2, 4)) - 0.5))


def _objective(z0, models, y, st0, st1, w, patch, q_on, theta_on):
  """D(PCDM(x̂0), y) + q_on·Q(x̂0) as a function of ẑ0 (docs/method.md §4–§6, Eq. 9–15); with
  theta_on False, θ is held constant."""
  l_deg, l_mse, l_per, l_adv, w_exp, w_col = w
  bb = models.backbone
  x = bb.decode(z0)
  theta = jnp.concatenate([pcdm.image_stats(x), pcdm.image_stats(y)], axis=-1)
  theta = jnp.where(theta_on, theta, jax.lax.stop_gradient(theta))
  net = pcdm.make("pcdm", NARROW["pcdm_features"], 0.01)
  yh = net.apply({"params": st1.pcdm}, x, theta)
  disc = pcdm.Discriminator(features=NARROW["disc_features"], slope=0.01)
  distance = (l_deg * losses.deg_loss(bb.encode(yh), st0.obs.zy_alpha, st0.obs.zy_beta)
              + l_mse * jnp.mean(jnp.square(yh - y))
              + l_per * losses.perceptual(models.vgg_params, yh, y)
              + l_adv * jnp.mean(jax.nn.softplus(-disc.apply({"params": st1.disc2}, x - y))))
  exp = jnp.where(patch == 32, _exposure(x, 32), _exposure(x, 64))
  return distance + q_on * (w_exp * exp + w_col * losses.color(x))


def _max_update(before, after) -> float:
  return max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))


@pytest.fixture(scope="module")
def runs():
  """Per (task, t): the state before and after one step, and the plain recomputation."""
  models, static, step, objective_grad, eps_fn, _ = _compiled()
  y = _input()
  out = {}
  for task, t in CASES:
    name, extra = PRESETS.get(task, (task, {}))
    cfg = config.preset(name, steps=STEPS, guidance_scale=S, **NARROW, **extra)
    assert state_lib.weightless(cfg) == static
    st0, st1 = step(y, jax.random.key(5), state_lib.loss_weights(cfg, 64 * 64), jnp.int32(t))
    sched = models.backbone.schedule
    a, a_prev = (float(sched.alphas_cumprod[k]) for k in (t, t - 1000 // STEPS))
    eps = np.asarray(eps_fn(st0.z, jnp.int32(t)), np.float64)
    z0 = (np.asarray(st0.z, np.float64) - np.sqrt(1 - a) * eps) / np.sqrt(a)
    s = np.clip(np.quantile(np.abs(z0), 0.995), 1.0, 100.0)
    z0 = np.clip(z0, -s, s)
    z_prev = np.sqrt(a_prev) * z0 + np.sqrt(1 - a_prev) * eps
    q_on = float(t < TASKS[task][3])
    grads = [np.asarray(objective_grad(jnp.asarray(z0, jnp.float32), y, st0, st1, WEIGHTS[task],
                                       TASKS[task][2], q, th), np.float64)
             for q, th in ((q_on, True), (0.0, True), (q_on, False))]
    out[task, t] = {"st0": st0, "st1": st1, "z0": z0, "s": s, "z_prev": z_prev,
                    "grad": grads[0], "grad_no_q": grads[1], "grad_no_theta": grads[2],
                    "q_on": q_on}
  return out


@pytest.mark.slow
@pytest.mark.parametrize("task,t", CASES)
def test_step_matches_the_plain_objective_gradient(runs, task, t):
  r = runs[task, t]
  st1 = r["st1"]
  # ẑ0 is clamped to ±s (s > 1 here, so dividing by s or not clamping would differ).
  assert r["s"] > 1.0 and np.sum(np.abs(r["z0"]) >= r["s"]) >= 1
  np.testing.assert_allclose(st1.z0, r["z0"], rtol=1e-4, atol=1e-4)
  # z_{t−1} = DDIM(clamped ẑ0, ε) − s·N/512²·∇ẑ0 L.
  pull = r["z_prev"] - np.asarray(st1.z, np.float64)
  want = S_EFF * r["grad"]
  assert np.linalg.norm(pull - want) < 0.02 * np.linalg.norm(want)
  # The comparison separates a cut θ path and (in stage 3, where Q is large) a missing Q.
  assert np.linalg.norm(pull - S_EFF * r["grad_no_theta"]) > 0.05 * np.linalg.norm(want)
  if task == "lowlight_q":
    assert np.linalg.norm(pull - S_EFF * r["grad_no_q"]) > 0.05 * np.linalg.norm(want)
  assert float(st1.trace["grad_norm"][0]) == pytest.approx(np.linalg.norm(r["grad"]), rel=0.02)
  assert int(st1.trace["stage"][0]) == (3 if r["q_on"] else 2)


@pytest.mark.slow
@pytest.mark.parametrize("task,t", CASES)
def test_step_uses_the_task_settings(runs, task, t):
  disc_lr, adv_lr, patch, _ = TASKS[task]
  r = runs[task, t]
  st0, st1 = r["st0"], r["st1"]
  # Adam's first step moves each parameter by lr·g/(|g| + 1e-8): at most lr, ≈ lr for most.
  # (Float32 rounding of the parameters blurs this by well under 5 %; the rates differ ≥ 2×.)
  assert _max_update(st0.disc, st1.disc) == pytest.approx(disc_lr, rel=0.05)
  assert _max_update(st0.disc2, st1.disc2) == pytest.approx(adv_lr, rel=0.05)
  # The traced quality term of the step: L_exp with the task's patch, only in stage 3.
  x = st1.x0
  w_exp, w_col = WEIGHTS[task][4:]
  q = float(w_exp * _exposure(x, patch) + w_col * losses.color(x))
  other = float(w_exp * _exposure(x, 96 - patch) + w_col * losses.color(x))
  assert abs(q - other) > 1e-3 * q
  assert float(st1.trace["quality"][0]) == pytest.approx(q * r["q_on"], rel=1e-4)


def test_stage_one_step_is_ddim_on_the_clamped_z0():
  """At t = 900 (no guidance) z_{t−1} is the DDIM update of the clamped ẑ0 with the predicted ε,
  and x̂0 is the decoded clamped ẑ0."""
  models, _, step, _, eps_fn, decode = _compiled()
  cfg = config.preset("lowlight", steps=STEPS, **NARROW)
  st0, st1 = step(_input(), jax.random.key(6), state_lib.loss_weights(cfg, 64 * 64),
                  jnp.int32(900))
  sched = models.backbone.schedule
  a, a_prev = float(sched.alphas_cumprod[900]), float(sched.alphas_cumprod[880])
  eps = np.asarray(eps_fn(st0.z, jnp.int32(900)), np.float64)
  z0 = (np.asarray(st0.z, np.float64) - np.sqrt(1 - a) * eps) / np.sqrt(a)
  s = np.clip(np.quantile(np.abs(z0), 0.995), 1.0, 100.0)
  assert 1.0 < s < 100.0
  z0 = np.clip(z0, -s, s)
  np.testing.assert_allclose(st1.z0, z0, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(st1.z, np.sqrt(a_prev) * z0 + np.sqrt(1 - a_prev) * eps,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(st1.x0, decode(jnp.asarray(z0, jnp.float32)),
                             rtol=1e-4, atol=1e-4)
  assert float(st1.trace["grad_norm"][0]) == 0.0


@functools.cache
def _disc_grads():
  """∇ of both discriminators' losses at their parameters before the step, written out here:
  BCE(D(real) → 1) + BCE(D(fake) → 0) = mean softplus(−D(real)) + mean softplus(D(fake)),
  real y and fake ŷ = PCDM(x̂0) for the PCDM discriminator (PCDM before its update), real
  x̂0 − ŷ and fake x̂0 − y for the Adv one (PCDM after its update) (docs/method.md §4–§5)."""
  net = pcdm.make("pcdm", NARROW["pcdm_features"], 0.01)
  disc = pcdm.Discriminator(features=NARROW["disc_features"], slope=0.01)

  def loss(p, real, fake):
    return (jnp.mean(jax.nn.softplus(-disc.apply({"params": p}, real)))
            + jnp.mean(jax.nn.softplus(disc.apply({"params": p}, fake))))

  @jax.jit
  def grads(st0, st1, y):
    x = st1.x0
    theta = jnp.concatenate([pcdm.image_stats(x), pcdm.image_stats(y)], axis=-1)
    y_hat0 = net.apply({"params": st0.pcdm}, x, theta)
    y_hat1 = net.apply({"params": st1.pcdm}, x, theta)
    return (jax.grad(loss)(st0.disc, y, y_hat0),
            jax.grad(loss)(st0.disc2, x - y_hat1, x - y))

  return grads


@pytest.mark.slow
@pytest.mark.parametrize("task,t", CASES)
def test_discriminators_step_towards_real_and_away_from_fake(runs, task, t):
  """Adam's first step moves each parameter by −lr·sign(g): against the hand-written loss's
  gradient g for every entry where g is clearly nonzero (swapping real and fake flips it)."""
  r = runs[task, t]
  st0, st1 = r["st0"], r["st1"]
  g_disc, g_disc2 = _disc_grads()(st0, st1, _input())
  for name, g, before, after in (("disc", g_disc, st0.disc, st1.disc),
                                 ("disc2", g_disc2, st0.disc2, st1.disc2)):
    g = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])
    move = np.concatenate([np.ravel(np.asarray(b) - np.asarray(a)) for a, b in
                           zip(jax.tree.leaves(before), jax.tree.leaves(after))])
    clear = np.abs(g) > 1e-5 * np.abs(g).max()
    assert clear.sum() > 100, name
    agree = np.mean(np.sign(move[clear]) == -np.sign(g[clear]))
    assert agree > 0.99, (name, agree)
