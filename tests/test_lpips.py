"""LPIPS against a PyTorch reference of `lpips.LPIPS` (v0.1) written from the package source.

The linear layers are the real ones shipped in the `lpips` package; the trunks are random
torch modules with torchvision's vgg16 / alexnet `features` layout (so the converter sees the
real state-dict keys). The package itself is never imported (it imports torchvision).
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from upzeroir_jax.metrics import lpips
from upzeroir_jax.models import flat_checkpoint
from weights import convert_lpips

torch.set_num_threads(2)
# lpips/pretrained_networks.py: the last torchvision `features` index of each slice.
SLICE_ENDS = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}
SIZES = {"vgg": (2, 32, 40), "alex": (2, 63, 64)}


def _vgg_features():
  layers, cin = [], 3
  for block in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
    for cout in block:
      layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
      cin = cout
    layers.append(nn.MaxPool2d(2, 2))
  return nn.Sequential(*layers)


def _alex_features():
  """torchvision.models.alexnet().features."""
  return nn.Sequential(
      nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


class TorchTrunk(nn.Module):

  def __init__(self, net):
    super().__init__()
    self.features = _vgg_features() if net == "vgg" else _alex_features()


def _package_linear(net):
  if importlib.util.find_spec("lpips") is None:
    pytest.skip("the lpips package (linear weights) is not installed")
  path = convert_lpips.package_linear_weights(net)
  return path, torch.load(path, map_location="cpu", weights_only=True)


def _torch_lpips(features, lin, net, a, b):
  """lpips.LPIPS(net=net, version='0.1').forward(a, b, normalize=True) for NHWC numpy input."""
  shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
  scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
  outs = []
  for img in (a, b):
    h = (2 * torch.from_numpy(img).permute(0, 3, 1, 2) - 1 - shift) / scale
    taps, start = [], 0
    for end in SLICE_ENDS[net]:
      h = features[start:end + 1](h)
      taps.append(h)
      start = end + 1
    outs.append(taps)
  val = 0
  for k, (f0, f1) in enumerate(zip(*outs, strict=True)):
    n0 = f0 / (torch.sqrt(torch.sum(f0 ** 2, dim=1, keepdim=True)) + 1e-10)
    n1 = f1 / (torch.sqrt(torch.sum(f1 ** 2, dim=1, keepdim=True)) + 1e-10)
    conv = nn.Conv2d(n0.shape[1], 1, 1, bias=False)
    conv.weight.data = lin[f"lin{k}.model.1.weight"]
    val = val + conv((n0 - n1) ** 2).mean([2, 3], keepdim=True)
  return val.view(-1).detach().numpy()


@pytest.fixture(scope="module", params=["vgg", "alex"])
def case(request, tmp_path_factory):
  """(net, torch features, package linear weights, our converted params, images)."""
  net = request.param
  linear_path, lin = _package_linear(net)
  torch.manual_seed(0)
  trunk = TorchTrunk(net).eval()
  for m in trunk.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.normal_(m.bias, std=0.1)
  path = tmp_path_factory.mktemp(f"lpips_{net}")
  torch.save(trunk.state_dict(), path / "trunk.pth")
  convert_lpips.convert(net, str(path / "trunk.pth"), str(path / "lpips.safetensors"))
  params = lpips.load(path / "lpips.safetensors")
  rng = np.random.default_rng(0)
  a = rng.random(SIZES[net] + (3,), dtype=np.float32)
  b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  return net, trunk.features, lin, params, a, b, linear_path


_LPIPS = jax.jit(lpips.lpips, static_argnames="net")


@pytest.mark.parity
@pytest.mark.slow
def test_matches_lpips_package_computation(case):
  net, features, lin, params, a, b, _ = case
  want = _torch_lpips(features, lin, net, a, b)
  got = _LPIPS(params, jnp.asarray(a), jnp.asarray(b), net=net)
  assert got.shape == (2,)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  same = _LPIPS(params, jnp.asarray(a), jnp.asarray(a), net=net)
  np.testing.assert_allclose(same, np.zeros(2), atol=1e-10)


def test_checkpoint_keeps_the_package_linear_weights(case):
  net, _, lin, params, _, _, linear_path = case
  assert os.path.basename(linear_path) == f"{net}.pth"
  for k in range(5):
    np.testing.assert_array_equal(params["lin"][f"lin{k}"], lin[f"lin{k}.model.1.weight"].numpy()
                                  .reshape(-1))
  assert float(params["lin"]["lin0"].min()) >= 0.0  # the released weights are non-negative


def test_bad_inputs_get_one_line_errors(case):
  net, _, _, params, a, _, _ = case
  with pytest.raises(ValueError, match="of one shape"):
    lpips.lpips(params, jnp.asarray(a), jnp.asarray(a[:1]), net=net)
  small = jnp.zeros((1, 15, 40, 3))
  with pytest.raises(ValueError, match=f"LPIPS-{net} needs images of at least"):
    lpips.lpips(params, small, small, net=net)
  other = "alex" if net == "vgg" else "vgg"
  with pytest.raises(ValueError, match=f"not for net='{other}'"):
    lpips.lpips(params, jnp.asarray(a), jnp.asarray(a), net=other)
  with pytest.raises(ValueError, match="unknown LPIPS net"):
    lpips.lpips(params, jnp.asarray(a), jnp.asarray(a), net="squeeze")


def test_missing_checkpoint_names_the_converter(tmp_path):
  with pytest.raises(flat_checkpoint.MissingCheckpointError, match="weights.convert_lpips"):
    lpips.load(tmp_path / "lpips_vgg.safetensors")
