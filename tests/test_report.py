"""HTML reports (`upzeroir_jax.report`, `eval.report`): the plots against hand-derived positions,
the page of a tiny run in headless Chromium, a 500-image page's open time, the CLI's
`--report` and eval.tables' links.

The tiny run is made by the real `eval.run` (pre-flight, `--task=auto` identification, sidecars,
run.json) with a stand-in for the compiled restoration: it returns 1 − y (so output and input
differ everywhere) and a scripted sampling story — two passes, seven scored checks, stopped at
the restart cap — and nothing compiles. Set REPORT_SCREENSHOT=path.png to keep the screenshot
(docs/evaluation.md shows one made so).
"""

import csv
import html.parser
import io as bytes_io
import json
import os
import pathlib
import shutil
import time
import xml.etree.ElementTree as ET

import jax.numpy as jnp
import numpy as np
import pytest
import report_browser
import stand_in
from PIL import Image

from eval import report as report_bin
from eval import run as run_bin
from eval import score, tables
from upzeroir_jax import cli, io, loading
from upzeroir_jax.report import page, plots, records
from upzeroir_jax.sampler import state

# The scripted story: pass 1 from t = 90 to 0, a re-initiated pass from t = 50 (steps 10–15).
T = [90, 80, 70, 60, 50, 40, 30, 20, 10, 0, 50, 40, 30, 20, 10, 0]
SCORE_T = [70, 50, 30, 10, 40, 20, 0]
SCORES = [0.31, 0.35, 0.42, 0.44, 0.40, 0.47, 0.49]
CHECK_STEPS = [2, 4, 6, 8, 11, 13, 15]  # by hand: first step at/after the last check with that t
TRACE_LEN = 20
SVG = "{http://www.w3.org/2000/svg}"
# Hand-set scores: NIQE for both images, PSNR only for the one with a reference.
METRICS = {"dark": {"psnr": 21.5, "niqe": 5.1}, "noisy": {"niqe": 6.3}}


def _story() -> dict[str, np.ndarray]:
  """One image's `restore` info: the trace (`TRACE_LEN` rows, 16 written) and the DQR info."""
  pad = TRACE_LEN - len(T)
  info = {"t": np.array(T + [-1] * pad, np.int32),
          "stage": np.array([1] * 4 + [2] * 8 + [3] * 4 + [0] * pad, np.int32)}
  info["guard"] = np.zeros(TRACE_LEN, np.int32)
  for i, key in enumerate(k for k in state.TRACE_KEYS if k not in info):
    values = (i + 1) * np.linspace(1.0, 2.0, len(T)) ** (1 + i % 3)
    info[key] = np.concatenate([values, np.zeros(pad)]).astype(np.float32)
  return {**info, "checks": np.int32(7), "steps": np.int32(16), "unet_evals": np.int32(16),
          "restarts": np.int32(1), "stop_reason": np.int32(3), "stop_t": np.int32(0),
          "failure": np.int32(0), "failure_t": np.int32(-1), "recoveries": np.int32(0),
          "best_score": np.float32(max(SCORES)),
          "scores": np.array(SCORES + [np.nan] * (TRACE_LEN - 7), np.float32),
          "score_t": np.array(SCORE_T + [-1] * (TRACE_LEN - 7), np.int32)}


def _fake_models(mp: pytest.MonkeyPatch) -> None:
  """No model loads and nothing compiles: the 'compiled restoration' returns 1 − y and the
  story for every row."""
  mp.setattr(loading, "load_models", lambda source, **kw: loading.Loaded(
      models=None, source=source, smoke_test=True, scorer="none",
      text_context=lambda p: None, multiple=64, notes={"backbone": "random weights"}))

  def restored(ys, keys, weights):
    del keys, weights
    info = {k: jnp.broadcast_to(jnp.asarray(v), (len(ys), *np.shape(v)))
            for k, v in _story().items()}
    return 1.0 - ys, info

  stand_in.patch_driver(mp, restored)


def _images(folder: pathlib.Path) -> None:
  """in/dark.png (low light) and in/noisy.png, 96×128; gt/dark.png the clean one."""
  yy, xx = np.mgrid[0:96, 0:128] / 128.0
  clean = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.3 + 0.5 * xx],
                   -1)
  noisy = clean + 0.2 * np.random.default_rng(0).standard_normal(clean.shape)
  io.write_image(folder / "in" / "dark.png", 0.25 * clean)
  io.write_image(folder / "in" / "noisy.png", np.clip(noisy, 0, 1))
  io.write_image(folder / "gt" / "dark.png", clean)


