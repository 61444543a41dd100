"""Cached greedy decoding (doremi_jax/tasks/decode.py) equals uncached greedy
decoding written here: at every step the plain forward pass over the whole
sequence so far and the argmax of its last logits. Prompts of different
lengths share batches, the last batch is padded, prompts are cut from the
left to fit, and stop ids, stop strings and EOS end rows; the prefill and
step programs compile once for every batch."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.data import vocab as vocab_lib
from doremi_jax.model import ModelConfig, Transformer
from doremi_jax.tasks import decode

MAX_LEN = 16
# Lengths 3, 0 (empty), 25 (cut from the left), ... with per-prompt limits:
# the empty prompt's 16 new tokens fill all 16 positions; a limit of 0 gives
# nothing; the 12-token prompt keeps its last 10 tokens for its 6 new ones.
LENGTHS = (3, 0, 25, 7, 1, 12, 5)
LIMITS = (6, 16, 5, 0, 4, 6, 9)


def tiny(vocab_size=64, **kw):
  """A 2-layer model whose logits are not all equal, and its parameters.
  Tied embeddings get noise on every matrix: their initial blocks are too
  small to change the greedy choice (the input token again)."""
  cfg = ModelConfig(vocab_size=vocab_size, d_model=32, num_layers=2, num_heads=2, head_dim=16,
                    mlp_dim=64, unembed_init_scale=1.0, **kw)
  model = Transformer(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  if cfg.tied_embeddings:
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape, x.dtype)
                                       if x.ndim > 1 else x for x, k in zip(leaves, keys)])
  return model, params


@functools.lru_cache(maxsize=None)
def plain_forward(model):
  """The model's plain forward pass on one [1, MAX_LEN] row, jitted once."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x, jnp.arange(MAX_LEN)[None]))


def reference_greedy(model, params, prompt, n, stop_ids=(), max_len=MAX_LEN):
  """Uncached greedy decoding: the sequence [0] + the prompt's last
  (max_len - n) tokens, and at every step the plain forward pass over all
  of it (zeros after it fill the row: the model is causal, so one compile
  serves every length) and the argmax of the last real position's logits."""
  seq = [0] + list(prompt)[max(0, len(prompt) - (max_len - n)):]
  out = []
  while len(out) < n:
    row = np.zeros((1, max_len), np.int32)
    row[0, :len(seq)] = seq
    logits = np.asarray(plain_forward(model)(params, row), np.float32)[0, len(seq) - 1]
    token = int(np.argmax(logits))
    if token in stop_ids:
      break
    out.append(token)
    seq.append(token)
  return out


def prompts_of(vocab_size, lengths=LENGTHS, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(2, vocab_size, n).tolist() for n in lengths]


@pytest.mark.parametrize("kw", [{}, {"tied_embeddings": True}, {"scan_layers": True},
                                {"compute_dtype": "bfloat16", "scan_layers": True}],
                         ids=["untied", "tied", "scan", "bf16-scan"])
def test_cached_greedy_equals_uncached_in_padded_batches_compiled_once(kw):
  model, params = tiny(**kw)
  prompts = prompts_of(64)
  decode.programs.cache_clear()
  got = decode.greedy_generate(model, params, prompts, list(LIMITS), max_len=MAX_LEN,
                               batch_size=3)         # batches of 3, 3 and 1 (+2 padding rows)
  want = [reference_greedy(model, params, p, n) for p, n in zip(prompts, LIMITS)]
  assert got == want
  assert [len(g) for g in got] == list(LIMITS)
  assert len(set(map(tuple, got))) > 3               # the rows differ
  assert decode.programs(model).traces == {"prefill": 1, "step": 1}
  again = decode.greedy_generate(model, params, prompts[::-1], 3, max_len=MAX_LEN,
                                 batch_size=3)
  assert again == [reference_greedy(model, params, p, 3) for p in prompts[::-1]]
  assert decode.programs(model).traces == {"prefill": 1, "step": 1}


def test_stop_ids_end_their_rows_only(tiny_model):
  model, params = tiny_model
  prompts = prompts_of(64, (4, 2, 9, 0))
  free = [reference_greedy(model, params, p, 8) for p in prompts]
  stop = free[0][3]                                  # row 0 stops before its 4th token
  got = decode.greedy_generate(model, params, prompts, 8, max_len=MAX_LEN, batch_size=4,
                               stop_ids=[stop])
  assert got == [reference_greedy(model, params, p, 8, stop_ids=(stop,)) for p in prompts]
  assert got[0] == free[0][:free[0].index(stop)]
  assert any(len(g) == 8 for g in got)               # a row without `stop` runs to its limit


