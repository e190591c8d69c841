"""The benchmark's setup: both pipelines (ours in JAX, the PyTorch eager reference) on the same
random weights and input, with every array our compiled functions take held on the device.

`sampler_init`, `sampler_step` and `sampler_restore` are the only places the benchmark calls the
sampler and `restore`, so a change of their signatures is fixed here.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch

from eval import torch_reference as tr
from eval.bench.options import BenchmarkError, Options
from upzeroir_jax import config as config_lib
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.models import arniqa as arniqa_lib
from upzeroir_jax.models import schedule as schedule_lib
from upzeroir_jax.models import sd as sd_lib
from upzeroir_jax.sampler import scorers
from upzeroir_jax.sampler import state as state_lib
from upzeroir_jax.sampler import step as step_lib


def sampler_init(models: Any, config: config_lib.RestoreConfig, y: jax.Array,
                 key: jax.Array) -> Any:
  """The sampler state of one image y `[1, H, W, 3]` before its first step."""
  return state_lib.init(models, config, y, key)


def sampler_step(st: Any, models: Any, config: config_lib.RestoreConfig, t: jax.Array,
                 ctx: Any) -> Any:
  """One guided step of one image at timestep t (a scalar, unbatched under `vmap`)."""
  return step_lib.step_at(st, models, config, t, ctx)


def sampler_restore(models: Any, y: jax.Array, key: jax.Array,
                    config: config_lib.RestoreConfig, ctx: Any) -> tuple[jax.Array, dict]:
  """`restore` of y `[H, W, 3]` or `[B, H, W, 3]`: (image like y, info dict)."""
  res = restore_lib.restore(models, y, key, config, context=ctx)
  return res.image, res.info


def host_leaves(tree: Any) -> list[str]:
  """Paths of the leaves of `tree` that are host arrays (numpy, not `jax.Array`)."""
  return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if isinstance(leaf, np.ndarray | np.generic)]


def on_device(tree: Any) -> Any:
  """`tree` with every array leaf placed on the default device once (`jax.device_put`)."""
  return jax.block_until_ready(jax.device_put(tree, jax.devices()[0]))


@dataclasses.dataclass
class Setup:
  """Both pipelines on the same weights, input and settings.

  JAX (all on the device): `models` (`restore.Models`), `y` `[1, H, W, 3]`, `ctx` (None, or
  `[1, L, D]` with `--cfg`), `prompt` `[1, L, D]`. torch: `torch_sd`, `torch_vgg`, `torch_y`
  `[1, 3, H, W]`, `torch_ctx` (None or `[2, L, D]`: unconditional and prompt) for the
  equal-work step, `torch_prompt` (`[1, L, D]`, the caption LD-RPS's low-light script
  conditions on; it always runs CFG).
  """

  models: Any
  config: config_lib.RestoreConfig
  y: jax.Array
  ctx: Any
  torch_sd: tr.TorchSD
  torch_vgg: tr.VGGRelu22
  torch_y: torch.Tensor
  torch_ctx: Any
  torch_prompt: torch.Tensor
  prompt: jax.Array
  device: torch.device
  seed: int
  resolution: int
  latent_shape: tuple[int, ...]
  t_stage1: int
  t_guided: int
  setup_s: float
  attention: str = "xla"

  @property
  def num_pixels(self) -> int:
    """Pixels of the model-grid image (sets the guidance scale s·N/512², docs/method.md §3)."""
    return self.resolution * self.resolution

  @property
  def sync(self) -> Callable[[], None]:
    """A barrier for the torch device (a no-op on a CPU)."""
    if self.device.type == "cuda":
      return lambda: torch.cuda.synchronize(self.device)
    return lambda: None


def with_attention(backbone: Any, attention: str) -> Any:
  """The backbone with our networks' attention implementation (`sd_layers.Policy.attention`)
  set from the `attention` choice ("auto" lets JAX choose)."""
  return backbone.replace(attention=None if attention == "auto" else attention)


def check_devices() -> str:
  """A one-line description of the GPU both JAX and torch see; usage error if either has none."""
  jax_gpu = jax.default_backend() == "gpu"
  torch_gpu = torch.cuda.is_available()
  found = (f"JAX {jax.default_backend()} {jax.devices()[0].device_kind}; torch "
           f"{torch.cuda.get_device_name(0) if torch_gpu else 'CPU only'}")
  if not (jax_gpu and torch_gpu):
    raise BenchmarkError(f"--device_check needs a GPU for both JAX and torch, found {found}; "
                         "install the CUDA builds or drop --device_check")
  return found


def synthetic_input(resolution: int, seed: int) -> np.ndarray:
  """A smooth colour pattern, darkened and slightly noisy: `[1, R, R, 3]` float32 in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
  img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f * xx + g * yy) + p)
                  for f, g, p in rng.uniform(0.5, 3.0, (3, 3))], axis=-1)
  img = 0.3 * img + 0.02 * rng.standard_normal(img.shape)
  return np.clip(img, 0.0, 1.0)[None].astype(np.float32)


