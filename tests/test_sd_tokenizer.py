"""CLIP's tokenizer (`sd_tokenizer`): ids derived by hand from the vocabulary and merges."""

import json
import re

import numpy as np
import pytest

from upzeroir_jax.models import sd_configs, sd_nets, sd_tokenizer

BOS, EOS = sd_configs.TINY_BOS, sd_configs.TINY_EOS


def _byte_ids(prompt: str, length: int, pad: int = EOS) -> list[int]:
  """The tiny tokenizer's ids of an ASCII prompt by hand: lower case, words are CLIP's
  contractions ('s, 't, 're, 've, 'm, 'll, 'd), runs of letters, single digits or runs of other
  non-space characters; each byte is its own id, the last of a
  word + 256 (its end-of-word form); <|startoftext|> first, <|endoftext|>, then padding."""
  ids = [BOS]
  for word in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", prompt.lower()):
    ids += [*word.encode()[:-1], word.encode()[-1] + 256]
  ids = ids[:length - 1] + [EOS]
  return ids + [pad] * (length - len(ids))


def test_tiny_tokenizer_ids_follow_its_byte_vocabulary():
  prompts = ["a photo of a cat", "Hello, World!  tabs\tand\nnew-lines 123", "don't x" * 5, ""]
  tok = sd_tokenizer.Tokenizer(max_length=16)
  got = tok.ids(prompts)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, [_byte_ids(p, 16) for p in prompts])


def test_tiny_tokenizer_saved_as_a_folder_reads_back(tmp_path):
  prompts = ["A cat, 2 dogs!", ""]
  sd_tokenizer.Tokenizer(max_length=12).save(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    n for n in sd_tokenizer.FILES if n != "tokenizer.json")
  np.testing.assert_array_equal(sd_tokenizer.from_folder(tmp_path).ids(prompts),
                                [_byte_ids(p, 12) for p in prompts])


def test_empty_prompt_ids_need_no_tokenizer_build():
  tok = sd_tokenizer.Tokenizer(max_length=12)
  empty = tok.empty_ids()
  assert "backend" not in vars(tok)  # transformers' tokenizer not built
  np.testing.assert_array_equal(empty, tok.ids([""]))
  np.testing.assert_array_equal(empty, [_byte_ids("", 12)])


@pytest.fixture
def bpe_folder(tmp_path):
  """A tokenizer folder as SD 2.x stores it (vocab.json, merges.txt, pad token "!")."""
  symbols = sd_tokenizer.byte_symbols()
  merges = [("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>"), ("a", "t</w>"),
            ("c", "at</w>")]
  vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  (tmp_path / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
  (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
             "unk_token": "<|endoftext|>"}
  (tmp_path / "special_tokens_map.json").write_text(json.dumps(special))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
    {**special, "model_max_length": 10, "tokenizer_class": "CLIPTokenizer"}))
  return tmp_path, {"".join(m): 512 + i for i, m in enumerate(merges)}


def test_folder_tokenizer_applies_merges_and_pads_with_its_pad_token(bpe_folder, tmp_path):
  folder, merged = bpe_folder
  bos, eos, pad = 518, 519, ord("!")
  want = [bos, merged["photo</w>"], ord("o"), 256 + ord("f"), merged["cat</w>"], ord("p"),
          256 + ord("h"), eos, pad, pad]
  tok = sd_tokenizer.from_folder(folder)
  np.testing.assert_array_equal(tok.ids(["Photo of CAT ph"]), [want])
  tok.save(tmp_path / "copy")
  copy = sd_tokenizer.from_folder(tmp_path / "copy")
  np.testing.assert_array_equal(copy.ids(["Photo of CAT ph"]), [want])


def test_folder_without_vocabulary_is_refused(tmp_path):
  (tmp_path / "vocab.json").write_text("{}")
  with pytest.raises(sd_nets.WeightsError, match="no tokenizer files"):
    sd_tokenizer.from_folder(tmp_path)
