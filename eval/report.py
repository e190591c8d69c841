r"""Writes the HTML report of a run folder (docs/evaluation.md, "Reports").

  python -m eval.report --run_dir=runs/lolv1

`--run_dir` is an eval.run folder (after eval.score the table has the metrics) or an
`upzeroir restore` output folder. Writes `<run_dir>/report.html` and its thumbnails and plots
in `<run_dir>/report_files/`; the page opens from disk in a browser, with no server.
"""

import sys
from collections.abc import Sequence

from absl import flags

from upzeroir_jax import cli, report

PROG = "eval.report"
USAGE = f"""\
usage: python -m {PROG} --run_dir=DIR

Writes DIR/report.html: the run's settings and weights, a sortable table of every image with
its metrics, and per image the input, output and reference side by side and as a
before/after slider, the identified degradations and plots of its sampling.
"""


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.report on `fv`."""
  flags.DEFINE_string("run_dir", None, "An eval.run folder or an `upzeroir restore` output "
                      "folder.", flag_values=fv, required=True)
  return fv


def _main(fv: flags.FlagValues) -> int:
  path = report.write(fv.run_dir)
  print(f"{PROG}: -> {path}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.report with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
