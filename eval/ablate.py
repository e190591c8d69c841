r"""The three ablations of docs/method.md §8 (the paper's Table 4), run with eval.run + eval.score.

  python -m eval.ablate --dataset_dir=LOLv1/eval15 --benchmark=LOLv1 --task=lowlight \
      --output_root=runs/ablations
  python -m eval.tables --runs_dir=runs/ablations

Each variant is a configuration of the same binaries (RestoreConfig overrides), written to
`<output_root>/<benchmark>/<variant>/`:

- full: the method as configured by the task preset: ẑ0 clamped as LD-RPS does, the task's
  discriminator learning rates, exposure patch and stage-3 boundary, and DQR (early stop only
  at t <= t_r, unsettled passes re-initiated from t_r at most twice, output the x̂0 where the
  run ended);
- no_pcdm (w/o PCDM): `pcdm_variant=resblocks`, plain ResBlocks of about PCDM's parameter
  count without GGD conditioning;
- no_degloss (w/o DegLoss): `deg_loss=l1`, a pixel L1 between ŷ and y instead of the GGD KL;
- no_dqr (w/o DQR): `dqr=false` (and no scorer), one fixed pass with the first pass's number
  of steps: no early stop, no re-initiated passes. (The paper mentions "a fixed sampling
  schedule with 1000 timesteps"; we keep the first pass equal so that only DQR differs; pass
  --steps to change both.)

Every variant keeps the preset's other settings (thresholding, per-task rates, patch, stages).

The model and sampling flags are eval.run's (`upzeroir_jax.flags`) and are passed on to every
variant; `--override` adds to each variant's own overrides. Runs are resumable like eval.run;
`--dry_run` prints the commands instead.
"""

import pathlib
import shlex
import sys
from collections.abc import Sequence

from absl import flags

from eval import run as run_lib
from eval import score as score_lib
from upzeroir_jax import cli, loading
from upzeroir_jax import config as config_lib
from upzeroir_jax import flags as flags_lib

PROG = "eval.ablate"
# variant -> (RestoreConfig overrides, scorer override or None)
ABLATIONS = {
  "full": ((), None),
  "no_pcdm": (("pcdm_variant=resblocks",), None),
  "no_degloss": (("deg_loss=l1",), None),
  "no_dqr": (("dqr=false",), "none"),
}
USAGE = f"""\
usage: python -m {PROG} --dataset_dir=DIR --benchmark=NAME --task=TASK --output_root=DIR [flags]

Restores and scores one benchmark once per variant ({", ".join(ABLATIONS)}) into
<output_root>/<benchmark>/<variant>/; python -m eval.tables then renders Table 4.
"""


def commands(fv: flags.FlagValues) -> list[tuple[str, list[str], list[str]]]:
  """(variant, eval.run argv, eval.score argv) for each requested variant."""
  out = []
  for variant in fv.variants:
    if variant not in ABLATIONS:
      raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(ABLATIONS)}")
    overrides, scorer = ABLATIONS[variant]
    run_dir = pathlib.Path(fv.output_root) / fv.benchmark / variant
    run_argv = [run_lib.PROG, f"--dataset_dir={fv.dataset_dir}", f"--output_dir={run_dir}",
                f"--task={fv.task}", f"--benchmark={fv.benchmark}", f"--variant={variant}"]
    run_argv += flags_lib.model_argv(fv, scorer=scorer or fv.scorer,
                                     override=[*overrides, *fv.override])
    run_argv += [f"--gt_dir={fv.gt_dir}"] if fv.gt_dir else []
    run_argv += [f"--max_images={fv.max_images}"] if fv.max_images else []
    score_argv = [score_lib.PROG, f"--run_dir={run_dir}", f"--lpips={fv.lpips}",
                  f"--arniqa={fv.arniqa}"]
    out.append((variant, run_argv, score_argv))
  return out


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.ablate on `fv`."""
  flags.DEFINE_string("dataset_dir", None, "As eval.run.", flag_values=fv, required=True)
  flags.DEFINE_string("gt_dir", None, "As eval.run.", flag_values=fv)
  flags.DEFINE_string("benchmark", None, "Benchmark name (LOLv1, HSTS, Kodak24 in Table 4).",
                      flag_values=fv, required=True)
  flags.DEFINE_enum("task", None, list(config_lib.TASKS), "Restoration task.", flag_values=fv,
                    required=True)
  flags.DEFINE_string("output_root", None, "Root of the run folders.", flag_values=fv,
                      required=True)
  flags.DEFINE_list("variants", list(ABLATIONS), "Variants to run.", flag_values=fv)
  flags_lib.define_model_flags(fv)
  flags.DEFINE_string("lpips", loading.DEFAULT_LPIPS, "Converted LPIPS checkpoint (eval.score).",
                      flag_values=fv)
  flags.DEFINE_integer("max_images", None, "Only the first N images.", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_boolean("dry_run", False, "Print the commands only.", flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  status = 0
  for variant, run_argv, score_argv in commands(fv):
    print(f"# {variant}\npython -m {shlex.join(run_argv)}\npython -m {shlex.join(score_argv)}")
    if fv.dry_run:
      continue
    code = run_lib.main(run_argv + (["--verbose"] if fv.verbose else []))
    if code == 0:
      code = score_lib.main(score_argv)
    status = status or code
  return status


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.ablate with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
