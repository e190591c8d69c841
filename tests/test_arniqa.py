"""ARNIQA against a PyTorch reference of the published pipeline (random weights, real shapes).

The reference mirrors torchvision's resnet50 module layout (so the state-dict keys are the real
ones), miccunifi/ARNIQA's encoder wrapper (`model.<i>` + `projector`), a TorchScript ridge
regressor with `weights`/`biases` tensors, the README's half-scale resize (bilinear, antialiased)
and hubconf's score scaling.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from upzeroir_jax.models import arniqa, flat_checkpoint, resnet, vgg
from weights import _torch_utils, convert_arniqa

torch.set_num_threads(2)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RANGES = {"kadid10k": (1.0, 5.0, False), "live": (1.0, 100.0, True)}  # hubconf.py values


class TorchBottleneck(nn.Module):

  def __init__(self, inplanes, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(width * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or inplanes != width * 4:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, width * 4, 1, stride, bias=False),
                                      nn.BatchNorm2d(width * 4))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self.relu(self.bn3(self.conv3(y)) + identity)


class TorchResNet50(nn.Module):
  """torchvision.models.resnet50's module tree (children order and names)."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for stage, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                     (512, 3, 2)), 1):
      layers = []
      for i in range(blocks):
        layers.append(TorchBottleneck(inplanes, width, stride if i == 0 else 1))
        inplanes = width * 4
      setattr(self, f"layer{stage}", nn.Sequential(*layers))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(2048, 1000)


class TorchArniqaEncoder(nn.Module):
  """miccunifi/ARNIQA models/resnet.py ResNet(embedding_dim=128, use_norm=True)."""

  def __init__(self, net):
    super().__init__()
    self.model = nn.Sequential(*list(net.children())[:-1])
    self.projector = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128))

  def forward(self, x):
    return F.normalize(self.model(x).view(-1, 2048), dim=1)


class TorchRegressor(nn.Module):

  def __init__(self, weights, biases):
    super().__init__()
    self.weights = nn.Parameter(weights)
    self.biases = nn.Parameter(biases)

  def forward(self, x):
    return x @ self.weights.t() + self.biases


def _randomize_batch_norms(module, gen):
  for m in module.modules():
    if isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      m.weight.data = 0.5 + torch.rand(n, generator=gen)
      m.bias.data = 0.2 * torch.randn(n, generator=gen)
      m.running_mean.data = 0.2 * torch.randn(n, generator=gen)
      m.running_var.data = 0.5 + torch.rand(n, generator=gen)


def _torch_raw_score(encoder, regressor, img):
  """README preprocessing + hubconf.ARNIQA.forward up to the regressor: `[B]` raw scores."""
  x = torch.from_numpy(img).permute(0, 3, 1, 2)
  h, w = x.shape[-2:]
  x_ds = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", antialias=True,
                       align_corners=False)
  mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
  with torch.no_grad():
    f = torch.hstack((encoder((x - mean) / std), encoder((x_ds - mean) / std)))
    return regressor(f)[:, 0].numpy()