TINY_ARGS = ("--model=tiny", "--steps=4", "--size=64", "--scorer=none", "--batch=2",
             "--override=dqr=true")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """An eval.run folder of 2 images (one with a reference), scored, with its report."""
  root = tmp_path_factory.mktemp("report")
  _images(root)
  run = root / "run"
  with pytest.MonkeyPatch.context() as mp:
    _fake_models(mp)
    assert run_bin.main(["eval.run", f"--dataset_dir={root / 'in'}", f"--gt_dir={root / 'gt'}",
                         f"--output_dir={run}", "--task=auto", "--benchmark=tiny",
                         *TINY_ARGS]) == 0
  rows = [{"name": n, **{m: METRICS[n].get(m) for m in score.METRICS}, "restored": "", "gt": ""}
          for n in METRICS]
  score.write(rows, {"count": 2, "means": {"niqe": 5.7}, "missing": {}}, run, {})
  assert report_bin.main(["eval.report", f"--run_dir={run}"]) == 0
  return root


def _svg(text: str) -> ET.Element:
  return ET.fromstring(text)


def _steps(svg: ET.Element, cls: str) -> list[float]:
  return [float(e.get("data-step")) for e in svg.iter() if e.get("class") == cls]


def test_score_plot_marks_checks_passes_and_stop_where_the_story_puts_them():
  record = {"scores": SCORES, "score_t": SCORE_T, "stop_reason": "restart_cap",
            "best_score": 0.49}
  svg = _svg(plots.score_plot(record, {"t": T}))
  assert _steps(svg, "pass-start") == [0, 10]
  assert _steps(svg, "stop") == [15]
  circles = [e for e in svg.iter(f"{SVG}circle")]
  assert [int(c.get("data-step")) for c in circles] == CHECK_STEPS
  # x: steps 0..15 across the box; y: the highest score at the top edge, the lowest at the bottom.
  box = next(e for e in svg.iter(f"{SVG}rect") if e.get("stroke"))
  left, top, w, h = (float(box.get(k)) for k in ("x", "y", "width", "height"))
  for c, step, s in zip(circles, CHECK_STEPS, SCORES):
    assert float(c.get("cx")) == pytest.approx(left + w * step / 15, abs=0.06)
    assert float(c.get("cy")) == pytest.approx(top + h * (0.49 - s) / (0.49 - 0.31), abs=0.06)
  assert "restart_cap" in ET.tostring(svg, encoding="unicode")
  # Without a trace: the check number on x, a pass where the timestep jumps back up.
  bare = _svg(plots.score_plot(record, {}))
  assert _steps(bare, "pass-start") == [0, 4] and _steps(bare, "stop") == [6]
  assert plots.score_plot({"enabled": False, "steps": 4}, {}) is None


def test_loss_plot_draws_each_term_on_its_own_scale_and_breaks_at_missing_values():
  trace = {"t": T, "mse": [float(n * n) for n in range(16)],
           "quality": [1.0] * 5 + [None] + [2.0] * 10}
  svg = _svg(plots.loss_plot(trace))
  panels = {g.get("data-key"): g for g in svg.iter(f"{SVG}g")}
  assert set(panels) == {"mse", "quality"}
  mse = panels["mse"]
  rect = mse.find(f"{SVG}rect")
  left, top, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
  (line,) = mse.findall(f"{SVG}polyline")
  points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
  for n, (x, y) in enumerate(points):
    assert x == pytest.approx(left + w * n / 15, abs=0.06)
    assert y == pytest.approx(top + h - h * n * n / 225, abs=0.06)
  assert _steps(mse, "pass-start") == [0, 10]
  assert len(panels["quality"].findall(f"{SVG}polyline")) == 2  # the null splits the line
  assert plots.loss_plot({}) is None


def test_dqr_record_reads_both_sidecar_names():
  assert records.dqr_record({"sampling": {"enabled": False}}) == {"enabled": False}
  assert records.dqr_record({"dqr": {"enabled": True, "steps": 3}})["steps"] == 3
  assert records.dqr_record({"config": {"dqr": True}}) == {}


class _Page(html.parser.HTMLParser):
  """Rows of the image table, image sources and section ids of a report page."""

  def __init__(self):
    super().__init__()
    self.rows, self.srcs, self.sections, self._body = 0, [], [], False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self._body = self._body or tag == "tbody"
    self.rows += tag == "tr" and self._body
    if tag == "img":
      self.srcs.append(attrs["src"])
    if tag == "section":
      self.sections.append(attrs["id"])

  def handle_endtag(self, tag):
    self._body = self._body and tag != "tbody"


