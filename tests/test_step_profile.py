"""eval/step_profile.py: attribution of traced operations to model parts."""

import jax
import jax.numpy as jnp
import pytest

from eval import step_profile

HLO = """\
HloModule jit_one
%body.1 (p: f32[4]) -> f32[4] {
  %fusion.3 = f32[4]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(one)/while/body/VGG16Features/conv1_1/add"}
}
ENTRY %main (a: f32[4]) -> f32[4] {
  %while.7 = f32[4]{0} while(%a), condition=%cond.1, body=%body.1, metadata={op_name="jit(one)/while"}
  %conv.2 = f32[4]{0} convolution(%a, %a), metadata={op_name="jit(one)/cond/branch_1_fun/transpose(jvp(VGG16Features))/conv1_2/conv_general_dilated"}
  ROOT %add.5 = f32[4]{0} add(%a, %a), metadata={op_name="jit(one)/FlaxUNet2DConditionModel/conv_in/add"}
}
"""


def test_op_names_skip_control_flow_and_add_gpu_spelling():
  names = step_profile.op_names(HLO)
  assert "while.7" not in names
  assert names["fusion.3"] == names["fusion_3"] == "jit(one)/while/body/VGG16Features/conv1_1/add"
  assert names["add.5"].endswith("FlaxUNet2DConditionModel/conv_in/add")


@pytest.mark.parametrize("op_name, part", [
  ("jit(one)/jvp(decoder)/up_blocks_0/conv", "VAE decoder forward"),
  ("jit(one)/cond/branch_1_fun/transpose(jvp(encoder))/down_blocks_1", "VAE encoder backward"),
  ("jit(one)/transpose(jvp(PCDM))/conv3/dot_general", "PCDM backward"),
  ("jit(one)/cond/branch_1_fun/Discriminator/conv1", "discriminators forward"),
  ("jit(one)/FlaxUNet2DConditionModel/up_blocks_1", "UNet forward"),
  ("jit(one)/cond/branch_1_fun/reduce_sum", "other forward"),
])
def test_part_of(op_name, part):
  assert step_profile.part_of(op_name) == part


def test_summarize_divides_by_calls_and_keeps_unmatched_apart():
  events = [
    {"ph": "X", "name": "fusion.3", "dur": 3000},   # VGG16 forward, 3 ms
    {"ph": "X", "name": "fusion_3", "dur": 1000},   # the GPU spelling of the same
    {"ph": "X", "name": "conv.2", "dur": 8000},     # VGG16 backward
    {"ph": "X", "name": "add.5", "dur": 2000},      # UNet forward
    {"ph": "X", "name": "while.7", "dur": 14000},   # control flow: not counted as a part
    {"ph": "i", "name": "add.5", "dur": 5000},      # not a complete event
    {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 20000},
  ]
  out = step_profile.summarize(events, step_profile.op_names(HLO), calls=2)
  assert out["by_part_ms"] == pytest.approx(
    {"VGG16 forward": 2.0, "VGG16 backward": 4.0, "UNet forward": 1.0})
  assert out["matched_ms"] == pytest.approx(7.0)
  assert out["unmatched_top_ms"] == pytest.approx({"while.7": 7.0, "ThunkExecutor::Execute": 10.0})
  assert [op["name"] for op in out["top_ops"]] == ["conv.2", "fusion.3", "add.5", "fusion_3"]


def test_profile_of_a_compiled_function_finds_its_parts():
  def fn(x):
    with jax.named_scope("VGG16Features"):
      y = jnp.tanh(x @ x)
    with jax.named_scope("PCDM"):
      return jnp.sum(jnp.sin(y @ y))

  x = jnp.ones((256, 256), jnp.float32) / 256
  compiled = jax.jit(fn).lower(x).compile()
  compiled(x).block_until_ready()

  def run():
    for _ in range(3):
      out = compiled(x)
    out.block_until_ready()

  prof = step_profile.profile(run, compiled.as_text(), calls=3)
  assert prof["calls"] == 3
  assert prof["by_part_ms"].get("VGG16 forward", 0) > 0
  assert prof["by_part_ms"].get("PCDM forward", 0) > 0
  assert set(prof["by_part_ms"]) <= {"VGG16 forward", "PCDM forward", "other forward"}
