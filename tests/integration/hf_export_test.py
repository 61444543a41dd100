"""The Hugging Face export (doremi_jax/hf/, doremi_jax/export_model.py) read
back through `transformers` in float32 on CPU torch: the exported
LlamaForCausalLM's logits are ours (untied, tied, scanned layers, heads
whose total width is not d_model, a trained run), its greedy generation is
our model's greedy decoding (a plain uncached argmax loop), and a
SentencePiece run's tokenizer.json gives SentencePiece's ids with 0 first."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from doremi_jax import export_model
from doremi_jax.data import vocab as vocab_lib
from doremi_jax.model import ModelConfig, Transformer
from doremi_jax.tasks import decode
from doremi_jax.tasks import trained as trained_lib

from helpers import tiny_trained_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=128, d_model=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=48,
            max_len=64, rope_theta=100.0, norm_eps=1e-5, unembed_init_scale=1.0,
            attention="xla")


def random_run(vocabulary=None, seed=0, **overrides) -> trained_lib.Trained:
  """A tiny model with random parameters, as `trained.load` returns a run:
  the norms' scales are random too (at init they are all 1, which would
  hide a norm mapped to the wrong place)."""
  cfg = ModelConfig(**dict(TINY, **overrides))
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32)))["params"]
  keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x * jax.random.uniform(next(keys), x.shape, minval=0.5, maxval=1.5)
      if path[-1].key == "scale" else x, params)
  vocabulary = vocabulary or vocab_lib.SyntheticVocabulary()
  return trained_lib.Trained("random_run", 0, cfg, model, params, vocabulary, 32, {})


def load_hf(out_dir):
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(out_dir), dtype=torch.float32).eval()


def random_tokens(vocab_size, shape=(3, 20), seed=0):
  """Random ids, each row starting with 0 (the BOS of every training document)."""
  tokens = np.random.default_rng(seed).integers(0, vocab_size, shape)
  tokens[:, 0] = 0
  return tokens


def logits_of(t: trained_lib.Trained, tokens) -> np.ndarray:
  """Our model's fp32 logits of `tokens` ([B, L] ids)."""
  return np.asarray(jax.jit(t.model.apply)({"params": t.params}, jnp.asarray(tokens)))


def assert_logits_equal(t: trained_lib.Trained, hf, tokens):
  ours = logits_of(t, tokens)
  with torch.no_grad():
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  assert theirs.shape == ours.shape
  scale = np.abs(ours).max()
  assert scale > 1.0      # non-trivial logits
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * scale)


def greedy(t: trained_lib.Trained, prompt, new_tokens: int) -> list:
  """Our model's greedy continuation of `prompt`: each step runs the whole
  sequence again (no cache; in a fixed window of zeros, which a causal
  model's earlier positions never see) and appends the argmax at its last
  position; stops after EOS."""
  ids, window = list(prompt), len(prompt) + new_tokens
  for _ in range(new_tokens):
    logits = logits_of(t, [ids + [0] * (window - len(ids))])
    ids.append(int(np.argmax(logits[0, len(ids) - 1])))
    if ids[-1] == t.vocabulary.eos_id:
      break
  return ids


def assert_greedy_equal(t: trained_lib.Trained, hf, prompts, new_tokens=12):
  """transformers' greedy generation from the export equals the plain
  argmax loop and our key/value-cached decoder (`tasks.decode`, which
  prepends the document-start 0 itself and leaves the EOS it stops at out)."""
  eos = t.vocabulary.eos_id
  for prompt in prompts:
    with torch.no_grad():
      got = hf.generate(torch.as_tensor([prompt]), do_sample=False,
                        max_new_tokens=new_tokens)[0].tolist()
    assert got == greedy(t, prompt, new_tokens), prompt
    (cached,) = decode.greedy_generate(t.model, t.params, [prompt[1:]], new_tokens,
                                       max_len=len(prompt) + new_tokens, stop_ids=(eos,))
    new = got[len(prompt):]
    assert cached == (new[:-1] if new and new[-1] == eos else new), prompt


@pytest.mark.parametrize("overrides", [
    {}, {"tied_embeddings": True}, {"scan_layers": True},
    {"scan_layers": True, "tied_embeddings": True}, {"num_heads": 2, "head_dim": 12}],
    ids=["untied", "tied", "scan_layers", "scan_layers_tied", "heads_narrower_than_d_model"])
def test_exported_logits_and_greedy_generation_are_ours(overrides, tmp_path):
  t = random_run(**overrides)
  written, note = export_model.export_hf(t, str(tmp_path))
  assert "no Hugging Face tokenizer" in note
  assert sorted(written) == sorted(os.listdir(tmp_path)) == sorted(
      ["config.json", "generation_config.json", "model.safetensors", "README.md"])
  hf = load_hf(tmp_path)
  assert type(hf).__name__ == "LlamaForCausalLM"
  assert (hf.config.bos_token_id, hf.config.eos_token_id) == (0, 1)
  assert hf.config.tie_word_embeddings == t.model_cfg.tied_embeddings
  n = sum(p.numel() for p in hf.parameters())
  assert n == t.model_cfg.num_params()
  assert_logits_equal(t, hf, random_tokens(t.model_cfg.vocab_size))
  assert_greedy_equal(t, hf, [[0], [0, 5, 9, 17, 3]])


