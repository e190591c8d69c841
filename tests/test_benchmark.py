"""The speed benchmark (eval/benchmark.py, eval/bench/) and the PyTorch reference it times.

One smoke run of the benchmark binary (`main` with its command line, in this process) at
`--size=tiny`, 64 px, one timed step, a 2-step restore of a batch of 2, LD-RPS's dehaze recipe
at 0.5 % of its steps, is shared by the tests below: the JSON it writes must be self-consistent, and its
one-step parity record (our JAX step and the PyTorch eager reference, run from the same state
on the same random weights) must agree within the tolerances stated here. No timing is
asserted. The arrays the benchmark gives its compiled functions must all be on the device.
"""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from absl import flags

from eval import benchmark
from eval import ldrps_reference as ldrps
from eval import torch_reference as tr
from eval.bench import measure, nets
from eval.bench import options as options_lib
from eval.bench import setup as setup_lib
from upzeroir_jax import config as config_lib
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.models import sd
from upzeroir_jax.sampler import state as state_lib

# One-step parity tolerances (float32 on a CPU). Terms computed before the PCDM update agree to
# float rounding. Adam's first step moves each parameter by ±lr with the sign of its gradient,
# so a parameter whose gradient is ~0 can move the other way under float-level differences of
# x̂0 (UNet and VAE run by different libraries); a few % of PCDM parameters may, and the terms
# computed with the updated PCDM (the guidance terms, the gradient norm, z_{t-1}) inherit that.
PRE_UPDATE = ("pcdm_loss", "pcdm_mse", "pcdm_per", "pcdm_adv", "disc_loss")
PRE_RTOL = 1e-4
POST_RTOL, POST_ATOL_OF_DISTANCE = 1e-2, 1e-3
Z_ATOL = 5e-3  # z_{t-1} has magnitude ~3; the guidance pull s_eff·∇ is ~0.3.
PCDM_AGREEMENT, DISC_AGREEMENT = 0.95, 0.99  # fraction of parameters updated alike.


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  argv = ["benchmark", "--size=tiny", "--resolution=64",
          "--parts=step,torch_step,ldrps,restore", "--timed_steps=1", "--repeats=1",
          "--warmup_steps=1", "--ldrps_scale=0.005", "--ldrps_tasks=dehaze",
          "--restore_batches=2",
          "--restore_scale=0.005", "--profile", f"--out={out}"]
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # a shared 2-core machine: no OpenMP oversubscription.
  stdout = io.StringIO()
  try:
    with contextlib.redirect_stdout(stdout):
      assert benchmark.main(argv) == 0
  finally:
    torch.set_num_threads(threads)
  res = json.loads(out.read_text())
  res["stdout"] = stdout.getvalue()
  return res


@pytest.mark.slow
def test_ratios_are_quotients_of_reported_times(bench):
  jax_step, torch_step = bench["jax"]["steps"]["1"], bench["torch"]["steps"]["1"]
  for stage in ("guided", "stage1"):
    want = torch_step[f"step_s_{stage}"] / jax_step[f"step_s_{stage}"]
    assert bench["ratios"][f"step_{stage}"]["1"] == pytest.approx(want, rel=1e-12)
  assert jax_step["finite"] and torch_step["finite"]
  assert jax_step["compile_s"] > 0 and torch_step["warmup_s"] > 0


@pytest.mark.slow
def test_profile_attributes_the_guided_step_to_its_parts(bench):
  prof = bench["jax"]["profile"]
  parts = prof["by_part_ms"]
  for part in ("UNet forward", "VAE decoder forward", "VAE decoder backward", "VAE encoder backward",
               "VGG16 forward", "VGG16 backward", "PCDM forward", "PCDM backward",
               "discriminators forward", "discriminators backward"):
    assert parts.get(part, 0.0) > 0.0, part
  assert prof["matched_ms"] == pytest.approx(sum(parts.values()))
  # Most of a traced step is attributed to named parts, not to "other".
  other = parts.get("other forward", 0.0) + parts.get("other backward", 0.0)
  assert other < 0.2 * prof["matched_ms"]
  assert "guided step by part" in bench["stdout"]


