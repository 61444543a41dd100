"""The worked example of docs/architecture.md: a new arm kind in one small
module (here, in this file), registered without touching any stage, run in
a tiny study next to stratified sampling."""

import dataclasses
import functools
import json

import gin
import numpy as np
import pytest

from doremi_jax import arms
from doremi_jax.config import ConfigError
from doremi_jax.data import packing
from doremi_jax.data import weights as weights_lib

from helpers import run_stage


class Temperature(arms.Arm):
  """'temperature:T': domain i sampled with probability proportional to
  n_i^(1/T), n_i its training tokens (T = 1: proportional; T -> inf:
  uniform), the temperature sampling of multilingual pretraining."""
  kind, spelling, static = "temperature", "temperature:T", True

  @classmethod
  def matches(cls, spec):
    return isinstance(spec, str) and spec.startswith("temperature:")

  def temperature(self) -> float:
    try:
      t = float(self.spec[len("temperature:"):])
    except ValueError:
      t = 0.0
    if not t > 0:
      raise ConfigError(f"{self.what()}: {self.spec!r} names no temperature; write "
                        "'temperature:T' with T > 0.")
    return t

  def check(self):
    self.temperature()

  def rates(self, seeds):
    n = np.asarray(self.study.corpus.train_tokens, np.float64)
    w = n ** (1.0 / self.temperature())
    return w / w.sum()

  def weights(self, seed=0):
    return weights_lib.as_dict(self.study.corpus.domains, self.rates(0))


@pytest.fixture
def temperature_kind():
  arms.register(Temperature)
  yield Temperature
  arms.unregister(Temperature)


TINY = [
    "include 'gin/cpu.gin'", "run.stage = 'study'",
    "SEQ_LEN = 32", "STEPS = 10", "BATCH = 10",
    "TrainConfig.checkpoint_every = 10", "TrainConfig.log_every = 10",
    "TrainConfig.eval_every = 10", "TrainConfig.eval_examples_per_domain = 8",
    "TrainConfig.eval_batch_size = 8", "TrainConfig.tensorboard = False",
]


def test_a_registered_arm_kind_runs_in_a_study(tmp_path, temperature_kind):
  arms_binding = ("train_study.arms = {'stratified': 'stratified', "
                  "'t2': 'temperature:2', 'uniform': 'uniform'}")
  result = run_stage("study", tmp_path / "s", TINY + [arms_binding, "train_study.seeds = 2"])
  info = json.loads((tmp_path / "s" / "arms" / "t2" / "seed_0" / "run_info.json").read_text())
  sizes = np.array(info["train_tokens"], np.float64)   # the domains differ in size
  assert len(set(sizes)) > 1
  expect = np.sqrt(sizes) / np.sqrt(sizes).sum()
  got = result["results"]["t2"]["weights"]
  np.testing.assert_allclose([got[d] for d in info["domains"]], expect, rtol=1e-12)
  assert "vs_baseline" in result["results"]["t2"]
  for seed in range(2):
    run = tmp_path / "s" / "arms" / "t2" / f"seed_{seed}"
    trained = json.loads((run / "main_weights.json").read_text())
    assert trained == pytest.approx(got, rel=1e-12)
  # the built-in kinds still answer first; the weights fallback still last
  assert [k.kind for k in arms.base.KINDS][-2:] == ["temperature", "weights"]


def test_a_registered_arm_kind_checks_its_spec_before_training(tmp_path, temperature_kind):
  with pytest.raises(ConfigError, match="'temperature:hot' names no temperature"):
    run_stage("study", tmp_path / "s",
              TINY + ["train_study.arms = ['stratified', 'temperature:hot']"])
  assert not (tmp_path / "s").exists()


class Memorise(arms.Arm):
  """A planted cheat: 'memorise' trains its main runs on nothing but the
  `tune` rows the evaluations read (what a method that tunes on its
  held-out rows would overfit to), from the uniform mixture."""
  kind, spelling, static = "memorise", "memorise", True

  @classmethod
  def matches(cls, spec):
    return spec == "memorise"

  def weights(self, seed=0):
    return "uniform"

  def rates(self, seeds):
    k = self.study.corpus.num_domains
    return np.full(k, 1.0 / k)

  def train(self, run_dir, seed):
    from doremi_jax.data import registry as corpus_registry
    honest = corpus_registry.CORPORA["synthetic"]
    rows = self.study.cfg.eval_examples_per_domain

    def tune_rows(open_rows, split, seq_len):
      src = open_rows(packing.TUNE if split == packing.TRAIN else split, seq_len)
      if split != packing.TRAIN:
        return src
      return packing.MemoryRows(*src.read(np.arange(min(rows, len(src)))))

    def cheat():
      c = honest()
      return dataclasses.replace(c, packed=tuple(functools.partial(tune_rows, o)
                                                 for o in c.packed))

    corpus_registry.CORPORA["synthetic"] = cheat
    try:
      super().train(run_dir, seed)
    finally:
      corpus_registry.CORPORA["synthetic"] = honest


def _final_losses(run_dir, split):
  """A finished run's mean loss per domain on `split`, recomputed from its
  checkpoint."""
  import jax
  from doremi_jax import context, evaluate, reference
  from doremi_jax.data.registry import get_corpus
  from doremi_jax.state import TrainConfig, build_setup
  with gin.config_scope("main"):
    cfg = TrainConfig()
  corpus = get_corpus()
  with context.using(devices=jax.devices()[:1]):
    setup = build_setup(corpus.vocab_size, cfg)
    params = reference.load(str(run_dir), corpus, setup, cfg.seq_len).params
    return evaluate.Evaluator.create(setup, corpus, cfg, split).losses(params)


def test_a_method_that_memorises_tune_gets_no_credit_on_test(tmp_path):
  arms.register(Memorise)
  try:
    result = run_stage("study", tmp_path / "s", TINY + [
        "STEPS = 200", "TrainConfig.checkpoint_every = 200", "TrainConfig.eval_every = 200",
        "train_study.arms = ['uniform', 'memorise']", "train_study.baseline = 'uniform'",
        "train_study.seeds = 2"])
  finally:
    arms.unregister(Memorise)
  assert result["split"] == "test"
  for arm in ("uniform", "memorise"):
    final = json.loads((tmp_path / "s" / "arms" / arm / "seed_0" / "eval.json").read_text())
    assert final["split"] == "test"
  run = lambda arm: tmp_path / "s" / "arms" / arm / "seed_0"
  tune = {arm: _final_losses(run(arm), packing.TUNE).mean() for arm in ("uniform", "memorise")}
  test = {arm: _final_losses(run(arm), packing.TEST).mean() for arm in ("uniform", "memorise")}
  # graded on the rows it memorised, the cheat would win by far ...
  assert tune["memorise"] < tune["uniform"] - 0.1, tune
  # ... on test it has nothing to show: no win, and worse than on its tune rows
  verdict = result["results"]["memorise"]["vs_baseline"]["uniform_avg"]["verdict"]
  assert verdict != "wins", result["results"]["memorise"]["vs_baseline"]["uniform_avg"]
  assert test["memorise"] > tune["memorise"] + 0.1, (tune, test)
