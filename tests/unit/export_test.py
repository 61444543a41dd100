"""Mixture export: a run's weights as seqio, Grain, MaxText, Levanter and
JSON read them."""

import json

import pytest

from doremi_jax import export_mixture as ex
from doremi_jax.config import ConfigError

WEIGHTS = {"noise": 0.05, "repeat": 0.00001, "markov": 0.3, "arithmetic": 0.25,
           "sort": 0.39999}
INFO = {"stage": "main", "corpus": "synthetic_ab12cd34", "domains": list(WEIGHTS),
        "train_tokens": [1000, 2000, 3000, 4000, 5000], "num_steps": 10,
        "tokens_per_step": 500}


def _render(fmt, paths=None, packed=None):
  epochs = ex.expected_epochs(WEIGHTS, INFO, 5000.0)
  return ex.render(fmt, WEIGHTS, epochs, 5000.0, "w.json", INFO, paths or {}, packed or {},
                   "mix")


def test_expected_epochs_are_budget_times_weight_over_tokens():
  epochs = ex.expected_epochs(WEIGHTS, INFO, 5000.0)
  for d, t in zip(INFO["domains"], INFO["train_tokens"]):
    assert epochs[d] == pytest.approx(5000.0 * WEIGHTS[d] / t)
  got = json.loads(_render("json"))
  assert got["weights"] == WEIGHTS and got["expected_epochs"] == epochs


def test_maxtext_and_levanter_blocks():
  paths = {d: f"/data/{d}/train.array_record-*" for d in WEIGHTS}
  text = _render("maxtext", paths)
  line = next(x for x in text.splitlines() if x.startswith("grain_train_files:"))
  mix = line.split('"')[1]
  # MaxText's parser: ';' between entries, 'glob,weight' in each.
  parsed = dict(e.split(",") for e in mix.split(";"))
  assert "repeat" not in "".join(parsed) and "Left out (weight rounds to 0): repeat" in text
  assert {k.split("/")[2]: float(v) for k, v in parsed.items()} == pytest.approx(
      {d: w for d, w in WEIGHTS.items() if d != "repeat"}, rel=1e-5)
  assert "dataset_type: grain" in text
  lev = _render("levanter", paths)
  assert "train_weights:" in lev and '"markov": 0.3' in lev
  assert lev.count("type: url") == 5
  with pytest.raises(ConfigError, match="give --paths"):
    _render("maxtext")
  with pytest.raises(ConfigError, match="cannot hold"):
    _render("maxtext", {d: f"/a,b/{d}" for d in WEIGHTS})
  with pytest.raises(ConfigError, match="does not exist"):
    _render("yaml")


def test_find_weights_refuses_what_is_not_a_mixture(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    ex.find_weights(str(tmp_path / "nope"))
  with pytest.raises(ConfigError, match="no weights in"):
    ex.find_weights(str(tmp_path))
  bad = tmp_path / "w.json"
  bad.write_text(json.dumps({"a": -1, "b": 2}))
  with pytest.raises(ConfigError, match="non-negative"):
    ex.find_weights(str(bad))
  bad.write_text(json.dumps({"a": 1, "b": 3}))
  assert ex.find_weights(str(bad))[1] == {"a": 0.25, "b": 0.75}
