"""The held-out splits (`tune` for what a method adapts to, `test` for what
is reported) and token-true mixtures (weights are shares of real tokens,
whatever the rows' fill)."""

import json
import os

import numpy as np
import pytest

from doremi_jax.analysis import health
from doremi_jax.config import ConfigError
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import packing
from doremi_jax.data import synthetic
from doremi_jax.data import synthetic_tasks
from doremi_jax.data.corpus import Corpus
from doremi_jax.data.vocab import SyntheticVocabulary


def test_tune_and_test_halve_the_validation_sequences():
  cfg = synthetic.SyntheticCorpusConfig(seq_len=64)
  for domain in ("markov", "sort"):
    val = synthetic.generate(domain, cfg.validation_examples, 64, cfg.seed, "validation")
    tune = synthetic_tasks.split_sequences(cfg, domain, packing.TUNE)
    test = synthetic_tasks.split_sequences(cfg, domain, packing.TEST)
    assert len(tune) + len(test) == len(val)
    assert 0.4 < len(tune) / len(val) < 0.6
    as_set = lambda a: {r.tobytes() for r in a}
    assert as_set(tune) | as_set(test) == as_set(val)
    assert not as_set(tune) & as_set(test)
    train = synthetic_tasks.split_sequences(cfg, domain, packing.TRAIN)
    assert not as_set(train) & (as_set(tune) | as_set(test))
    # deterministic: the same rows in the same order every time
    np.testing.assert_array_equal(test, synthetic_tasks.split_sequences(cfg, domain, "test"))


def test_eval_split_is_a_pure_hash_of_the_key():
  keys = [f"file.txt:{i}" for i in range(2000)]
  first = [packing.eval_split(k) for k in keys]
  assert first == [packing.eval_split(k) for k in keys]
  assert set(first) == {packing.TUNE, packing.TEST}
  assert 0.45 < first.count(packing.TUNE) / len(first) < 0.55


def test_a_corpus_packed_before_the_split_is_refused_naming_prepare(tmp_path):
  identity = {"kind": "byte", "sha256": None, "size": 259}
  directory = packing.packed_dir(str(tmp_path), identity, 32)
  os.makedirs(directory)
  with open(os.path.join(directory, packing.META), "w") as f:
    json.dump({"format_version": 1, "vocabulary": identity, "seq_len": 32,
               "splits": {"train": {"rows": 1, "tokens": 3, "shards": []},
                          "validation": {"rows": 1, "tokens": 3, "shards": []}}}, f)
  with pytest.raises(ConfigError) as e:
    packing.read_meta("web", str(tmp_path), identity, 32)
  msg = str(e.value)
  assert "`tune` and `test`" in msg and "python -m doremi_jax.prepare" in msg


def _rows(n: int, seq_len: int, fill: int, rng) -> packing.MemoryRows:
  """n rows of `fill` real tokens then padding (the fill differs per row
  around `fill` so tokens per row is a measured mean)."""
  targets = np.zeros((n, seq_len), np.int32)
  segments = np.zeros((n, seq_len), np.int32)
  for i in range(n):
    m = int(np.clip(fill + rng.integers(-3, 4), 1, seq_len))
    targets[i, :m] = rng.integers(2, 100, m)
    segments[i, :m] = 1
  return packing.MemoryRows(targets, segments)


def _two_fill_corpus(seq_len=100):
  rng = np.random.default_rng(0)
  full, half = _rows(300, seq_len, 99, rng), _rows(300, seq_len, 55, rng)
  sources = {"full": full, "half": half}
  return Corpus(name="fills", domains=("full", "half"), task_names=("a", "b"),
                vocabulary=SyntheticVocabulary(), train_tokens=(1, 1),
                packed=tuple((lambda split, n, d=d: sources[d]) for d in sources))


@pytest.mark.parametrize("weights", [(0.6, 0.4), (0.2, 0.8)])
def test_realised_token_shares_are_the_weights(weights):
  corpus = _two_fill_corpus()
  tpr = loader_lib.tokens_per_row(corpus, 100)
  assert tpr[0] == pytest.approx(99, abs=1) and tpr[1] == pytest.approx(55, abs=1)
  steps, batch = 200, 64
  loader = loader_lib.BatchLoader(corpus, loader_lib.MixtureAssignment(weights, 3, tpr),
                                  batch, 100, seed=0)
  tokens = np.zeros(2)
  try:
    for _ in range(steps):
      b, _ = loader.next()
      for d in range(2):
        tokens[d] += np.count_nonzero(b["segment_ids"][b["domain_ids"] == d])
  finally:
    loader.close()
  share = tokens / tokens.sum()
  # binomial sampling error of the row draws, as token shares
  rows = steps * batch
  rate = loader_lib.MixtureAssignment(weights, 3, tpr).rates
  sigma = np.sqrt(rate[0] * rate[1] / rows) * tpr.prod() / (rate @ tpr) ** 2
  assert abs(share[0] - weights[0]) < 4 * sigma, (share, weights, sigma)
  # rows drawn at the weights themselves (today's code before this change)
  # would miss them by far more than the sampling error
  naive = np.asarray(weights) * tpr / (np.asarray(weights) @ tpr)
  assert abs(naive[0] - weights[0]) > 10 * sigma


def test_health_shares_are_computed_from_the_fill():
  domains = ("full", "half")
  tpr = {"full": 99.0, "half": 55.0}
  mix = health.shares(domains, {"full": 0.5, "half": 0.5}, (4.0, 1.0), tpr)
  assert mix["tokens"] == {"full": 0.5, "half": 0.5}
  assert mix["rows"]["half"] == pytest.approx(99 / 154)
  assert mix["bytes"]["full"] == pytest.approx(0.8)
  strat = health.shares(domains, {"full": 0.5, "half": 0.5}, None, tpr, stratified=True)
  assert strat["tokens"]["full"] == pytest.approx(99 / 154)
  assert strat["rows"] == {"full": 0.5, "half": 0.5}