@pytest.mark.slow
def test_ldrps_extrapolation_and_step_counts(bench):
  """LD-RPS's scripts: `--iter` 2 / 0 / 1 recurrences for low light / dehaze / denoise, each
  the last 225 steps of its 450-step grid (img2img strength 0.5)."""
  # 0.5 % of 450 steps -> round(2.25) = 2, recurrences of 2 // 2 = 1 step.
  assert [ldrps.ldrps_total_steps(t, 0.005) for t in ("lowlight", "dehaze", "denoise")] == [
    2 + 2 * 1, 2, 2 + 1]
  assert [ldrps.ldrps_total_steps(t) for t in ("lowlight", "dehaze", "denoise")] == [
    450 + 2 * 225, 450, 450 + 225]
  (task, r), = bench["torch"]["ldrps"].items()
  assert task == "dehaze" and (r["recurrences"], r["steps"], r["full_steps"]) == (0, 2, 450)
  assert r["terms"] == ["mse", "per", "quality"] and r["prompt"] is False
  assert r["per_image_s_full"] == pytest.approx(r["run_s"] * 450 / 2, rel=1e-12)
  assert r["finite"]
  assert "torch LD-RPS dehaze:" in bench["stdout"]
  counts = bench["meta"]["stage_counts"]
  assert counts["stage1"] + counts["guided"] == 450
  # Leading spacing, stride 2, offset 1: t = 899, 897, …, 1; t ≥ 700 for 100 of them.
  assert counts["stage1"] == 100


@pytest.mark.slow
def test_targets_report_measured_values_consistently(bench):
  by_name = {t["name"]: t for t in bench["targets"]}
  cpu = by_name["guided step at equal work on a CPU: torch time / JAX time"]
  assert cpu["measured"] == bench["ratios"]["step_guided"]["1"]
  assert cpu["status"] == ("MET" if cpu["measured"] >= 1.0 else "NOT MET")
  assert by_name["guided step at equal work on a GPU: torch time / JAX time"]["status"] == (
    "NOT MEASURED")
  assert all(t["status"] in ("MET", "NOT MET", "NOT MEASURED") for t in bench["targets"])
  for t in bench["targets"]:
    assert f"[{t['status']}] {t['name']}" in bench["stdout"]


@pytest.mark.slow
@pytest.mark.parity
def test_one_step_parity_with_torch_reference(bench):
  p = bench["parity"]
  assert p["t"] == bench["meta"]["t_guided"] and p["t"] < 700
  terms = p["terms"]
  assert terms["distance"]["torch"] > 0 and terms["grad_norm"]["torch"] > 0
  post_atol = POST_ATOL_OF_DISTANCE * terms["distance"]["torch"]
  for name, v in terms.items():
    if name in PRE_UPDATE:
      assert v["jax"] == pytest.approx(v["torch"], rel=PRE_RTOL), name
    else:
      assert v["jax"] == pytest.approx(v["torch"], rel=POST_RTOL, abs=post_atol), name
  assert p["z_max_abs_diff"] < Z_ATOL
  assert p["pcdm"]["update_max_abs"] > 0 and p["pcdm"]["agreement"] >= PCDM_AGREEMENT
  for disc in ("disc", "disc2"):
    assert p[disc]["update_max_abs"] > 0 and p[disc]["agreement"] >= DISC_AGREEMENT


@pytest.mark.slow
def test_restore_part_reports_measured_images_per_minute(bench):
  r = bench["jax"]["restore"]["2"]
  # 0.005 of 450 steps -> round(2.25) = 2 steps run; the time is scaled to 450 steps.
  assert r["batch"] == 2 and r["steps_taken"] == 2 and r["steps_full"] == 450
  assert r["images_per_minute_run"] == pytest.approx(60.0 * 2 / r["run_s"], rel=1e-12)
  assert r["images_per_minute"] == pytest.approx(60.0 * 2 / (r["run_s"] * 225), rel=1e-12)
  assert r["finite"] and r["compile_s"] > 0 and r["xla_flops"] > 0
  assert "jax   restore, batch 2:" in bench["stdout"]
  assert "restore_batch2" in bench["memory"]