def test_report_page_of_the_tiny_run(tiny_run):
  run = tiny_run / "run"
  text = (run / "report.html").read_text()
  parsed = _Page()
  parsed.feed(text)
  assert parsed.rows == 2 and len(parsed.sections) == 2
  for src in parsed.srcs:  # every image and plot is a file next to the page, none remote
    assert (run / src).resolve().is_file(), src
  assert not any(s.startswith(("http:", "https:", "//")) for s in parsed.srcs)
  for name in ("dark", "noisy"):
    sidecar = json.loads((run / "restored" / f"{name}.json").read_text())
    assert sidecar["trace"]["t"] == T  # the pipeline records the written rows only
    assert records.dqr_record(sidecar)["score_t"] == SCORE_T
    assert f"<li>detected: {sidecar['auto']['detected']}</li>" in text
    assert f"<li>sigma: {sidecar['auto']['sigma']:.4g}</li>" in text
  assert text.count("<figcaption>reference</figcaption>") == 1
  assert "<dt>benchmark</dt><dd>tiny</dd>" in text and "backbone: random weights" in text


def _load_all_images(driver) -> list[dict]:
  """Scrolls every image into view (they load lazily) and waits until each has finished."""
  from selenium.webdriver.support.ui import WebDriverWait

  for img in driver.find_elements("css selector", "img"):
    driver.execute_script("arguments[0].scrollIntoView()", img)
  WebDriverWait(driver, 20).until(lambda d: d.execute_script(
      "return [...document.images].every(i => i.complete)"))
  return driver.execute_script(
      "return [...document.images].map(i => ({src: i.src, w: i.naturalWidth}))")


def _same_picture(stack, image: np.ndarray, columns: slice = slice(None)) -> None:
  """The slider's rendered pixels equal `image` `[H, W, 3]` in `columns`, up to a shift of one
  pixel (the element's sub-pixel position may round either way) and 2 codes."""
  shot = Image.open(bytes_io.BytesIO(stack.screenshot_as_png)).convert("RGB")
  pixels = np.asarray(shot, np.float32) / 255
  h, w = image.shape[:2]
  assert pixels.shape == image.shape
  inner = pixels[1:-1, 1:-1][:, columns]
  error = min(np.abs(inner - image[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx][:, columns]).max()
              for dy in (-1, 0, 1) for dx in (-1, 0, 1))
  assert error <= 2 / 255


@pytest.fixture(scope="module")
def driver():
  with report_browser.browser() as d:
    yield d


