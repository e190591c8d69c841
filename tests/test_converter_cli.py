"""The weight converters' command lines: one-line errors (exit 2), --help, a real VGG16 run."""

import numpy as np
import pytest
import torch
from test_vgg import TorchVGG16

from upzeroir_jax.models import arniqa, vgg
from weights import convert_arniqa, convert_lpips, convert_sd, convert_vgg


def _one_error_line(capsys, prog: str) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith(f"{prog}: error: ")
  return err[0]


@pytest.mark.parametrize("module, flag, extra", [
  (convert_vgg, "input", ["--output={tmp}/vgg16.safetensors"]),
  (convert_lpips, "backbone", ["--output={tmp}/lpips.safetensors"]),
  (convert_arniqa, "encoder", ["--output_dir={tmp}/arniqa"]),
  (convert_arniqa, "regressor", ["--output_dir={tmp}/arniqa"]),
], ids=["vgg", "lpips", "arniqa_encoder", "arniqa_regressor"])
def test_missing_input_is_one_line_naming_it_and_writes_nothing(module, flag, extra, tmp_path,
                                                                capsys):
  missing = tmp_path / "missing" / "weights.pth"
  argv = [module.PROG, f"--{flag}={missing}"] + [a.format(tmp=tmp_path) for a in extra]
  assert module.main(argv) == 2
  assert _one_error_line(capsys, module.PROG).endswith(f"--{flag}={missing}: no such file")
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sd_missing_source_folder_is_named_not_looked_up_on_the_hub(tmp_path, capsys):
  missing = tmp_path / "missing" / "diffusers"
  argv = [convert_sd.PROG, f"--source={missing}", f"--output={tmp_path / 'sd'}"]
  assert convert_sd.main(argv) == 2
  assert f"error: {missing} is not a folder" in _one_error_line(capsys, convert_sd.PROG)
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lpips_missing_linear_weights_are_named(tmp_path, capsys):
  backbone = tmp_path / "trunk.pth"
  backbone.write_bytes(b"")
  missing = tmp_path / "lin.pth"
  argv = [convert_lpips.PROG, f"--backbone={backbone}", f"--linear={missing}",
          f"--output={tmp_path / 'lpips.safetensors'}"]
  assert convert_lpips.main(argv) == 2
  assert f"--linear={missing}" in _one_error_line(capsys, convert_lpips.PROG)
  assert not (tmp_path / "lpips.safetensors").exists()


def test_arniqa_without_inputs_and_with_unnamed_dataset_is_a_usage_error(tmp_path, capsys):
  assert convert_arniqa.main([convert_arniqa.PROG, f"--output_dir={tmp_path}"]) == 2
  assert "--encoder" in _one_error_line(capsys, convert_arniqa.PROG)
  regressor = tmp_path / "ridge.pth"
  regressor.write_bytes(b"")
  argv = [convert_arniqa.PROG, f"--regressor={regressor}", f"--output_dir={tmp_path / 'out'}"]
  assert convert_arniqa.main(argv) == 2
  assert "--dataset" in _one_error_line(capsys, convert_arniqa.PROG)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module, flag", [
  (convert_vgg, "--input"), (convert_lpips, "--backbone"), (convert_arniqa, "--encoder"),
  (convert_sd, "--source"),
], ids=lambda m: getattr(m, "PROG", m))
def test_help_exits_0_with_the_module_usage_and_flags(module, flag, capsys):
  assert module.main([module.PROG, "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(module.__doc__.splitlines()[0])
  assert f"python -m {module.PROG} --" in out
  assert f"    {flag}: " in out and "--[no]verbose: " in out


def test_stray_argument_is_one_line_exit_2(capsys, tmp_path):
  argv = [convert_vgg.PROG, f"--input={tmp_path / 'x.pth'}", f"--output={tmp_path / 'o'}", "x"]
  assert convert_vgg.main(argv) == 2
  assert _one_error_line(capsys, convert_vgg.PROG).endswith("unexpected arguments: x")
  assert not (tmp_path / "o").exists()


def test_unknown_flag_is_one_line_exit_2(capsys):
  assert convert_vgg.main([convert_vgg.PROG, "--input=x.pth", "--frobnicate"]) == 2
  assert "frobnicate" in _one_error_line(capsys, convert_vgg.PROG)


def test_vgg_conversion_through_main_is_what_vgg_load_reads(tmp_path, capsys):
  torch.manual_seed(0)
  net = TorchVGG16()
  torch.save(net.state_dict(), tmp_path / "vgg16.pth")
  out = tmp_path / "converted" / "vgg16.safetensors"
  out.parent.mkdir()
  argv = [convert_vgg.PROG, f"--input={tmp_path / 'vgg16.pth'}", f"--output={out}"]
  assert convert_vgg.main(argv) == 0
  assert "error" not in capsys.readouterr().err
  params = vgg.load(out)
  for name, layer in (("conv1_1", 0), ("conv3_2", 12), ("conv5_3", 28)):
    weight = net.features[layer].weight.detach().numpy()
    np.testing.assert_array_equal(params[name]["kernel"], weight.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params[name]["bias"], net.features[layer].bias.detach().numpy())


def test_arniqa_converter_writes_the_files_the_loaders_read(tmp_path):
  encoder, regressor = arniqa.checkpoint_files(tmp_path, "live")
  assert convert_arniqa.encoder_path(tmp_path) == str(encoder)
  assert convert_arniqa.regressor_path(tmp_path, "live") == str(regressor)