def test_options_are_the_flags():
  """Every field of Options is a flag with its default, and parsed flags give Options back."""
  fv = options_lib.define_flags(flags.FlagValues())
  fv(["benchmark", "--batches=4,1,4", "--parts=step", "--restore_scale=0.5", "--cfg"])
  opts = options_lib.from_flags(fv)
  assert opts == options_lib.Options(batches=(1, 4), parts=("step",), restore_scale=0.5,
                                     cfg=True)
  fresh = options_lib.define_flags(flags.FlagValues())
  fresh(["benchmark"])
  assert options_lib.from_flags(fresh) == options_lib.Options()


@pytest.fixture(scope="module")
def tiny_setup():
  return setup_lib.build_setup(options_lib.Options(size="tiny", parts=("step", "restore")))


def test_compiled_functions_get_device_arrays_only(tiny_setup):
  """Models, input and state passed to the compiled step (batch 1 and a vmapped batch) and to
  the compiled restore hold no host (numpy) array."""
  for batch in (1, 2):
    _, args = measure.step_arguments(tiny_setup, batch)
    assert setup_lib.host_leaves(args) == [], batch
    assert setup_lib.host_leaves(measure.restore_arguments(tiny_setup, batch)) == [], batch
  assert setup_lib.host_leaves((tiny_setup.models, tiny_setup.y, tiny_setup.prompt)) == []


def test_attention_choices_set_our_networks_policy(tiny_setup):
  """--attention and the attention variants set `sd_layers.Policy.attention` of our networks
  ("auto": None, JAX chooses); the base step is XLA's."""
  assert tiny_setup.models.backbone.policy.attention == "xla"
  for spec, choice, want in (("cudnn", "cudnn", "cudnn"), ("auto", "auto", None),
                             ("bfloat16+cudnn", "cudnn", "cudnn"), ("remat", "xla", "xla")):
    variant = setup_lib.variant_setup(tiny_setup, spec)
    assert variant.attention == choice and variant.models.backbone.policy.attention == want
  assert setup_lib.with_attention(tiny_setup.models.backbone, "auto").attention is None


def test_host_arrays_are_found_and_refused():
  tree = {"a": np.zeros(2), "b": jnp.zeros(2), "c": [np.float32(1.0)]}
  assert setup_lib.host_leaves(tree) == ["['a']", "['c'][0]"]
  assert setup_lib.host_leaves(setup_lib.on_device(tree)) == []
  with pytest.raises(options_lib.BenchmarkError, match="host arrays"):
    measure._check_on_device("the models", tree)


def test_trace_terms_follow_the_sampler_trace():
  assert set(measure.TRACE_TERMS) == set(state_lib.TRACE_KEYS) - {"t", "stage", "guard"}


