"""The report page of a run folder: `write(folder)` -> `<folder>/report.html`.

One HTML file that opens from disk with no server and no network: the style and script are
inline; images are referenced by relative path — the restored image, its input and reference
where they are, and small JPEG thumbnails and SVG plots written to `<folder>/report_files/`
(inputs in a format browsers do not show, e.g. TIFF, get a full-size PNG copy there). Images
load lazily and each image's section is rendered when it scrolls into view, so a report of
hundreds of images opens fast (docs/evaluation.md, "Reports", has the measured time). Every
file is written atomically (a planted link is replaced, never followed).
"""

from __future__ import annotations

import html
import json
import os
import pathlib
import re
import urllib.parse
import zlib

import numpy as np
from PIL import Image as PILImage

from upzeroir_jax import io
from upzeroir_jax.io import atomic
from upzeroir_jax.report import assets, plots, records

REPORT = "report.html"
FILES = "report_files"
THUMB = 256
_BROWSER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
# metric -> (header, lower is better)
_METRICS = {"psnr": ("PSNR ↑", False), "ssim": ("SSIM ↑", False), "lpips": ("LPIPS ↓", True),
            "niqe": ("NIQE ↓", True), "arniqa": ("ARNIQA ↑", False)}
_esc = html.escape


def _key(name: str) -> str:
  """A file- and anchor-safe id of an image name, distinct for distinct names."""
  safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:60]
  return f"{safe}-{zlib.crc32(name.encode()):08x}"


def _href(path: pathlib.Path, folder: pathlib.Path) -> str:
  """`path` as a URL relative to the page in `folder`."""
  rel = os.path.relpath(path.resolve(), folder.resolve())
  return urllib.parse.quote(rel.replace(os.sep, "/"))


def _fresh(target: pathlib.Path, source: pathlib.Path) -> bool:
  return (not target.is_symlink() and target.is_file()
          and target.stat().st_mtime >= source.stat().st_mtime)


def _thumbnail(source: pathlib.Path, target: pathlib.Path, size: int) -> None:
  """A JPEG of `source` fitting `size`² (kept when newer than its source)."""
  if _fresh(target, source):
    return
  pixels = np.round(np.clip(io.read_image(source), 0, 1) * 255).astype(np.uint8)
  img = PILImage.fromarray(pixels)
  img.thumbnail((size, size), PILImage.LANCZOS)
  atomic.write(target, lambda f: img.save(f, "JPEG", quality=85))


def _viewable(source: pathlib.Path, files: pathlib.Path, stem: str) -> pathlib.Path:
  """`source` when browsers show its format, else a full-size PNG copy in `files`."""
  if source.suffix.lower() in _BROWSER_SUFFIXES:
    return source
  copy = files / f"{stem}.png"
  if not _fresh(copy, source):
    io.write_image(copy, io.read_image(source))
  return copy


def _cell(value: object, cls: str = "", sort: object = None) -> str:
  v = "" if sort is None else f' data-v="{_esc(str(sort))}"'
  c = f' class="{cls}"' if cls else ""
  return f"<td{c}{v}>{value}</td>"


def _number(value: float | None, digits: int = 4) -> str:
  return "" if value is None else f"{value:.{digits}g}"


def _settings(run: records.Run) -> str:
  """The run's settings (run.json, else its first image's) and the weights and code of its
  first image, and the whole configuration folded."""
  first = run.images[0].sidecar
  facts = {k: v for k, v in run.settings.items() if k != "config"}
  for key in ("seed", "command", "benchmark"):
    facts.setdefault(key, first.get(key))
  settings = first.get("settings", {})
  for key in ("grid", "size", "bits", "scorer"):
    facts.setdefault(key, settings.get(key))
  model = first.get("model", {})
  facts["weights"] = "; ".join(f"{k}: {v}" for k, v in model.items()) if isinstance(
      model, dict) else model
  facts["code"] = f"upzeroir-jax {first.get('version', '?')}, jax {first.get('jax', '?')}"
  rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(_value(v))}</dd>"
                 for k, v in facts.items() if v is not None)
  config = run.settings.get("config", first.get("config", {}))
  return (f'<dl class="facts">{rows}</dl><details><summary>configuration</summary>'
          f"<pre>{_esc(json.dumps(config, indent=1))}</pre></details>")


