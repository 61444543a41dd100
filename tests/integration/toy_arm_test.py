"""The worked example of docs/architecture.md: a new arm kind in one small
module (here, in this file), registered without touching any stage, run in
a tiny study next to stratified sampling."""

import json

import numpy as np
import pytest

from doremi_jax import arms
from doremi_jax.config import ConfigError
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

  def weights(self):
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