def test_stop_fn_is_checked_after_every_token(tiny_model):
  model, params = tiny_model
  prompts = prompts_of(64, (3, 5))
  free = [reference_greedy(model, params, p, 10) for p in prompts]
  seen = []

  def stop_fn(ids):
    seen.append(list(ids))
    return len(ids) == 4

  got = decode.greedy_generate(model, params, prompts, 10, max_len=MAX_LEN, batch_size=2,
                               stop_fn=stop_fn)
  assert got == [f[:4] for f in free]
  assert sorted(seen) == sorted(f[:k] for f in free for k in range(1, 5))


class StopVocabulary(vocab_lib.SyntheticVocabulary):
  """The synthetic vocabulary with another EOS id (one the model generates)."""

  def __init__(self, eos_id):
    super().__init__()
    self.eos_id = eos_id


def test_generate_until_cuts_at_stop_strings_and_eos():
  model, params = tiny(vocab_size=128)
  vocab = vocab_lib.SyntheticVocabulary()
  contexts = ["t5 t6 + 3", "", "t40 " * 20 + "t41", "7 ; t60"]
  prompts = [vocab.encode(c) for c in contexts]
  free = [reference_greedy(model, params, p, 8) for p in prompts]
  texts = [vocab.decode(f) for f in free]
  until = [[vocab.decode(free[0][2:4]), "no such text"], [], [texts[2].split()[1][:2]], ["\n"]]
  eos = free[3][5]
  got = decode.generate_until(model, params, StopVocabulary(eos), contexts, until, 8,
                              max_len=MAX_LEN, batch_size=3)
  want = []
  for p, stops in zip(prompts, until):
    text = vocab.decode(reference_greedy(model, params, p, 8, stop_ids=(eos,)))
    for s in stops:
      text = text.split(s)[0]
    want.append(text)
  assert got == want
  assert got[0] == vocab.decode(free[0][:2]) + " "    # cut before the stop string
  assert got[3] == vocab.decode(free[3][:free[3].index(eos)])   # EOS ends row 3


def test_cached_calls_give_the_plain_logits(tiny_model):
  """The model's cache API itself: a prefill of a whole row, then chunks
  of several tokens per row at per-row positions, give the logits of the
  plain forward pass over each row."""
  model, params = tiny_model
  rng = np.random.default_rng(1)
  tokens = rng.integers(2, 64, (2, MAX_LEN)).astype(np.int32)
  apply = jax.jit(functools.partial(model.apply, {"params": params}),
                  static_argnames="fill_cache")
  plain = apply(tokens)
  filled = np.array([[5], [3]])                          # row 0 holds 5 tokens, row 1 3
  _, cache = apply(np.where(np.arange(MAX_LEN) < filled, tokens, 0), fill_cache=True)
  rows = np.arange(2)[:, None]
  for pos in (filled + np.arange(3), filled + 3):         # 3 tokens per row, then 1
    logits, cache = apply(tokens[rows, pos], pos.astype(np.int32), cache=cache)
    np.testing.assert_allclose(logits, plain[rows, pos], atol=2e-5)
  assert cache[0].key.shape == (2, MAX_LEN, 2, 16)


def test_mistakes_say_what_to_change(tiny_model):
  model, params = tiny_model
  with pytest.raises(ConfigError, match="raise max_len or lower max_new_tokens"):
    decode.greedy_generate(model, params, [[3]], MAX_LEN + 1, max_len=MAX_LEN)
  with pytest.raises(ConfigError, match="one per prompt"):
    decode.greedy_generate(model, params, [[3], [4]], [2], max_len=MAX_LEN)
  with pytest.raises(ConfigError, match="outside the model's vocabulary"):
    decode.greedy_generate(model, params, [[64]], 2, max_len=MAX_LEN)
  with pytest.raises(ConfigError, match="one list of stop strings per context"):
    decode.generate_until(model, params, vocab_lib.SyntheticVocabulary(), ["t3"], [], 2,
                          max_len=MAX_LEN)
  assert decode.greedy_generate(model, params, [], 2, max_len=MAX_LEN) == []