@pytest.mark.parity
def test_ldrps_procedure_clamps_z0_without_dividing():
  """The LD-RPS anchor thresholds as LD-RPS's scheduler does (docs/method.md §3): ẑ0 clipped to
  ±s, s = clip(quantile_0.995(|ẑ0|), 1, 100), whatever the config's own setting."""
  sd_cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
  torch_sd = tr.TorchSD(unet=None, vae=None, scheduler_config=sd_cfg, null_context=None)
  cfg = config_lib.preset("lowlight", threshold="divide")
  proc = ldrps.LDRPSProcedure(torch_sd, None, cfg, 64 * 64)
  x = 20.0 * np.random.default_rng(0).standard_normal((2, 4, 32, 32)).astype(np.float32)
  x[1] *= 1e-3
  s = np.clip(np.quantile(np.abs(x.reshape(2, -1)), 0.995, axis=1), 1.0, 100.0)[:, None, None, None]
  got = proc.scheduler._threshold_sample(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(got, np.clip(x, -s, s), rtol=1e-5, atol=1e-7)
  assert s[0] > 1 and proc.scheduler.config.thresholding
  # The step at equal work follows the config: "divide" is stock diffusers.
  divide = tr.GuidedStep(torch_sd, None, cfg, 64 * 64).scheduler._threshold_sample(
    torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(divide, np.clip(x, -s, s) / s, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("task", ["lowlight", "denoise"])
def test_ldrps_procedure_does_the_work_of_its_task_script(tiny_setup, task):
  """Counted on LD-RPS's procedure for `task` at 0.5 % of its steps (2-step grid t = 501, 1;
  recurrences of 1 step, t = 1): per step two UNet calls of batch 2 (two latents, CFG) whose
  conditional half is the caption for low light and the empty prompt for denoise (its script
  discards the caption); one PCDM and one PCDM-discriminator step; VGG16 once for PCDM's own
  perceptual loss, once more for the guidance's where the script keeps it (low light, not
  denoise); the Adv discriminator steps only where the script keeps the adversarial term.
  At t < stage3_t denoise's objective has no perceptual, adversarial or quality term."""
  setup = tiny_setup
  config = setup_lib.task_config(setup, task)
  proc = ldrps.LDRPSProcedure(setup.torch_sd, setup.torch_vgg, config, setup.num_pixels, 0.005)
  recurrences = {"lowlight": 2, "denoise": 1}[task]
  steps = 2 + recurrences  # every step below t = 700: all guided
  assert proc.total_steps() == steps
  unet_ctx, vgg_calls, states = [], [], []
  hooks = [
    setup.torch_sd.unet.register_forward_hook(
      lambda m, args, kwargs, out: unet_ctx.append(kwargs["encoder_hidden_states"]),
      with_kwargs=True),
    setup.torch_vgg.register_forward_hook(lambda m, args, out: vgg_calls.append(1))]
  init_image = proc.step_impl.init_image
  proc.step_impl.init_image = lambda *a, **k: states.append(init_image(*a, **k)) or states[-1]
  try:
    image = proc.run(setup.torch_y, torch.Generator().manual_seed(0), setup.torch_prompt)
  finally:
    for h in hooks:
      h.remove()
  assert torch.isfinite(image).all() and image.shape == setup.torch_y.shape
  assert len(unet_ctx) == 2 * steps and all(c.shape[0] == 2 for c in unet_ctx)
  null, prompt = setup.torch_sd.null_context[0], setup.torch_prompt[0]
  cond = prompt if task == "lowlight" else null
  for ctx in unet_ctx:
    assert torch.equal(ctx[0], null) and torch.equal(ctx[1], cond)
  with_per = task == "lowlight"
  assert len(vgg_calls) == 1 + steps + (steps if with_per else 0)
  (im,) = states

  def adam_steps(opt):
    return max((int(st["step"]) for st in opt.state.values()), default=0)

  assert adam_steps(im.pcdm_opt) == adam_steps(im.disc_opt) == steps
  assert adam_steps(im.disc2_opt) == (steps if task == "lowlight" else 0)
  x0 = setup.torch_y.clamp(0.05, 0.95)
  _, (row,) = proc.step_impl.objective([im], x0, im.pcdm(x0, im.y_stats.repeat(1, 2)), 1,
                                       terms=proc.recipe.terms)
  assert float(row["mse"].detach()) > 0 and float(row["deg"]) == 0.0
  for term in ("per", "adv", "quality"):
    assert (float(row[term].detach()) != 0.0) == (task == "lowlight"), term


def test_bad_flags_give_one_line_errors(capsys):
  assert benchmark.main(["benchmark", "--parts=step,warp"]) == 2
  assert benchmark.main(["benchmark", "--restore_scale=2"]) == 2
  assert benchmark.main(["benchmark", "--variants=bfloat16+fp8"]) == 2
  assert benchmark.main(["benchmark", "--restore_batches=1,x"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 4
  assert "unknown --parts ['warp']" in err[0]
  assert "--restore_scale" in err[1]
  assert "'fp8'" in err[2]
  assert "--restore_batches must be integers" in err[3]


def test_restore_loop_has_no_host_callbacks():
  """The whole restore (scan over guided steps) traces to one program without host syncs."""
  models = restore_lib.Models(backbone=sd.tiny(jax.random.key(0)),
                              vgg_params=_tiny_vgg_params())
  config = config_lib.preset("lowlight", steps=3, dqr=False, pcdm_features=(8, 8, 8),
                             disc_features=(8, 8, 8))
  y = jnp.asarray(setup_lib.synthetic_input(64, 0)[0])
  jaxpr = jax.make_jaxpr(lambda m, y, k: restore_lib.restore(m, y, k, config).image)(
    models, y, jax.random.key(1))
  names = _primitive_names(jaxpr.jaxpr)
  assert "scan" in names
  assert not {n for n in names if "callback" in n or n in ("debug_print", "outfeed")}


def _tiny_vgg_params() -> dict:
  return jax.tree.map(jnp.asarray, tr.VGGRelu22().random_init().flax_params())


def _primitive_names(jaxpr) -> set[str]:
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jax.core.jaxprs_in_params(eqn.params):
      names |= _primitive_names(sub)
  return names


def test_bf16_backbone_tracks_float32(bf16_pair):
  """bf16 VAE compute (params and activations; PCDM, losses and latents stay float32) stays
  within 5 % (relative L2) of float32 on the decoded image, the guidance gradient through the
  decoder and the encoded latent. bf16 keeps 8 mantissa bits (rounding 2e-3 per operation)."""
  f32, bf16 = bf16_pair
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
  img = jnp.asarray(rng.uniform(size=(1, 64, 64, 3)), jnp.float32)

  @jax.jit
  def outputs(m):
    x, vjp = jax.vjp(m.decode, z)
    (guidance,) = vjp(x - img)  # ∇ of ½‖D(z) − img‖², the guidance-gradient path.
    return {"decode": x, "guidance": guidance, "encode": m.encode(img)}

  want, got = outputs(f32), outputs(bf16)
  for name in want:
    a, b = np.asarray(want[name]), np.asarray(got[name])
    assert b.dtype == np.float32, name
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 5e-2, name


@pytest.fixture(scope="module")
def bf16_pair():
  f32 = sd.tiny(jax.random.key(0))
  bf16 = f32.replace(unet_params=sd.cast(f32.unet_params, jnp.bfloat16),
                     vae_params=sd.cast(f32.vae_params, jnp.bfloat16),
                     dtype=jnp.dtype(jnp.bfloat16))
  return f32, bf16


def test_nets_part_reports_best_and_median_rounds(tiny_setup):
  res = nets.measure_nets(tiny_setup, calls=1, repeats=3)
  assert set(res) == {"unet_forward", "vae_encode", "vae_encode_vjp", "vae_decode",
                      "vae_decode_vjp"}
  for row in res.values():
    assert len(row["rounds_s"]) == 3 and row["s"] == min(row["rounds_s"]) > 0
    assert row["median_s"] == np.median(row["rounds_s"])
    assert row["cpu_s"] == np.median(row["cpu_rounds_s"]) > 0 and row["compile_s"] > 0


def test_step_cost_lowers_the_step_of_the_backbone_given(tiny_setup):
  """A bfloat16 backbone moves fewer bytes than the float32 one: each cost is its own program."""
  own = tiny_setup.models.backbone
  half = own.replace(unet_params=sd.cast(own.unet_params, jnp.bfloat16),
                     vae_params=sd.cast(own.vae_params, jnp.bfloat16),
                     dtype=jnp.dtype(jnp.bfloat16))
  cost, half_cost = nets.step_cost(tiny_setup), nets.step_cost(tiny_setup, half)
  assert cost["flops"] > 1e6 and set(cost) == set(half_cost)
  assert half_cost["bytes accessed"] < 0.99 * cost["bytes accessed"]