def test_model_the_llama_config_cannot_hold_is_refused(tmp_path):
  t = random_run(num_heads=3, head_dim=8)         # 32 % 3 != 0
  with pytest.raises(export_model.ConfigError, match="d_model=32 and num_heads=3"):
    export_model.export_hf(t, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_byte_run_has_no_tokenizer_and_says_how_to_feed_ids(tmp_path):
  t = random_run(vocab_lib.ByteVocabulary(), vocab_size=384)
  written, note = export_model.export_hf(t, str(tmp_path))
  assert "no Hugging Face tokenizer" in note and "ByteVocabulary" in note
  assert "tokenizer.json" not in written
  card = (tmp_path / "README.md").read_text()
  assert "ids = [0] + [b + 3 for b in text.encode('utf-8')]" in card
  text = "héllo"
  ids = [0] + [b + 3 for b in text.encode("utf-8")]
  assert ids[1:] == vocab_lib.ByteVocabulary().encode(text)
  assert_logits_equal(t, load_hf(tmp_path), np.asarray([ids]))


def sentencepiece_model(tmp_path) -> str:
  """A unigram model as `python -m doremi_jax.tokenizer` trains them."""
  import sentencepiece as spm
  text = tmp_path / "text.txt"
  lines = [f"the cat {i} sat on the mat, naïve café {i * 7}; THE DOG ran {i % 13} laps."
           for i in range(400)]
  text.write_text("\n".join(lines))
  spm.SentencePieceTrainer.train(
      input=str(text), model_prefix=str(tmp_path / "m"), vocab_size=400, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.9995, byte_fallback=True,
      hard_vocab_limit=False, minloglevel=2)
  return str(tmp_path / "m.model")


TEXTS = ["the cat 12 sat", "naïve café ☕ zq", "", " ", "  leading, trailing and  inner  ",
         "a\tb\nc  d", "ＡＢＣ ｶ ① ﬁ ½", "日本語 Привет 😀", "x" * 40, "The DOG ran 1234567 laps€",
         "e\u0301 combining\u00a0nbsp\u3000wide space"]


def test_sentencepiece_run_gets_a_tokenizer_giving_our_ids(tmp_path):
  spm_file = sentencepiece_model(tmp_path)
  vocabulary = vocab_lib.SentencePieceVocabulary(spm_file)
  t = random_run(vocabulary, vocab_size=512)
  out = tmp_path / "out"
  written, note = export_model.export_hf(t, str(out))
  assert {"tokenizer.json", "tokenizer_config.json", "sentencepiece.model"} <= set(written)
  assert "AutoTokenizer" in note
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  for text in TEXTS:
    ids = vocabulary.encode(text)
    assert tok(text)["input_ids"] == [0] + ids, text
    assert tok.decode([0] + ids, skip_special_tokens=True) == vocabulary.decode(ids), text
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 0)
  fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
  assert fast(TEXTS[0])["input_ids"] == [0] + vocabulary.encode(TEXTS[0])
  assert (out / "sentencepiece.model").read_bytes() == open(spm_file, "rb").read()
  # The tokenizer's ids through the exported model are our model's.
  batch = tok(TEXTS[:2], padding="longest", return_tensors="np")
  hf = load_hf(out)
  row = batch["input_ids"][1][batch["attention_mask"][1] == 1]
  assert_logits_equal(t, hf, row[None])


def test_sentencepiece_bpe_model_gets_no_tokenizer_json(tmp_path):
  import sentencepiece as spm
  (tmp_path / "t.txt").write_text("\n".join(f"abc abd {i}" for i in range(200)))
  spm.SentencePieceTrainer.train(
      input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "b"), vocab_size=40,
      model_type="bpe", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      minloglevel=2)
  t = random_run(vocab_lib.SentencePieceVocabulary(str(tmp_path / "b.model")))
  written, note = export_model.export_hf(t, str(tmp_path / "out"))
  assert "model type is bpe" in note and "tokenizer.json" not in written
  assert "sentencepiece.model" in written


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A 6-step `reference` stage's run directory."""
  return tiny_trained_run(tmp_path_factory.mktemp("hf_export") / "reference")


def test_trained_run_exported_is_the_trained_model(trained_run, tmp_path):
  t = trained_lib.load(str(trained_run))
  assert t.step == 6 and isinstance(t.vocabulary, vocab_lib.SyntheticVocabulary)
  out = tmp_path / "hf"
  export_model.export_hf(t, str(out))
  hf = load_hf(out)
  config = json.loads((out / "config.json").read_text())
  assert config["hidden_size"] == t.model_cfg.d_model == 64
  assert_logits_equal(t, hf, random_tokens(t.vocabulary.vocab_size, (2, 32)))
  ids = t.vocabulary.encode("1 2 3 + 4 5 6 =")
  assert_greedy_equal(t, hf, [[0] + ids, [0]], new_tokens=10)
  earlier = trained_lib.load(str(trained_run), step=3)
  export_model.export_hf(earlier, str(tmp_path / "step3"))
  assert "step 3" in (tmp_path / "step3" / "README.md").read_text()
  assert_logits_equal(earlier, load_hf(tmp_path / "step3"), random_tokens(128, (1, 16)))
