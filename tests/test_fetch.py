"""weights.fetch against a local server (tests/weights_server.py) holding files the tests make:
a tiny Stable Diffusion in the diffusers layout behind the hub's routes (reached through
huggingface_hub, pointed at the server by HF_ENDPOINT), and random VGG16 and ARNIQA files in
their official formats (torch state dicts, the TorchScript regressor). VGG16's state dict holds
torchvision's `features.*` keys only (the converter drops the 0.5 GB classifier anyway), and its
file is named after its own sha256 as torchvision names its files.
"""

import hashlib
import io as bytes_io
import json
import pathlib
import socket

import huggingface_hub
import numpy as np
import pytest
import tiny_runs
import weights_server

from upzeroir_jax import cli
from upzeroir_jax import io as image_io
from upzeroir_jax.metrics import lpips
from upzeroir_jax.models import arniqa, places, sd, sd_configs, vgg

torch = pytest.importorskip("torch")
sd_reference = pytest.importorskip("tests.sd_reference")
from test_arniqa import TorchArniqaEncoder, TorchRegressor, TorchResNet50
from test_vgg import TorchVGG16

from weights import _download, _hub, _manifest, fetch

REPO = "tiny/sd"
# Files of the served repository that the converter never reads: they must not be requested.
UNUSED = ("model_index.json", "sd21-ema-pruned.ckpt", "unet/diffusion_pytorch_model.bin")


def _torch_bytes(obj, jit=False) -> bytes:
  buffer = bytes_io.BytesIO()
  (torch.jit.save if jit else torch.save)(obj, buffer)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """The running server with the repository and files, and the torch networks behind them."""
  root = tmp_path_factory.mktemp("official")
  nets = sd_reference.save_folder(root / "sd", sd_configs.TINY, seed=5, safetensors=True)
  torch.manual_seed(0)
  vgg_net, encoder = TorchVGG16(), TorchArniqaEncoder(TorchResNet50())
  regressor = torch.jit.script(TorchRegressor(torch.randn(1, 4096) * 0.01, torch.tensor(3.0)))
  vgg_bytes = _torch_bytes(vgg_net.state_dict())
  vgg_name = f"vgg16-{hashlib.sha256(vgg_bytes).hexdigest()[:8]}.pth"
  server = weights_server.Server()
  server.start()
  try:
    server.repos[REPO] = {p.relative_to(root / "sd").as_posix(): p.read_bytes()
                          for p in (root / "sd").rglob("*") if p.is_file()}
    server.repos[REPO].update({name: b"unused" for name in UNUSED})
    server.files.update({vgg_name: vgg_bytes, "ARNIQA.pth": _torch_bytes(encoder.state_dict()),
                         "regressor_kadid10k.pth": _torch_bytes(regressor, jit=True)})
    urls = {"vgg16": f"{server.url}/files/{vgg_name}",
            "arniqa_encoder": f"{server.url}/files/ARNIQA.pth",
            "arniqa_regressor": f"{server.url}/files/regressor_kadid10k.pth"}
    with pytest.MonkeyPatch.context() as mp:
      mp.setenv("HF_ENDPOINT", server.url)
      mp.delenv("HF_HUB_OFFLINE", raising=False)
      yield server, urls, {"sd": nets, "vgg": vgg_net, "encoder": encoder, "regressor": regressor}
  finally:
    server.stop()


@pytest.fixture(scope="module")
def fetched(served, tmp_path_factory):
  """A fresh fetch into `<tmp>/checkpoints`: (output folder, steps run, requests made)."""
  server, urls, _ = served
  output = tmp_path_factory.mktemp("fetched") / "checkpoints"
  ran = fetch.fetch(output, REPO, urls=urls)
  return output, ran, list(server.log)


def _files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """Every file fetch wrote, by relative path (huggingface_hub's own `.cache` left out)."""
  return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
          if p.is_file() and ".cache" not in p.parts and p.name != _manifest.NAME}


