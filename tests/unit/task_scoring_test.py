"""Task scoring: packed requests score what they score alone, against a
plain forward pass in NumPy (log-likelihoods, is_greedy, whole documents
in rolling windows, rows spread over a mesh, a chunked output layer); the
multiple-choice metrics against a NumPy implementation written here."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.tasks import scoring


PLAIN_LEN = 48      # every sequence these tests score fits


@functools.lru_cache(maxsize=None)
def _plain_forward(model):
  return jax.jit(lambda p, x: model.apply({"params": p}, x))


def plain_logits(model, params, tokens) -> np.ndarray:
  """float64 [n, V]: one plain forward pass of the model over
  [0, t_0, ..., t_{n-2}] (the shift a segment's start gets), positions
  0..n-1, no segment ids; padded with zeros to PLAIN_LEN after the
  sequence (the model is causal: the real positions never see the
  padding), so one compile serves every length."""
  n = len(tokens)
  inputs = np.zeros((1, PLAIN_LEN), np.int32)
  inputs[0, :n] = [0] + list(tokens[:-1])
  return np.asarray(_plain_forward(model)(params, jnp.asarray(inputs)), np.float64)[0, :n]


def np_loglik(model, params, context, continuation):
  """The continuation's log-likelihood from the request alone in one row:
  log-softmax of the plain forward pass's logits scores every continuation
  token."""
  tokens = list(context) + list(continuation)
  n = len(tokens)
  logits = plain_logits(model, params, tokens)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return sum(logp[t, tokens[t]] for t in range(len(context), n))


def test_packed_requests_score_what_they_score_alone(tiny_model):
  model, params = tiny_model
  rng = np.random.default_rng(0)
  requests = [(rng.integers(2, 64, rng.integers(0, 9)).tolist(),
               rng.integers(2, 64, rng.integers(1, 5)).tolist()) for _ in range(23)]
  packed = scoring.pack_requests(requests, 16)
  assert len(packed.targets) < len(requests)          # several requests share rows
  for r in range(len(packed.targets)):                # one segment per request
    for j in set(packed.segment_ids[r]) - {0}:
      assert len(set(packed.request[r][packed.segment_ids[r] == j])) == 1
  got = scoring.loglikelihoods(model, params, requests, 16, batch_rows=4)
  want = [np_loglik(model, params, c, x) for c, x in requests]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_long_request_keeps_its_continuation_and_the_end_of_its_context(tiny_model):
  model, params = tiny_model
  context, continuation = list(range(2, 30)), [40, 41, 42]
  got = scoring.loglikelihoods(model, params, [(context, continuation)], 16)
  want = np_loglik(model, params, context[-13:], continuation)
  np.testing.assert_allclose(got, [want], rtol=1e-4, atol=1e-4)
  with pytest.raises(ConfigError, match="empty continuation"):
    scoring.pack_requests([([1, 2], [])], 16)
  with pytest.raises(ConfigError, match="more than a row"):
    scoring.pack_requests([([1], list(range(20)))], 16)


def np_logp(model, params, tokens):
  """log p(token t | the document start and tokens before t), every t, and
  the argmax of each position's distribution: one plain forward pass over
  [0, t_0, ..., t_{n-2}]."""
  n = len(tokens)
  logits = plain_logits(model, params, tokens)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return np.array([logp[t, tokens[t]] for t in range(n)]), logits.argmax(-1)


def np_greedy_continuation(model, params, context, n):
  """n tokens decoded greedily after `context`, one plain forward each."""
  tokens = list(context)
  for _ in range(n):
    _, argmax = np_logp(model, params, tokens + [0])
    tokens.append(int(argmax[-1]))
  return tokens[len(context):]


def test_is_greedy_says_whether_every_continuation_token_is_the_argmax(tiny_model):
  model, params = tiny_model
  rng = np.random.default_rng(1)
  requests = []
  for i in range(12):
    context = rng.integers(2, 64, rng.integers(0, 7)).tolist()
    continuation = np_greedy_continuation(model, params, context, int(rng.integers(1, 5)))
    if i % 3 == 1:     # one token off the argmax: not greedy
      j = int(rng.integers(len(continuation)))
      continuation[j] = 2 + (continuation[j] - 1) % 62
    elif i % 3 == 2:   # random
      continuation = rng.integers(2, 64, len(continuation)).tolist()
    requests.append((context, continuation))
  want_greedy = []
  for context, continuation in requests:
    _, argmax = np_logp(model, params, context + continuation)
    want_greedy.append(all(argmax[len(context) + k] == tok
                           for k, tok in enumerate(continuation)))
  assert sum(want_greedy) >= 4 and not all(want_greedy)
  ll, greedy = scoring.loglikelihoods(model, params, requests, 16, batch_rows=2, greedy=True)
  assert greedy.dtype == bool and greedy.tolist() == want_greedy
  np.testing.assert_allclose(ll, [np_loglik(model, params, c, x) for c, x in requests],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(ll, scoring.loglikelihoods(model, params, requests, 16,
                                                           batch_rows=2))


def np_rolling(model, params, doc, seq_len, stride):
  """A document's log-likelihood written out: its first `seq_len` tokens in
  one plain forward from the document start, then each chunk of `stride`
  tokens in a forward over the row's worth of tokens that ends with it,
  scoring only the chunk."""
  total = np_logp(model, params, doc[:seq_len])[0].sum() if doc else 0.0
  start = seq_len
  while start < len(doc):
    end = min(start + stride, len(doc))
    window = doc[max(0, end - seq_len):end]
    total += np_logp(model, params, window)[0][len(window) - (end - start):].sum()
    start = end
  return total


def test_rolling_scores_every_token_once_in_windows(tiny_model):
  model, params = tiny_model
  rng = np.random.default_rng(2)
  docs = [rng.integers(2, 64, n).tolist() for n in (1, 5, 16, 17, 40, 9, 0, 33)]
  for stride in (None, 3, 16):
    s = 8 if stride is None else stride
    for doc in docs:                   # the windows cover the document once, in order
      windows = scoring.rolling_windows(doc, 16, stride)
      assert [t for _, x in windows for t in x] == doc
      assert all(len(c) + len(x) <= 16 for c, x in windows)
      assert all(c == doc[:i][-len(c):] if c else True for (c, _), i in
                 zip(windows, np.cumsum([0] + [len(x) for _, x in windows])))
    got = scoring.rolling_loglikelihoods(model, params, docs, 16, batch_rows=2, stride=stride)
    want = [np_rolling(model, params, d, 16, s) for d in docs]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    alone = [scoring.rolling_loglikelihoods(model, params, [d], 16, stride=stride)[0]
             for d in docs]
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)   # packed equals alone
  # a document within a row is the sum of all its tokens' log-probs
  np.testing.assert_allclose(
      scoring.rolling_loglikelihoods(model, params, [docs[4][:16]], 16),
      [np_logp(model, params, docs[4][:16])[0].sum()], rtol=1e-4, atol=1e-4)
  # the long document's windows: 16 tokens, then context + 8-token chunks
  windows = scoring.rolling_windows(docs[4], 16)
  assert [(len(c), len(x)) for c, x in windows] == [(0, 16), (8, 8), (8, 8), (8, 8)]
  with pytest.raises(ConfigError, match="stride"):
    scoring.rolling_windows(docs[4], 16, 17)


def test_rows_spread_over_a_mesh_score_the_same(tiny_model):
  import flax.linen as nn
  import jax
  from doremi_jax import sharding, state
  model, params = tiny_model
  setup = state.build_setup(64, state.TrainConfig(seq_len=16, global_batch_size=8,
                                                  eval_batch_size=8),
                            model.cfg, sharding.MeshConfig(data=4, fsdp=1, tensor=2),
                            devices=jax.devices()[:8])
  placed = jax.device_put(nn.meta.unbox(params), setup.state_shardings.params)
  rng = np.random.default_rng(4)
  requests = [(rng.integers(2, 64, rng.integers(0, 9)).tolist(),
               rng.integers(2, 64, rng.integers(1, 5)).tolist()) for _ in range(19)]
  want = scoring.loglikelihoods(model, params, requests, 16, batch_rows=4, greedy=True)
  got = scoring.loglikelihoods(setup.model, placed, requests, 16, batch_rows=4, greedy=True,
                               setup=setup)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  assert got[1].tolist() == want[1].tolist()
  with pytest.raises(ConfigError, match="multiple of 4"):
    scoring.loglikelihoods(setup.model, placed, requests, 16, batch_rows=6, setup=setup)


def test_chunked_output_layer_scores_the_same(tiny_model):
  import dataclasses
  from doremi_jax.model import Transformer
  model, params = tiny_model
  chunked = Transformer(dataclasses.replace(model.cfg, loss_chunk=5))   # 16 is no multiple
  rng = np.random.default_rng(5)
  requests = [(rng.integers(2, 64, rng.integers(0, 9)).tolist(),
               rng.integers(2, 64, rng.integers(1, 5)).tolist()) for _ in range(9)]
  want = scoring.loglikelihoods(model, params, requests, 16, greedy=True)
  got = scoring.loglikelihoods(chunked, params, requests, 16, greedy=True)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  assert got[1].tolist() == want[1].tolist()


def test_first_fit_places_in_the_first_row_with_room():
  rows = scoring.FirstFit(7, 10)
  assert [rows.place(k) for k in (6, 6, 4, 3, 4, 1, 10)] == [0, 1, 0, 1, 2, 1, 3]
  rng = np.random.default_rng(6)
  for n in (1, 2, 5, 33, 200):
    sizes = rng.integers(1, 17, n).tolist()
    used, want = [], []                    # first fit by a linear scan
    for k in sizes:
      r = next((r for r, u in enumerate(used) if u + k <= 16), len(used))
      used += [0] * (r == len(used))
      used[r] += k
      want.append(r)
    rows = scoring.FirstFit(n, 16)
    assert [rows.place(k) for k in sizes] == want


def np_choice_metrics(lls, gold, chars, toks, nbytes):
  n = len(gold)
  def first_max(v):
    best = 0
    for i, x in enumerate(v):
      if x > v[best]:
        best = i
    return best
  acc = sum(first_max(l) == g for l, g in zip(lls, gold)) / n
  pc = sum(first_max([a / max(c, 1) for a, c in zip(l, ch)]) == g
           for l, g, ch in zip(lls, gold, chars)) / n
  pt = sum(first_max([a / max(c, 1) for a, c in zip(l, tk)]) == g
           for l, g, tk in zip(lls, gold, toks)) / n
  prob = sum(math.exp(l[g]) / sum(math.exp(a) for a in l) for l, g in zip(lls, gold)) / n
  bpb = sum(-l[g] / math.log(2) / b for l, g, b in zip(lls, gold, nbytes)) / n
  return {"acc": acc, "acc_per_char": pc, "acc_per_token": pt, "prob_correct": prob,
          "bpb": bpb, "questions": n}


def test_choice_metrics_match_numpy():
  rng = np.random.default_rng(3)
  for _ in range(20):
    q = int(rng.integers(1, 12))
    k = [int(rng.integers(2, 6)) for _ in range(q)]
    lls = [(-rng.gamma(2.0, 3.0, n)).tolist() for n in k]
    gold = [int(rng.integers(0, n)) for n in k]
    chars = [rng.integers(1, 40, n).tolist() for n in k]
    toks = [rng.integers(1, 10, n).tolist() for n in k]
    nbytes = [int(rng.integers(1, 50)) for _ in k]
    got = scoring.choice_metrics(lls, gold, chars, toks, nbytes)
    want = np_choice_metrics(lls, gold, chars, toks, nbytes)
    assert got.keys() == want.keys()
    for key in want:
      assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
  # length normalisation changes the pick: a long likely-looking choice
  m = scoring.choice_metrics([[-4.0, -6.0]], [1], [[2, 10]], [[1, 4]], [10])
  assert m["acc"] == 0.0 and m["acc_per_char"] == 1.0 and m["acc_per_token"] == 1.0
  with pytest.raises(ValueError):
    scoring.choice_metrics([[-1.0]], [1], [[1]], [[1]], [1])
