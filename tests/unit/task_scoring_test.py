"""Task scoring: packed requests score what they score alone, against a
plain forward pass in NumPy; the multiple-choice metrics against a NumPy
implementation written here."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.tasks import scoring


def np_loglik(model, params, context, continuation):
  """The continuation's log-likelihood from the request alone in one row:
  the model reads [0, t_0, ..., t_{n-2}] (the shift a segment's start gets)
  and log-softmax of its logits scores every continuation token."""
  tokens = list(context) + list(continuation)
  n = len(tokens)
  inputs = np.array([[0] + tokens[:-1]], np.int32)
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(inputs),
                                  jnp.arange(n, dtype=jnp.int32)[None],
                                  jnp.ones((1, n), jnp.int32)), np.float64)[0]
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
