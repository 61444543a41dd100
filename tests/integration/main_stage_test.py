"""Stage `main` (DoReMi Step 3): weights from a file/preset, the sampled
domain frequencies match them, bad weights fail clearly."""

import json

import numpy as np
import pytest
from scipy import stats

from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import synthetic
from doremi_jax.data import weights as presets
from doremi_jax.data.synthetic_tasks import synthetic_corpus


@pytest.fixture(scope="module")
def corpus():
  return synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=32))


def test_presets_are_the_published_pile_weights():
  for name, w in presets.PRESETS.items():
    assert len(w) == 22, name
    assert abs(sum(w.values()) - 1) < 2e-3, name
  assert presets.PILE_DOREMI_280M["Pile-CC"] == 0.6057
  assert set(presets.PILE_BASELINE) == set(presets.PILE_DOREMI_280M)


def test_step3_stream_frequencies_match_weights(corpus, tmp_path):
  weights = {"noise": 0.02, "repeat": 0.08, "markov": 0.3, "arithmetic": 0.25, "sort": 0.35}
  (tmp_path / "average_domain_weights.json").write_text(json.dumps(weights))
  w = presets.resolve_weights(str(tmp_path), corpus, "train_main_model.weights")
  rates = corpus_lib.mixture_rates(w)     # as train_on_mixture samples them
  corpus_lib.register_mixture("test_step3", corpus, rates)
  loader = loader_lib.BatchLoader(corpus, loader_lib.MixtureAssignment(rates, seed=0), 64, 32,
                                  seed=0)
  ids = np.concatenate([loader.next()[0]["domain_ids"] for _ in range(350)])  # 22,400
  loader.close()
  observed = np.bincount(ids, minlength=5)
  expected = np.array([weights[d] for d in corpus.domains]) * len(ids)
  chi2, p = stats.chisquare(observed, expected)
  assert len(ids) >= 20_000
  assert p > 0.01, (observed, expected, chi2, p)
  # and a clearly different mixture is rejected by the same test
  _, p_wrong = stats.chisquare(observed, np.full(5, len(ids) / 5))
  assert p_wrong < 1e-6


def test_weight_specs(corpus, tmp_path):
  with pytest.raises(ConfigError, match="unknown domains.*Pile-CC"):
    presets.resolve_weights("pile_baseline", corpus, "w")
  with pytest.raises(ConfigError, match="does not exist"):
    presets.resolve_weights(str(tmp_path / "nope.json"), corpus, "w")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ConfigError, match="not valid JSON"):
    presets.resolve_weights(str(bad), corpus, "w")
  np.testing.assert_allclose(presets.resolve_weights("uniform", corpus, "w"), np.full(5, 0.2))