def test_report_in_chromium(tiny_run, driver):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import Select

  run = tiny_run / "run"
  driver.get((run / "report.html").as_uri())
  loaded = _load_all_images(driver)
  assert len(loaded) == 2 * 2 + 3 + 2 + 2 * 2 + 2 * 2  # table, thumbs, sliders, plots
  assert all(i["w"] > 0 for i in loaded), loaded
  def rows():
    return [r.text.split()[0] for r in
            driver.find_elements("css selector", "table.images tbody tr")]

  assert rows() == ["dark", "noisy"]
  heads = {h.text: h for h in driver.find_elements("css selector", "table.images th")}
  driver.execute_script("window.scrollTo(0, 0)")
  for head, want in (("NIQE ↓", ["dark", "noisy"]), ("NIQE ↓", ["noisy", "dark"]),
                     ("PSNR ↑", ["dark", "noisy"]), ("PSNR ↑", ["dark", "noisy"])):
    heads[head].click()  # ascending, then descending; a missing PSNR stays last both ways
    assert rows() == want, head
  # The slider of dark.png: left of the split the input (or the reference), right the output.
  section = driver.find_element("id", page._key("dark"))
  driver.execute_script("arguments[0].scrollIntoView()", section)
  stack = section.find_element("css selector", ".stack")
  split = section.find_element("css selector", "input.split")
  output = io.read_image(run / "restored" / "dark.png")
  split.send_keys(Keys.HOME)
  assert split.get_attribute("value") == "0"
  _same_picture(stack, output)
  split.send_keys(Keys.END)
  _same_picture(stack, io.read_image(tiny_run / "in" / "dark.png"))
  Select(section.find_element("css selector", "select")).select_by_visible_text("reference")
  driver.execute_script("return new Promise(r => { const i = arguments[0]; "
                        "i.complete ? r() : i.onload = r; })",
                        section.find_element("css selector", "img.before"))
  reference = io.read_image(tiny_run / "gt" / "dark.png")
  _same_picture(stack, reference)
  split.send_keys(Keys.HOME)
  for _ in range(25):
    split.send_keys(Keys.ARROW_RIGHT)  # 0.1 % per key: the split moves with the keys
  assert float(split.get_attribute("value")) == pytest.approx(2.5)
  ActionChains(driver).move_to_element(split).click().perform()  # a click mid-track
  at = round(float(split.get_attribute("value")) / 100 * output.shape[1]) - 1  # inner column
  assert 30 < at < 100
  _same_picture(stack, reference, slice(0, at - 2))  # left of the split: the reference
  _same_picture(stack, output, slice(at + 2, None))  # right of it: the output
  driver.set_window_size(1280, 1700)
  driver.execute_script("window.scrollTo(0, 0)")
  shot = Image.open(bytes_io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
  pixels = np.asarray(shot)
  assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
  if os.environ.get("REPORT_SCREENSHOT"):
    shot.quantize(128).save(os.environ["REPORT_SCREENSHOT"], optimize=True)


def _many(run: pathlib.Path, target: pathlib.Path, n: int) -> None:
  """`target`: an eval.run folder of `n` copies of the tiny run's dark.png, scored."""
  restored = target / "restored"
  restored.mkdir(parents=True)
  sidecar = json.loads((run / "restored" / "dark.json").read_text())
  rng = np.random.default_rng(0)
  with open(target / "scores.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["name", "psnr", "niqe"])
    writer.writeheader()
    for i in range(n):
      name = f"img{i:03d}"
      shutil.copy(run / "restored" / "dark.png", restored / f"{name}.png")
      (restored / f"{name}.json").write_text(json.dumps({**sidecar, "output": f"{name}.png"}))
      writer.writerow({"name": name, "psnr": 20 + rng.random(), "niqe": 5 + rng.random()})


def test_report_of_500_images_opens_fast(tiny_run, driver, tmp_path):
  _many(tiny_run / "run", tmp_path, 500)
  t0 = time.perf_counter()
  path = page.write(tmp_path)
  written = time.perf_counter() - t0
  driver.get(path.as_uri())
  load_ms = driver.execute_script(
      "return performance.getEntriesByType('navigation')[0].loadEventEnd")
  rows = driver.find_elements("css selector", "table.images tbody tr")
  print(f"500-image report: written in {written:.1f} s, opened (load event) in {load_ms:.0f} ms")
  assert len(rows) == 500
  assert load_ms < 8000  # under 2 s measured (docs/evaluation.md); loose for a busy machine


def test_cli_report_flag_writes_the_output_folders_report(tiny_run, tmp_path, monkeypatch,
                                                          capsys):
  _fake_models(monkeypatch)
  out = tmp_path / "out"
  assert cli.main(["upzeroir", "restore", f"--input={tiny_run / 'in'}", f"--output={out}",
                   "--task=lowlight", "--report", *TINY_ARGS]) == 0
  assert f"report -> {out / 'report.html'}" in capsys.readouterr().out
  parsed = _Page()
  parsed.feed((out / "report.html").read_text())
  assert parsed.rows == 2 and not (tmp_path / "report.html").exists()


def test_tables_link_each_row_to_its_report(tiny_run, tmp_path):
  run = tiny_run / "run"
  table = tables.Table("tiny", (("tiny", ("psnr",)),), {})
  text = tables.render(table, tables.find_runs(tiny_run), links_from=tmp_path)
  ours = [line for line in text.splitlines() if "upzeroir-jax" in line]
  link = pathlib.Path(os.path.relpath(run / "report.html", tmp_path)).as_posix()
  assert len(ours) == 1 and f"[tiny report]({link})" in ours[0]
  assert (tmp_path / link).resolve() == (run / "report.html").resolve()


def test_planted_links_in_report_files_are_replaced_not_followed(tiny_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(tiny_run / "run", run, symlinks=True)
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  planted = sorted((run / "report_files").iterdir())
  assert planted
  for path in planted:
    path.unlink()
    path.symlink_to(victim)
  assert report_bin.main(["eval.report", f"--run_dir={run}"]) == 0
  assert victim.read_text() == "keep me"
  for path in planted:
    assert path.is_file() and not path.is_symlink(), path


def test_inputs_browsers_cannot_show_get_a_png_copy(tmp_path):
  img = np.random.default_rng(1).random((5, 7, 3))
  io.write_image(tmp_path / "a.tif", img)
  copy = page._viewable(tmp_path / "a.tif", tmp_path / "files", "a-input")
  assert copy.suffix == ".png"
  np.testing.assert_array_equal(io.read_image(copy), io.read_image(tmp_path / "a.tif"))
  assert page._viewable(tmp_path / "b.png", tmp_path, "b") == tmp_path / "b.png"


def test_report_of_a_folder_without_a_run_says_so_in_one_line(tmp_path, capsys):
  assert report_bin.main(["eval.report", f"--run_dir={tmp_path / 'none'}"]) == 2
  assert report_bin.main(["eval.report", f"--run_dir={tmp_path}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  empty = (f"eval.report: error: {tmp_path}: no restored images with their JSON sidecars "
           "(run `upzeroir restore` or python -m eval.run into it first)")
  assert err == [f"eval.report: error: --run_dir={tmp_path / 'none'}: no such folder", empty]