def _means(run: records.Run, metrics: list[str]) -> str:
  means = run.scores.get("means") or {}
  parts = [f"{_METRICS[m][0]} {_number(means.get(m))}" for m in metrics
           if means.get(m) is not None]
  missing = run.scores.get("missing") or {}
  parts += [f"{m}: missing ({_esc(str(why))})" for m, why in missing.items()]
  if not parts:
    return ""
  return f"<p>means over {run.scores.get('count', '?')} images: {'; '.join(parts)}</p>"


def _image_row(image: records.Image, key: str, thumbs: dict, metrics: list[str]) -> str:
  dqr = records.dqr_record(image.sidecar)
  found = (image.sidecar.get("auto") or {}).get("detected") or ""
  cells = [
    _cell(f'<a href="#{key}">{_esc(image.name)}</a>', sort=image.name),
    _cell(f'<img loading="lazy" alt="input" src="{thumbs["input"]}">' if "input" in thumbs else ""),
    _cell(f'<img loading="lazy" alt="output" src="{thumbs["output"]}">'),
    _cell(_esc(str(image.sidecar.get("task", "")))),
    _cell(_esc(found)),
    _cell(dqr.get("steps", ""), "num", dqr.get("steps", "")),
    _cell(dqr.get("restarts", ""), "num", dqr.get("restarts", "")),
    _cell(_esc(dqr.get("stop_reason", "off" if dqr.get("enabled") is False else ""))),
    _cell(_number(dqr.get("best_score")), "num", _number(dqr.get("best_score"), 8)),
  ]
  cells += [_cell(_number(image.metrics.get(m)), "num", _number(image.metrics.get(m), 10))
            for m in metrics]
  return f"<tr>{''.join(cells)}</tr>"


def _slider(full: dict, shape: tuple[int, int]) -> str:
  """A before/after slider at full resolution `shape` (H, W) from the image URLs `full` {role:
  href} (before: the input or the reference; after: the output)."""
  befores = [(role, full[role]) for role in ("input", "reference") if role in full]
  if not befores:
    return ""
  h, w = shape
  pick = "".join(f'<option value="{src}">{role}</option>' for role, src in befores)
  return (f'<div class="cmp"><p>before / after at full resolution ({w}×{h}): left of the '
          f'split the <select aria-label="before">{pick}</select>, right of it the output</p>'
          f'<div class="view"><div class="stack" style="width:{w}px;height:{h}px">'
          f'<img class="before" loading="lazy" alt="before" src="{befores[0][1]}">'
          f'<img class="after" loading="lazy" alt="output" src="{full["output"]}"></div></div>'
          f'<input class="split" style="width:{w + 2}px" type="range" min="0" max="100" '
          'step="0.1" value="50" aria-label="split position"></div>')


def _value(v: object) -> str:
  """A sidecar value as text: strings as they are, floats to 4 significant digits."""
  if isinstance(v, str):
    return v
  return f"{v:.4g}" if isinstance(v, float) else json.dumps(v)


def _auto(sidecar: dict) -> str:
  found = sidecar.get("auto")
  if not isinstance(found, dict):
    return ""
  items = "".join(f"<li>{_esc(k)}: {_esc(_value(v))}</li>" for k, v in found.items())
  return f"<h3>identified degradations (--task=auto)</h3><ul>{items}</ul>"