def _stage_timesteps(schedule: Any, config: config_lib.RestoreConfig) -> tuple[int, int]:
  """A stage-1 timestep (the first) and a guided one (the middle of stage 2)."""
  ts = schedule_lib.timesteps(schedule, config.steps)
  guided = ts[(ts < config.stage2_t) & (ts >= config.stage3_t)]
  if not len(guided):
    raise BenchmarkError(f"--steps={config.steps} leaves no stage-2 step; use more steps")
  return int(ts[0]), int(guided[len(guided) // 2])


def stage_counts(setup: Setup, steps: int) -> tuple[int, int]:
  """(steps with t ≥ stage2_t, steps with t < stage2_t) of a `steps`-step schedule."""
  ts = schedule_lib.timesteps(setup.models.backbone.schedule, steps)
  guided = int(np.sum(ts < setup.config.stage2_t))
  return len(ts) - guided, guided


def build_setup(opts: Options) -> Setup:
  """Random SD and VGG weights created in torch and converted to Flax, so both sides share
  them; the lowlight preset (narrower PCDM and discriminators for `tiny`). Our models, input
  and contexts are put on the device here, once."""
  start = time.perf_counter()
  arch = sd_lib.TINY if opts.size == "tiny" else sd_lib.SD21_BASE
  resolution = opts.resolution or (64 if opts.size == "tiny" else 512)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cuda.matmul.allow_tf32 = opts.torch_tf32
  torch.backends.cudnn.allow_tf32 = opts.torch_tf32
  torch.manual_seed(opts.seed)
  unet = diffusers.UNet2DConditionModel(**arch["unet"]).eval().requires_grad_(False)
  vae = diffusers.AutoencoderKL(**arch["vae"]).eval().requires_grad_(False)
  vgg = tr.VGGRelu22().random_init()
  backbone = sd_lib.from_torch(arch, unet, vae, dtype=jnp.dtype(opts.dtype))
  rng = np.random.default_rng(opts.seed)
  shape = (1, arch["text_encoder"]["max_position_embeddings"], arch["unet"]["cross_attention_dim"])
  null, prompt = rng.standard_normal((2,) + shape).astype(np.float32)
  backbone = with_attention(backbone.replace(null_context=null, remat_decode=opts.remat),
                            opts.attention)
  config = config_lib.preset("lowlight", steps=opts.steps, dtype=opts.dtype, remat=opts.remat)
  if opts.size == "tiny":
    config = config.replace(pcdm_features=(16, 32, 64), disc_features=(16, 32, 64))
  scorer = None
  if "dqr" in opts.parts:
    scorer = scorers.arniqa(arniqa_lib.init_random(jax.random.key(opts.seed + 2)))
  models = restore_lib.Models(backbone=backbone, vgg_params=vgg.flax_params(), scorer=scorer)
  y = synthetic_input(resolution, opts.seed)
  models, y_dev, prompt_dev = on_device((models, y, prompt))
  torch_sd = tr.TorchSD(unet.to(device), vae.to(device), dict(arch["scheduler"]),
                        torch.from_numpy(null).to(device),
                        float(arch["vae"].get("scaling_factor", 0.18215)))
  both = torch.from_numpy(np.concatenate([null, prompt])).to(device)
  f = backbone.latent_factor
  t1, t2 = _stage_timesteps(backbone.schedule, config)
  return Setup(
    models=models, config=config, y=y_dev, ctx=prompt_dev if opts.cfg else None,
    torch_sd=torch_sd, torch_vgg=vgg.to(device),
    torch_y=torch.from_numpy(y.transpose(0, 3, 1, 2).copy()).to(device),
    torch_ctx=both if opts.cfg else None, torch_prompt=both[1:], prompt=prompt_dev,
    device=device, seed=opts.seed, resolution=resolution,
    latent_shape=(1, backbone.latent_channels, resolution // f, resolution // f),
    t_stage1=t1, t_guided=t2, setup_s=time.perf_counter() - start, attention=opts.attention)


def task_config(setup: Setup, task: str) -> config_lib.RestoreConfig:
  """The preset of `task` with the benchmark's steps, dtype, remat and network widths."""
  c = setup.config
  return config_lib.preset(task, steps=c.steps, dtype=c.dtype, remat=c.remat,
                           pcdm_features=c.pcdm_features, disc_features=c.disc_features)


def variant_setup(setup: Setup, spec: str) -> Setup:
  """`setup` with the modifiers of a `--variants` entry applied to our pipeline (on device)."""
  backbone, config, ctx, attention = (setup.models.backbone, setup.config, setup.ctx,
                                      setup.attention)
  for mod in spec.split("+"):
    if mod == "bfloat16":
      backbone = backbone.replace(unet_params=sd_lib.cast(backbone.unet_params, jnp.bfloat16),
                                  vae_params=sd_lib.cast(backbone.vae_params, jnp.bfloat16),
                                  dtype=jnp.dtype(jnp.bfloat16))
      config = config.replace(dtype="bfloat16")
    elif mod == "remat":
      backbone, config = backbone.replace(remat_decode=True), config.replace(remat=True)
    elif mod == "cfg":
      ctx = setup.prompt
    else:
      attention = mod
      backbone = with_attention(backbone, mod)
  return dataclasses.replace(setup, models=on_device(setup.models.replace(backbone=backbone)),
                             config=config, ctx=ctx, attention=attention)
