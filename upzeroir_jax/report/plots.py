"""Plain-SVG plots of one image's sampling: the DQR score trace and the loss terms per step.

The x axis of both is the sampling step n (every step taken, re-initiated passes included, as
the sidecar's "trace" records them). A pass starts at n = 0 and wherever the timestep jumps
back up (a re-initiation, docs/method.md §7, Eq. 17): dashed lines (class "pass-start",
`data-step`). The run's last step is the stop: a red line (class "stop", `data-step`) labelled
with the stop reason. Each scored check is a dot (`data-step`, `data-score`) at the step that
produced the scored x̂0: the first step at or after the previous check whose timestep is the
check's. Without a trace (older sidecars) the score plot's x axis is the check number.
Missing values (NaN, recorded as null) break the lines.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

LOSS_TERMS = ("pcdm_loss", "pcdm_mse", "pcdm_per", "pcdm_adv", "disc_loss", "deg", "mse", "per",
              "adv", "distance", "quality", "grad_norm")
WIDTH, HEIGHT = 640, 220
PANEL_W, PANEL_H, COLUMNS = 200, 80, 3
MARGIN = 36


def pass_starts(t: Sequence[int]) -> list[int]:
  """Steps where a pass begins: 0 and each step whose timestep is above the previous one's."""
  return [n for n in range(len(t)) if n == 0 or t[n] > t[n - 1]]


def check_steps(score_t: Sequence[int], t: Sequence[int]) -> list[int | None]:
  """The step of each check (see the module doc); None for a check the trace does not hold."""
  out: list[int | None] = []
  n = 0
  for ts in score_t:
    found = next((m for m in range(n, len(t)) if t[m] == ts), None)
    out.append(found)
    if found is not None:
      n = found + 1
  return out


def _finite(v: float | None) -> bool:
  return v is not None and math.isfinite(v)


def _range(values: Sequence[float | None]) -> tuple[float, float]:
  finite = [v for v in values if _finite(v)]
  if not finite:
    return 0.0, 1.0
  lo, hi = min(finite), max(finite)
  return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


def _map(v: float, lo: float, hi: float, a: float, b: float) -> float:
  """`v` in [lo, hi] mapped linearly onto [a, b]."""
  return a + (b - a) * (v - lo) / (hi - lo)


def _polylines(xs: Sequence[float], ys: Sequence[float | None], box: tuple[float, ...],
               x_range: tuple[float, float], y_range: tuple[float, float], attrs: str) -> str:
  """Polylines of the finite runs of (x, y) in `box` = (left, top, width, height)."""
  left, top, w, h = box
  out, run = [], []
  for x, y in [*zip(xs, ys), (None, None)]:
    if x is not None and _finite(y):
      run.append(f"{_map(x, *x_range, left, left + w):.1f},"
                 f"{_map(y, *y_range, top + h, top):.1f}")
      continue
    if run:
      out.append(f'<polyline fill="none" {attrs} points="{" ".join(run)}"/>')
    run = []
  return "".join(out)


def _vline(cls: str, n: float, x: float, top: float, h: float, style: str) -> str:
  return (f'<line class="{cls}" data-step="{n:g}" x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" '
          f'y2="{top + h:.1f}" {style}/>')


def _text(x: float, y: float, text: str, anchor: str = "start") -> str:
  return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-family="sans-serif" '
          f'font-size="11">{html.escape(text)}</text>')


def _svg(width: int, height: int, body: str, title: str) -> str:
  return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}"><title>{html.escape(title)}</title>'
          f'<rect width="{width}" height="{height}" fill="white"/>{body}</svg>\n')