def _hubconf_scale(raw, dataset):
  """hubconf.ARNIQA._scale_score to the new range (0, 1)."""
  lo, hi, dmos = RANGES[dataset]
  scaled = 0.0 + (raw - lo) * (1.0 / (hi - lo))
  return 1.0 - scaled if dmos else scaled


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Torch encoder + regressor, their official-format files, and our converted checkpoints."""
  gen = torch.Generator().manual_seed(0)
  torch.manual_seed(0)
  net = TorchResNet50().eval()
  _randomize_batch_norms(net, gen)
  encoder = TorchArniqaEncoder(net).eval()
  # Intercept 1 = the low end of KADID-10k: its score is then the features' projection alone.
  regressor = torch.jit.script(TorchRegressor(torch.randn(1, 4096, generator=gen) * 0.5,
                                              torch.tensor(1.0)))
  src, out = tmp_path_factory.mktemp("official"), tmp_path_factory.mktemp("converted")
  torch.save(encoder.state_dict(), src / "ARNIQA.pth")
  torch.jit.save(regressor, str(src / "regressor_kadid10k.pth"))
  torch.jit.save(regressor, str(src / "regressor_live.pth"))
  convert_arniqa.convert(out, str(src / "ARNIQA.pth"), str(src / "regressor_kadid10k.pth"))
  convert_arniqa.convert(out, regressor=str(src / "regressor_live.pth"))
  return encoder, regressor, out, net


@pytest.fixture(scope="module")
def image():
  return np.random.default_rng(1).random((2, 64, 57, 3), dtype=np.float32)


@jax.jit
def _jax_outputs(model, x):
  """The score and the full-scale ResNet-50 intermediates, compiled once for all tests."""
  _, feats = resnet.ResNet50().apply(model.encoder, vgg.imagenet_normalize(x))
  return arniqa.score(model, x), feats


@pytest.fixture(scope="module")
def torch_raw(reference, image):
  encoder, regressor, _, _ = reference
  return _torch_raw_score(encoder, regressor, image)


def test_converter_accepts_torchvision_and_arniqa_keys(reference):
  encoder, _, _, net = reference
  plain = convert_arniqa.convert_resnet50(_torch_utils.to_numpy(net.state_dict()))
  wrapped = convert_arniqa.convert_resnet50(_torch_utils.to_numpy(encoder.state_dict()))
  assert jax.tree.structure(plain) == jax.tree.structure(wrapped)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain),
                                                   jax.tree.leaves(wrapped), strict=True))
  assert plain["params"]["layer4_0"]["conv2"]["kernel"].shape == (3, 3, 512, 512)


@pytest.mark.parity
@pytest.mark.slow
def test_resnet50_matches_torchvision_layout(reference, image):
  encoder, _, out, _ = reference
  model = arniqa.load(convert_arniqa.encoder_path(out),
                      convert_arniqa.regressor_path(out, "kadid10k"))
  _, feats = _jax_outputs(model, jnp.asarray(image))
  x = (torch.from_numpy(image).permute(0, 3, 1, 2) - torch.tensor(MEAN).view(1, 3, 1, 1)) / (
      torch.tensor(STD).view(1, 3, 1, 1))
  with torch.no_grad():
    want = {"stem": encoder.model[:4](x), "layer2": encoder.model[:6](x),
            "layer4": encoder.model[:8](x)}
  for name, value in want.items():
    value = value.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(feats[name], value, rtol=1e-4, atol=1e-4 * np.abs(value).max(),
                               err_msg=name)
  pooled = value.mean((1, 2))
  np.testing.assert_allclose(feats["pool"], pooled, rtol=1e-4, atol=1e-4 * np.abs(pooled).max())


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["kadid10k", "live"])
def test_score_matches_published_pipeline(reference, torch_raw, image, dataset):
  _, _, out, _ = reference
  model = arniqa.load(convert_arniqa.encoder_path(out),
                      convert_arniqa.regressor_path(out, dataset), dataset)
  got, _ = _jax_outputs(model, jnp.asarray(image))
  assert got.shape == (2,)
  np.testing.assert_allclose(got, _hubconf_scale(torch_raw, dataset), rtol=1e-4)


def test_bad_images_get_one_line_errors():
  model = arniqa.ARNIQAModel({}, jnp.zeros(4096), jnp.zeros(()), arniqa.bounds("kadid10k"))
  with pytest.raises(ValueError, match="at least 2x2"):
    arniqa.score(model, jnp.zeros((1, 1, 8, 3)))
  with pytest.raises(ValueError, match=r"expected images \[B, H, W, 3\]"):
    arniqa.score(model, jnp.zeros((8, 8, 3)))


def test_regressor_tensors_follow_the_release_layout():
  state = {"weights": np.arange(4096, dtype=np.float32)[None], "biases": np.float32(2.5)}
  got = convert_arniqa.regressor_from_state(state, "regressor_x.pth")
  np.testing.assert_array_equal(got["weight"], np.arange(4096))
  assert float(got["bias"]) == 2.5
  with pytest.raises(ValueError, match="expected 'weights' and 'biases'"):
    convert_arniqa.regressor_from_state({"coef": state["weights"]}, "regressor_x.pth")


def test_missing_checkpoint_names_the_converter(tmp_path):
  with pytest.raises(flat_checkpoint.MissingCheckpointError, match="weights.convert_arniqa"):
    arniqa.load(tmp_path / "enc.safetensors", tmp_path / "reg.safetensors")


def test_regressor_dataset_must_match(reference):
  _, _, out, _ = reference
  with pytest.raises(ValueError, match="pass dataset='live'"):
    arniqa.load(convert_arniqa.encoder_path(out), convert_arniqa.regressor_path(out, "live"))
  with pytest.raises(ValueError, match="unknown ARNIQA regressor dataset"):
    arniqa.init_random(jax.random.key(0), dataset="kadid")


def test_eight_regressor_datasets_with_published_ranges():
  # miccunifi/ARNIQA hubconf.py: available_datasets_ranges / available_datasets_mos_types.
  assert arniqa.DATASETS == {
      "live": (1, 100, "dmos"), "csiq": (0, 1, "dmos"), "tid2013": (0, 9, "mos"),
      "kadid10k": (1, 5, "mos"), "flive": (1, 100, "mos"), "spaq": (1, 100, "mos"),
      "clive": (1, 100, "mos"), "koniq10k": (1, 100, "mos")}