def _section(image: records.Image, key: str, files: pathlib.Path, folder: pathlib.Path,
             thumb_size: int) -> tuple[str, dict]:
  """One image's section and its table thumbnails {role: href}."""
  sources = {"input": image.input, "output": image.output, "reference": image.reference}
  thumbs, full = {}, {}
  for role, source in sources.items():
    if source is None:
      continue
    thumb = files / f"{key}-{role}.jpg"
    _thumbnail(source, thumb, thumb_size)
    thumbs[role] = _href(thumb, folder)
    full[role] = _href(_viewable(source, files, f"{key}-{role}"), folder)
  figures = "".join(
      f'<figure><a href="{full[r]}"><img loading="lazy" alt="{r}" src="{thumbs[r]}"></a>'
      f"<figcaption>{r}</figcaption></figure>" for r in sources if r in thumbs)
  trace = image.sidecar.get("trace") or {}
  plot_html = []
  for kind, svg in (("score", plots.score_plot(records.dqr_record(image.sidecar), trace)),
                    ("loss", plots.loss_plot(trace))):
    if svg is None:
      continue
    path = files / f"{key}-{kind}.svg"
    atomic.write(path, lambda f, svg=svg: f.write(svg.encode("utf-8")))
    plot_html.append(f'<img loading="lazy" alt="{kind} plot" src="{_href(path, folder)}">')
  shape = tuple(image.sidecar.get("grid", {}).get("input_shape") or io.image_size(image.output))
  smoke = ('<p class="smoke">smoke test: random weights, not a restoration</p>'
           if (image.sidecar.get("model") or {}).get("smoke_test") else "")
  prompt = image.sidecar.get("prompt")
  body = (f'<section class="image" id="{key}"><h2>{_esc(image.name)}</h2>{smoke}'
          f'<p>task {_esc(str(image.sidecar.get("task", "?")))}'
          f'{" — prompt: " + _esc(prompt) if prompt else ""}</p>'
          f'<div class="side">{figures}</div>{_slider(full, shape)}{_auto(image.sidecar)}'
          f'<div class="plots">{"".join(plot_html) or "<p>no sampling trace recorded</p>"}</div>'
          f'<p><a href="{_href(image.output.with_suffix(".json"), folder)}">sidecar</a> '
          "(every setting, the DQR record and the per-step trace)</p></section>")
  return body, thumbs


def render(run: records.Run, thumb_size: int = THUMB) -> str:
  """The report page of `run` (writing its thumbnails and plots to `<folder>/report_files/`)."""
  folder, files = run.folder, run.folder / FILES
  files.mkdir(exist_ok=True)
  metrics = [m for m in _METRICS if any(i.metrics.get(m) is not None for i in run.images)]
  rows, sections = [], []
  for image in run.images:
    key = _key(image.name)
    section, thumbs = _section(image, key, files, folder, thumb_size)
    sections.append(section)
    rows.append(_image_row(image, key, thumbs, metrics))
  heads = [("image", "text"), ("input", "text"), ("output", "text"), ("task", "text"),
           ("found", "text"), ("steps", "num"), ("restarts", "num"), ("stop", "text"),
           ("best score", "num")] + [(_METRICS[m][0], "num") for m in metrics]
  head = "".join(f'<th data-type="{kind}">{_esc(name)}</th>' for name, kind in heads)
  title = f"upzeroir-jax report: {folder.resolve().name}"
  return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}'
          f"</title><style>{assets.CSS}</style></head><body><h1>{_esc(title)}</h1>"
          f"<h2>settings</h2>{_settings(run)}"
          f"<h2>images ({len(run.images)})</h2>{_means(run, metrics)}"
          f'<p>click a column to sort</p><table class="images"><thead><tr>{head}</tr></thead>'
          f"<tbody>{''.join(rows)}</tbody></table>{''.join(sections)}"
          f"<script>{assets.JS}</script></body></html>\n")


def write(folder: str | pathlib.Path, thumb_size: int = THUMB) -> pathlib.Path:
  """Writes `<folder>/report.html` for the run in `folder` (`records.read`) and returns its path.

  Raises:
    RunError: no such folder, or no restored image with its sidecar in it.
  """
  run = records.read(folder)
  page = render(run, thumb_size)
  path = run.folder / REPORT
  atomic.write(path, lambda f: f.write(page.encode("utf-8")))
  return path
