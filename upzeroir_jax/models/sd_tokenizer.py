"""CLIP's tokenizer for Stable Diffusion prompts, built only when a prompt is tokenized.

`Tokenizer` names where the tokenizer comes from (a saved tokenizer folder: vocab.json,
merges.txt, tokenizer_config.json, special_tokens_map.json, as diffusers folders and our
checkpoints store it; or the byte-level tiny tokenizer of the random test models) and builds
transformers' `CLIPTokenizer` from it at the first prompt. Without a prompt, nothing of
transformers is imported: the restore path runs on the checkpoint's stored empty-prompt
embedding (docs/usage.md, "Dependencies").
"""

import dataclasses
import functools
import json
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from upzeroir_jax.models import sd_configs, sd_nets

# The files of a saved tokenizer folder: the vocabulary and merges (diffusers folders) or
# tokenizer.json (what `save_pretrained` writes), with the settings files.
FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json")


def byte_symbols() -> list[str]:
  """The 256 printable symbols CLIP's byte-level BPE uses for the bytes 0–255."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
  extra = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


# CLIP's special tokens; the tiny tokenizer pads with <|endoftext|> (SD 2.x folders: "!").
_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def _tiny_vocab() -> dict[str, int]:
  """The tiny tokenizer's vocabulary, `sd_configs.TINY_VOCAB_SIZE` ids: 256 byte symbols, the
  same with the end-of-word mark, then <|startoftext|> (`TINY_BOS`) and <|endoftext|>
  (`TINY_EOS`); it has no merges."""
  symbols = byte_symbols()
  vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
  return {s: i for i, s in enumerate(vocab)}


def _tiny(max_length: int) -> Any:
  """transformers' `CLIPTokenizer` over single bytes (`_tiny_vocab`)."""
  from transformers import CLIPTokenizer

  return CLIPTokenizer(vocab=_tiny_vocab(), merges=[], model_max_length=max_length, **_SPECIAL)


def _write_tiny(path: pathlib.Path, max_length: int) -> None:
  """The tiny tokenizer as a folder in the layout diffusers folders store (`FILES` but
  tokenizer.json)."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "vocab.json").write_text(json.dumps(_tiny_vocab(), ensure_ascii=False))
  (path / "merges.txt").write_text("#version: 0.2\n")
  (path / "special_tokens_map.json").write_text(json.dumps(_SPECIAL))
  config = {**_SPECIAL, "model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"}
  (path / "tokenizer_config.json").write_text(json.dumps(config))


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
  """Where CLIP's tokenizer comes from; transformers' `CLIPTokenizer` is built at first use.

  Attributes:
    folder: a saved tokenizer folder (`FILES`), or None for the byte-level tiny tokenizer.
    max_length: the tiny tokenizer's sequence length (the text encoder's positions); a folder
      sets its own (`model_max_length` of tokenizer_config.json).
  """

  folder: str | None = None
  max_length: int = 77

  @functools.cached_property
  def backend(self) -> Any:
    """transformers' `CLIPTokenizer` (imports transformers' tokenizer modules only)."""
    if self.folder is None:
      return _tiny(self.max_length)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(self.folder)

  def ids(self, prompts: Sequence[str]) -> np.ndarray:
    """Token ids `[P, L]` int32 of the prompts: <|startoftext|>, the BPE tokens, <|endoftext|>,
    padded (with the tokenizer's pad token) or truncated to L = `model_max_length`."""
    tok = self.backend
    out = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="np")
    return out["input_ids"].astype(np.int32)

  def empty_ids(self) -> np.ndarray:
    """`ids([""])`, `[1, L]`: for the tiny tokenizer without building it (<|startoftext|>, then
    <|endoftext|>, which is also its pad token, to the end)."""
    if self.folder is not None:
      return self.ids([""])
    ids = np.full((1, self.max_length), sd_configs.TINY_EOS, np.int32)
    ids[0, 0] = sd_configs.TINY_BOS
    return ids

  def save(self, path: str | pathlib.Path) -> None:
    """Writes the tokenizer folder to `path` without importing transformers: a folder's files
    copied as they are, the tiny tokenizer's written in the same layout."""
    path = pathlib.Path(path)
    if self.folder is None:
      _write_tiny(path, self.max_length)
      return
    path.mkdir(parents=True, exist_ok=True)
    for name in FILES:
      if (pathlib.Path(self.folder) / name).is_file():
        shutil.copyfile(pathlib.Path(self.folder) / name, path / name)


def from_folder(folder: str | pathlib.Path) -> Tokenizer:
  """The tokenizer saved in `folder` (checked for its vocabulary, not yet built)."""
  folder = pathlib.Path(folder).expanduser().absolute()
  has = {n for n in FILES if (folder / n).is_file()}
  if not ({"vocab.json", "merges.txt"} <= has or "tokenizer.json" in has):
    raise sd_nets.WeightsError(f"{folder}: no tokenizer files (vocab.json and merges.txt, or "
                               "tokenizer.json): pass a complete Stable Diffusion folder")
  return Tokenizer(folder=str(folder))