def score_plot(record: dict, trace: dict) -> str | None:
  """The DQR score trace of one image as an SVG document, None when it has no scored check.

  `record`: the sidecar's DQR record (`scores`, `score_t`, `stop_reason`, `best_score`);
  `trace`: the sidecar's per-step trace (`t`), possibly {}.
  """
  scores, score_t = record.get("scores") or [], record.get("score_t") or []
  if not scores:
    return None
  t = trace.get("t") or []
  if t:
    xs, x_range, x_label = check_steps(score_t, t), (0, max(len(t) - 1, 1)), "sampling step"
    starts, stop = pass_starts(t), len(t) - 1
  else:
    xs, x_range, x_label = list(range(len(scores))), (0, max(len(scores) - 1, 1)), "check"
    starts, stop = pass_starts(score_t), len(scores) - 1
  box = (MARGIN + 10, 20, WIDTH - 2 * MARGIN - 10, HEIGHT - 56)
  left, top, w, h = box
  y_range = _range(scores)
  body = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#bbb"/>']
  for n in starts:
    body.append(_vline("pass-start", n, _map(n, *x_range, left, left + w), top, h,
                       'stroke="#888" stroke-dasharray="4 3"'))
  body.append(_vline("stop", stop, _map(stop, *x_range, left, left + w), top, h,
                     'stroke="#d62728" stroke-width="2"'))
  kept = [(x, s) for x, s in zip(xs, scores) if x is not None]
  body.append(_polylines([x for x, _ in kept], [s for _, s in kept], box, x_range, y_range,
                         'stroke="#1f77b4" stroke-width="1.5"'))
  for x, s in kept:
    if _finite(s):
      body.append(f'<circle class="check" data-step="{x}" data-score="{s:.6g}" r="2.5" '
                  f'cx="{_map(x, *x_range, left, left + w):.1f}" '
                  f'cy="{_map(s, *y_range, top + h, top):.1f}" fill="#1f77b4"/>')
  best = record.get("best_score")
  label = (f"stop: {record.get('stop_reason', '?')} at {x_label} {stop}, "
           f"{len(starts)} pass{'es' if len(starts) > 1 else ''}"
           + (f", best score {best:.4g}" if _finite(best) else ""))
  body += [_text(left, 13, f"DQR score — {label}"),
           _text(left - 4, top + 8, f"{y_range[1]:.3g}", "end"),
           _text(left - 4, top + h, f"{y_range[0]:.3g}", "end"),
           _text(left, top + h + 14, str(x_range[0])),
           _text(left + w, top + h + 14, str(x_range[1]), "end"),
           _text(left + w / 2, top + h + 28, x_label, "middle")]
  return _svg(WIDTH, HEIGHT, "".join(body), "DQR score trace")


def loss_plot(trace: dict) -> str | None:
  """The loss terms of one image over its sampling steps (`LOSS_TERMS` of the sidecar's trace,
  one panel each with its own y range, pass starts dashed) as an SVG document; None without a
  trace."""
  t = trace.get("t") or []
  terms = [k for k in LOSS_TERMS if k in trace]
  if not t or not terms:
    return None
  x_range = (0, max(len(t) - 1, 1))
  rows = math.ceil(len(terms) / COLUMNS)
  cell_w, cell_h = PANEL_W + 20, PANEL_H + 34
  body = []
  for i, key in enumerate(terms):
    left = 10 + (i % COLUMNS) * cell_w
    top = 18 + (i // COLUMNS) * cell_h
    box = (left, top, PANEL_W, PANEL_H)
    y_range = _range(trace[key])
    body.append(f'<g class="term" data-key="{key}" data-min="{y_range[0]:.6g}" '
                f'data-max="{y_range[1]:.6g}">'
                f'<rect x="{left}" y="{top}" width="{PANEL_W}" height="{PANEL_H}" fill="none" '
                'stroke="#bbb"/>')
    for n in pass_starts(t):
      body.append(_vline("pass-start", n, _map(n, *x_range, left, left + PANEL_W), top,
                         PANEL_H, 'stroke="#888" stroke-dasharray="4 3"'))
    body.append(_polylines(range(len(t)), trace[key], box, x_range, y_range,
                           'stroke="#2ca02c" stroke-width="1.2"'))
    body.append(_text(left, top - 5, f"{key}  [{y_range[0]:.3g}, {y_range[1]:.3g}]") + "</g>")
  width, height = 10 + COLUMNS * cell_w, 18 + rows * cell_h
  body.append(_text(width - 12, height - 8, f"sampling step 0–{len(t) - 1}", "end"))
  return _svg(width, height, "".join(body), "loss terms per sampling step")