def test_fresh_fetch_converts_exactly_the_served_weights(served, fetched):
  _, _, nets = served
  output, ran, log = fetched
  assert ran == ["sd21_base", "vgg16", "arniqa_encoder", "arniqa_regressor", "lpips_vgg"]
  kernel = vgg.load(output / "vgg16.safetensors")["conv3_2"]["kernel"]
  np.testing.assert_array_equal(kernel, nets["vgg"].features[12].weight.detach().numpy()
                                .transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(lpips.load(output / "lpips_vgg.safetensors")["net"]["conv3_2"]
                                ["kernel"], kernel)
  model = arniqa.load(*arniqa.checkpoint_files(output / places.ARNIQA_DIR))
  np.testing.assert_array_equal(model.weight, nets["regressor"].weights.detach().numpy()[0])
  np.testing.assert_array_equal(
      model.encoder["params"]["conv1"]["kernel"],
      nets["encoder"].model[0].weight.detach().numpy().transpose(2, 3, 1, 0))
  model = sd.load(output / places.SD_DIR)
  np.testing.assert_array_equal(
      model.vae_params["decoder"]["conv_out"]["kernel"],
      nets["sd"]["vae"].decoder.conv_out.weight.detach().numpy().transpose(2, 3, 1, 0))
  # Only the files the converter reads, the safetensors weights rather than the .bin.
  hub_gets = {p.split("/resolve/")[1].split("/", 1)[1] for m, p, _ in log
              if m == "GET" and "/resolve/" in p}
  assert hub_gets == set(_hub.CONFIGS) | {
      "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
      "text_encoder/model.safetensors"}
  assert not any(name in p for _, p, _ in log for name in UNUSED)


def test_the_manifest_holds_the_sha256_of_every_file_and_what_was_checked(fetched):
  output, _, _ = fetched
  recorded = json.loads((output / _manifest.NAME).read_text())["files"]
  files = _files(output)
  assert set(recorded) == set(files)
  for name, path in files.items():
    assert recorded[name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), name
    assert recorded[name]["bytes"] == path.stat().st_size
  checked = {k: v.get("checked") for k, v in recorded.items()}
  assert checked["downloads/sd21_base/unet/diffusion_pytorch_model.safetensors"] == "sha256"
  assert checked["downloads/sd21_base/unet/config.json"] == "git-sha1"
  assert checked["downloads/ARNIQA.pth"] == "none published"
  assert [v for k, v in checked.items() if k.startswith("downloads/vgg16-")] == ["sha256 prefix"]
  assert recorded["vgg16.safetensors"]["made_by"] == "vgg16"
  assert recorded["sd21_base/sd_config.json"]["made_by"] == "sd21_base"


def test_a_second_run_checks_every_file_and_skips_without_the_network(served, fetched):
  server, urls, _ = served
  output, _, _ = fetched
  stamps = {k: p.stat().st_mtime_ns for k, p in _files(output).items()}
  before = len(server.log)
  assert fetch.fetch(output, REPO, urls=urls) == []
  assert server.log[before:] == []
  assert {k: p.stat().st_mtime_ns for k, p in _files(output).items()} == stamps


@pytest.mark.slow
def test_restore_runs_on_the_fetched_weights(fetched, tmp_path):
  output, _, _ = fetched
  image_io.write_image(tmp_path / "a.png", np.random.default_rng(0).random((48, 40, 3)))
  flags = [f for f in tiny_runs.CLI_FLAGS if not f.startswith("--model=")]
  code = cli.main(["upzeroir", "restore", f"--input={tmp_path / 'a.png'}",
                   f"--output={tmp_path / 'out.png'}", f"--model={output / places.SD_DIR}",
                   f"--vgg={output / 'vgg16.safetensors'}", *flags])
  assert code == 0
  meta = json.loads((tmp_path / "out.json").read_text())
  assert meta["model"]["source"] == str(output / places.SD_DIR)
  assert meta["model"]["smoke_test"] is False
  assert image_io.read_image(tmp_path / "out.png").shape == (48, 40, 3)


def test_a_damaged_converted_file_is_converted_again_from_the_checked_download(served, fetched):
  server, urls, nets = served
  output, _, _ = fetched
  target = output / "vgg16.safetensors"
  good = target.read_bytes()
  target.write_bytes(good[:-8] + b"\0" * 8)
  before = len(server.log)
  assert fetch.fetch(output, REPO, urls=urls) == ["vgg16"]
  assert server.log[before:] == []
  np.testing.assert_array_equal(vgg.load(target)["conv1_1"]["bias"],
                                nets["vgg"].features[0].bias.detach().numpy())
  assert _manifest.Manifest.read(output).matches(target)
  # A damaged download (one without a published hash, checked against the manifest only) is
  # fetched again before it is converted.
  download = output / "downloads" / "regressor_kadid10k.pth"
  download.write_bytes(download.read_bytes()[:-8] + b"\0" * 8)
  (output / places.ARNIQA_DIR / arniqa.regressor_file()).unlink()
  before = len(server.log)
  assert fetch.fetch(output, REPO, urls=urls) == ["arniqa_regressor"]
  assert server.log[before:] == [("GET", "/files/regressor_kadid10k.pth", None)]
  assert download.read_bytes() == server.files["regressor_kadid10k.pth"]


def test_an_interrupted_download_resumes_where_it_stopped(served, tmp_path):
  server, urls, _ = served
  data = server.files["regressor_kadid10k.pth"]
  manifest = _manifest.Manifest.read(tmp_path)
  server.truncate.add("regressor_kadid10k.pth")
  with pytest.raises(_download.FetchError) as e:
    fetch.fetch_plain(urls["arniqa_regressor"], tmp_path, manifest)
  half = len(data) // 2
  assert str(e.value) == (f"regressor_kadid10k.pth: the download stopped after {half} of "
                          f"{len(data)} bytes ({urls['arniqa_regressor']}); run the same "
                          "command again to resume, pass --mirror=URL of a folder that holds "
                          "regressor_kadid10k.pth")
  assert (tmp_path / "regressor_kadid10k.pth.part").stat().st_size == half
  before = len(server.log)
  fetch.fetch_plain(urls["arniqa_regressor"], tmp_path, manifest)
  assert server.log[before:] == [("GET", "/files/regressor_kadid10k.pth", f"bytes={half}-")]
  assert (tmp_path / "regressor_kadid10k.pth").read_bytes() == data
  assert manifest.files["regressor_kadid10k.pth"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_an_interrupted_hub_download_resumes_through_huggingface_hub(served, tmp_path,
                                                                   monkeypatch):
  """huggingface_hub (1.0 on) resumes a cut transfer within the call, from the bytes it has;
  a download that still fails is one line saying that the same command resumes it."""
  server, _, _ = served
  name = "unet/diffusion_pytorch_model.safetensors"
  # huggingface_hub writes in blocks of 10 MiB: a cut after 12 MiB leaves one on disk.
  data = np.random.default_rng(0).bytes(24 << 20)
  server.repos["tiny/large"] = {name: data}
  server.truncate.add(f"tiny/large/{name}")
  manifest = _manifest.Manifest.read(tmp_path)
  before = len(server.log)
  _hub.fetch_file("tiny/large", name, tmp_path, "main", manifest)
  gets = [r for m, _, r in server.log[before:] if m == "GET"]
  assert len(gets) == 2 and gets[0] is None and 0 < int(gets[1][6:-1]) <= len(data) // 2, gets
  assert (tmp_path / name).read_bytes() == data
  assert manifest.files[name]["checked"] == "sha256"

  def cut(*args, **kwargs):
    raise OSError("peer closed connection without sending complete message body")

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", cut)
  (tmp_path / name).unlink()
  with pytest.raises(_download.FetchError, match=f"^{name}: the download failed .*; run the same "
                                                 "command again to resume, pass --hub_id="):
    _hub.fetch_file("tiny/large", name, tmp_path, "main", _manifest.Manifest.read(tmp_path))


def test_a_missing_file_is_one_line_naming_it_its_url_and_the_option(served, tmp_path):
  server, _, _ = served
  url = f"{server.url}/files/vgg16-00000000.pth"
  with pytest.raises(_download.FetchError) as e:
    fetch.fetch_plain(url, tmp_path, _manifest.Manifest.read(tmp_path))
  assert str(e.value) == (f"vgg16-00000000.pth: HTTP 404 Not Found ({url}); pass --mirror=URL "
                          "of a folder that holds vgg16-00000000.pth")
  server.repos["tiny/incomplete"] = {k: v for k, v in server.repos[REPO].items()
                                     if k != "tokenizer/vocab.json"}
  with pytest.raises(_download.FetchError) as e:
    _hub.fetch("tiny/incomplete", tmp_path, _manifest.Manifest.read(tmp_path))
  assert str(e.value) == (f"tokenizer/vocab.json: not found (HTTP 404) ({server.url}/tiny/"
                          "incomplete/resolve/main/tokenizer/vocab.json); pass "
                          "--hub_id=OWNER/NAME (another copy of SD 2.1-base) or set HF_ENDPOINT")


def test_weights_in_bin_files_are_taken_where_there_are_no_safetensors(served, tmp_path):
  server, _, _ = served
  repo = {k: v for k, v in server.repos[REPO].items() if not k.startswith("text_encoder/model")}
  repo["text_encoder/pytorch_model.bin"] = b"weights"
  server.repos["tiny/bin"] = repo
  manifest = _manifest.Manifest.read(tmp_path)
  _hub.fetch("tiny/bin", tmp_path, manifest)
  assert (tmp_path / "text_encoder" / "pytorch_model.bin").read_bytes() == b"weights"
  assert "text_encoder/model.safetensors" not in manifest.files


def test_a_file_that_differs_from_its_published_hash_is_removed(served, tmp_path):
  server, _, _ = served
  server.files["vgg16-00000000.pth"] = b"not the file its name promises"
  url = f"{server.url}/files/vgg16-00000000.pth"
  digest = hashlib.sha256(server.files["vgg16-00000000.pth"]).hexdigest()
  with pytest.raises(_download.FetchError) as e:
    fetch.fetch_plain(url, tmp_path, _manifest.Manifest.read(tmp_path))
  assert str(e.value) == (f"vgg16-00000000.pth: sha256 {digest} does not start with 00000000 as "
                          f"its name says; the file was removed ({url}); run the same command "
                          "again, or pass --mirror=URL of a folder that holds vgg16-00000000.pth")
  assert not (tmp_path / "vgg16-00000000.pth").exists()
  name = "unet/config.json"
  original = server.repos[REPO][name]
  server.instead[f"{REPO}/{name}"] = original.replace(b"{", b" ", 1)
  with pytest.raises(_download.FetchError, match=(
      rf"^unet/config.json: git-sha1 [0-9a-f]{{40}} differs from the published "
      rf"{weights_server.etag(name, original)}; the file was removed \({server.url}/{REPO}/"
      r"resolve/main/unet/config.json\); run the same command again, or pass --hub_id=")):
    _hub.fetch_file(REPO, name, tmp_path, "main", _manifest.Manifest.read(tmp_path))
  assert not (tmp_path / name).exists()


def test_a_corrupted_download_without_a_published_hash_fails_its_conversion(served, fetched,
                                                                            tmp_path):
  server, urls, nets = served
  output, _, _ = fetched
  good = server.files["regressor_kadid10k.pth"]
  converted = output / "arniqa" / arniqa.regressor_file()
  converted.unlink()
  (output / "downloads" / "regressor_kadid10k.pth").unlink()
  server.files["regressor_kadid10k.pth"] = b"<html>a proxy's error page</html>"
  try:
    with pytest.raises(_download.FetchError) as e:
      fetch.fetch(output, REPO, urls=urls)
  finally:
    server.files["regressor_kadid10k.pth"] = good
  assert str(e.value).startswith("regressor_kadid10k.pth: cannot convert it (")
  assert str(e.value).endswith(f"({urls['arniqa_regressor']}); the file was removed: run the "
                               "same command again, or pass --mirror=URL of a folder that holds "
                               "regressor_kadid10k.pth")
  assert not (output / "downloads" / "regressor_kadid10k.pth").exists()
  mirror = tmp_path / "mirror"  # a local folder as --mirror
  mirror.mkdir()
  (mirror / "regressor_kadid10k.pth").write_bytes(good)
  assert fetch.fetch(output, REPO, mirror=str(mirror), urls=urls) == ["arniqa_regressor"]
  model = arniqa.load(*arniqa.checkpoint_files(output / places.ARNIQA_DIR))
  np.testing.assert_array_equal(model.weight, nets["regressor"].weights.detach().numpy()[0])
  entry = json.loads((output / _manifest.NAME).read_text())["files"]
  assert entry["downloads/regressor_kadid10k.pth"]["url"] == (mirror / "regressor_kadid10k.pth"
                                                               ).as_uri()


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_refused_connection_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
  url = f"http://127.0.0.1:{_closed_port()}"
  with pytest.raises(_download.FetchError, match=(
      rf"^ARNIQA.pth: cannot connect \(.*refused.*\) \({url}/ARNIQA.pth\); check the network, "
      r"pass --mirror=URL of a folder that holds ARNIQA.pth$")):
    fetch.fetch_plain(f"{url}/ARNIQA.pth", tmp_path, _manifest.Manifest.read(tmp_path))
  monkeypatch.setenv("HF_ENDPOINT", url)
  assert fetch.main([fetch.PROG, f"--output={tmp_path}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("weights.fetch: error: unet/config.json: cannot "
                                             "connect (")
  assert err[0].endswith(f"({url}/{places.SD_HUB_ID}/resolve/main/unet/config.json); check the "
                         "network, pass --hub_id=OWNER/NAME (another copy of SD 2.1-base) or "
                         "set HF_ENDPOINT")
