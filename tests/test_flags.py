"""One definition of the model and sampling flags, and one way from flags to a RestoreConfig."""

import dataclasses

import pytest
from absl import flags

from eval import ablate
from eval import run as run_lib
from upzeroir_jax import cli, config, loading, smoke
from upzeroir_jax import flags as flags_lib
from upzeroir_jax.errors import RunError


def _parsed(define, argv):
  fv = define(flags.FlagValues())
  fv(["prog", *argv])
  return fv


def test_binaries_share_the_model_flags():
  binaries = {"cli": cli.define_flags, "eval.run": run_lib.define_flags,
              "eval.ablate": ablate.define_flags}
  reference = flags_lib.define_model_flags(flags.FlagValues())
  for name, define in binaries.items():
    fv = define(flags.FlagValues())
    for flag in flags_lib.MODEL_FLAGS:
      want, got = reference[flag], fv[flag]
      assert (got.default, got.help, type(got.parser)) == (
          want.default, want.help, type(want.parser)), (name, flag)
  assert reference["model"].default == loading.DEFAULT_MODEL
  assert reference["vgg"].default == "checkpoints/vgg16.safetensors"
  assert reference["arniqa"].default == "checkpoints/arniqa"


@pytest.mark.parametrize("argv,want", [
    ([], {"steps": 450, "dqr": True}),
    (["--scorer=none"], {"steps": 450, "dqr": False}),
    (["--scorer=none", "--override=dqr=true"], {"dqr": True}),
    (["--steps=7", "--override=steps=9"], {"steps": 7}),
    (["--override=steps=9", "--override=guidance_scale=250"],
     {"steps": 9, "guidance_scale": 250.0}),
])
def test_config_from_flags_applies_overrides_then_steps_then_the_scorer(argv, want):
  got = flags_lib.config_from_flags(_parsed(flags_lib.define_model_flags, argv), "dehaze")
  preset = config.preset("dehaze")
  for field, value in want.items():
    assert getattr(got, field) == value, field
  changed = {f.name for f in dataclasses.fields(got)
             if getattr(got, f.name) != getattr(preset, f.name)}
  assert changed <= set(want)


def test_overrides_take_the_field_types():
  got = flags_lib.parse_overrides(["dqr=false", "steps=50", "pcdm_features=8,16,32",
                                   "guidance_scale=2000", "deg_loss=l1"])
  assert got == {"dqr": False, "steps": 50, "pcdm_features": (8, 16, 32),
                 "guidance_scale": 2000.0, "deg_loss": "l1"}
  for item, message in (("steps=many", "not a valid int"), ("dqr=maybe", "not a valid bool"),
                        ("nope=1", "expected field=value"), ("steps", "expected field=value")):
    with pytest.raises(RunError, match=message):
      flags_lib.parse_overrides([item])


def test_ablate_passes_the_model_flags_on_to_every_variant():
  fv = _parsed(ablate.define_flags, [
      "--dataset_dir=d", "--benchmark=LOLv1", "--task=lowlight", "--output_root=r",
      "--model=tiny", "--steps=4", "--size=64", "--batch=2", "--override=pcdm_features=8,8,8",
      "--variants=full,no_dqr"])
  commands = {variant: run_argv for variant, run_argv, _ in ablate.commands(fv)}
  for variant, run_argv in commands.items():
    parsed = _parsed(run_lib.define_flags, run_argv[1:])
    assert (parsed.model, parsed.steps, parsed.size, parsed.batch) == ("tiny", 4, 64, 2)
    assert parsed.variant == variant and parsed.output_dir == f"r/LOLv1/{variant}"
    cfg = flags_lib.config_from_flags(parsed, parsed.task)
    assert cfg.pcdm_features == (8, 8, 8) and cfg.steps == 4
    assert cfg.dqr == (variant == "full")
    assert parsed.scorer == ("arniqa" if variant == "full" else "none")


def test_ablate_leaves_flags_at_their_defaults_to_the_runs():
  fv = _parsed(ablate.define_flags, ["--dataset_dir=d", "--benchmark=LOLv1", "--task=lowlight",
                                     "--output_root=r", "--model=tiny", "--variants=full"])
  ((_, run_argv, _),) = ablate.commands(fv)
  assert not any(a.startswith(("--size", "--steps", "--compilation_cache")) for a in run_argv)
  parsed = _parsed(run_lib.define_flags, run_argv[1:])
  assert smoke.apply_defaults(parsed)["size"] == 64  # so the tiny model's defaults apply there
