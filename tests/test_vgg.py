"""VGG16 features against a PyTorch module with torchvision's `vgg16().features` layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from upzeroir_jax.models import flat_checkpoint, vgg
from weights import convert_vgg

torch.set_num_threads(2)
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


class TorchVGG16(nn.Module):
  """torchvision.models.vgg16's `features` Sequential (same indices, so the same keys)."""

  def __init__(self):
    super().__init__()
    layers, cin = [], 3
    for block in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
      for cout in block:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        cin = cout
      layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A random torch VGG16, its `.pth`, and our params converted from that file."""
  torch.manual_seed(0)
  net = TorchVGG16().eval()
  for m in net.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.normal_(m.bias, std=0.1)
  path = tmp_path_factory.mktemp("vgg")
  torch.save(net.state_dict(), path / "vgg16.pth")
  convert_vgg.convert(path / "vgg16.pth", path / "vgg16.safetensors")
  return net, vgg.load(path / "vgg16.safetensors"), path


def _torch_nhwc(fn, img):
  with torch.no_grad():
    return fn(torch.from_numpy(img).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


@pytest.mark.parity
def test_perceptual_features_are_relu2_2_of_imagenet_normalised_input(reference):
  net, params, _ = reference
  img = np.random.default_rng(0).random((2, 20, 27, 3), dtype=np.float32)
  want = _torch_nhwc(lambda x: net.features[:9]((x - MEAN) / STD), img)
  got = jax.jit(vgg.perceptual_features)(params, jnp.asarray(img))
  assert got.shape == (2, 10, 13, 128)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parity
@pytest.mark.slow
def test_all_named_layers_match_torchvision_indices(reference):
  net, params, _ = reference
  img = np.random.default_rng(1).standard_normal((1, 32, 36, 3)).astype(np.float32)
  _, feats = jax.jit(vgg.VGG16Features().apply)({"params": params}, jnp.asarray(img))
  assert sorted(feats) == sorted(vgg.LAYERS)
  for name in ("conv1_1", "relu1_2", "pool1", "conv3_3", "relu4_3", "conv5_3", "pool5"):
    want = _torch_nhwc(net.features[:vgg.LAYERS.index(name) + 1], img)
    np.testing.assert_allclose(feats[name], want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                               err_msg=name)


@pytest.mark.parity
def test_perceptual_loss_gradient_matches_torch_autograd(reference):
  net, params, _ = reference
  rng = np.random.default_rng(2)
  x, y = (rng.random((1, 16, 16, 3), dtype=np.float32) for _ in range(2))

  def loss(img):
    return jnp.mean((vgg.perceptual_features(params, img)
                     - vgg.perceptual_features(params, jnp.asarray(y))) ** 2)

  got = jax.jit(jax.grad(loss))(jnp.asarray(x))
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
  ty = torch.from_numpy(y).permute(0, 3, 1, 2)
  feat = net.features[:9]
  torch.mean((feat((tx - MEAN) / STD) - feat((ty - MEAN) / STD)) ** 2).backward()
  want = tx.grad.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_early_stop_needs_only_the_layers_it_runs(reference):
  _, params, _ = reference
  img = jnp.ones((1, 4, 4, 3))
  out, feats = vgg.VGG16Features(last="relu1_1").apply({"params": params}, img)
  want = np.maximum(0.0, np.einsum("hwio,i->o", np.asarray(params["conv1_1"]["kernel"])[1:, 1:],
                                   np.ones(3)) + np.asarray(params["conv1_1"]["bias"]))
  np.testing.assert_allclose(out[0, 0, 0], want, rtol=1e-5, atol=1e-6)
  assert sorted(feats) == ["conv1_1", "relu1_1"]
  with pytest.raises(ValueError, match="unknown VGG16 layer 'relu9_9'"):
    vgg.VGG16Features(last="relu9_9").apply({"params": params}, img)


def test_load_errors_are_one_line(reference, tmp_path):
  _, _, path = reference
  with pytest.raises(flat_checkpoint.MissingCheckpointError, match="weights.convert_vgg"):
    vgg.load(tmp_path / "absent.safetensors")
  flat_checkpoint.save(tmp_path / "other.safetensors", {"w": np.zeros(2)}, {"model": "other"})
  with pytest.raises(ValueError, match="not a VGG16 checkpoint"):
    vgg.load(tmp_path / "other.safetensors")
  with pytest.raises(ValueError, match=r"expected images \[B, H, W, 3\]"):
    vgg.perceptual_features(vgg.load(path / "vgg16.safetensors"), jnp.zeros((8, 8, 3)))


def test_init_random_is_torchvision_he_init_and_deterministic():
  params = vgg.init_random(jax.random.key(3))
  again = vgg.init_random(jax.random.key(3))
  other = vgg.init_random(jax.random.key(4))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again),
                                                   strict=True))
  assert not np.array_equal(params["conv3_1"]["kernel"], other["conv3_1"]["kernel"])
  kernel = np.asarray(params["conv3_1"]["kernel"])
  assert kernel.shape == (3, 3, 128, 256)
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 256)), rtol=0.02)  # fan-out
  np.testing.assert_array_equal(params["conv3_1"]["bias"], np.zeros(256))
