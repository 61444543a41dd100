"""The committed study and swarm configs resolve on the built-in corpus: every
arm is made and checked, the swarm builds its program (no training here; the
studies' figures are in docs/reproduction.md; the real-text corpus's config
is tests/e2e/real_text_test.py)."""

import dataclasses

import gin
import numpy as np
import pytest

from doremi_jax.data.registry import get_corpus
from doremi_jax.stages import study
from helpers import configure


def _parse(gin_file, *bindings):
  configure(bindings, [gin_file])


def _arms(workdir):
  """The config's arms, made and checked as the study makes them."""
  return study.make_arms(gin.query_parameter("train_study.arms"), str(workdir))


def test_reproduce_gin_arms_resolve_on_the_builtin_corpus(tmp_path):
  _parse("gin/reproduce.gin")
  arms = _arms(tmp_path)
  assert [a.name for a in arms] == ["stratified", "uniform", "proportional", "unimax",
                                    "doremi", "doremi_iterated"]
  assert gin.query_parameter("train_study.baseline") == "stratified"
  rounds = {a.name: a.round() for a in arms if a.kind == "doremi"}
  assert rounds == {"doremi": 1, "doremi_iterated": 2}
  corpus = get_corpus()
  for arm in arms:
    if arm.static:
      w = arm.rates(1)
      assert w.shape == (corpus.num_domains,) and abs(w.sum() - 1) < 1e-12


@pytest.mark.parametrize("gin_file", ["gin/study_quickstart.gin", "gin/study_mixers.gin",
                                      "gin/study_swarm.gin", "gin/reproduce.gin",
                                      "gin/ladder_quickstart.gin"])
def test_every_committed_study_config_makes_and_checks_its_arms(tmp_path, gin_file):
  """Every arm of the committed studies on the built-in corpus is a known
  kind and passes its checks (a swarm arm builds the swarm's program);
  the mixtures known before training are distributions. (The real-text
  study needs its corpus: tests/e2e/real_text_test.py.)"""
  import jax
  from doremi_jax import context
  _parse(gin_file)
  with context.using(devices=jax.devices()[:1]):
    arms = _arms(tmp_path / "study")
  assert len(arms) >= 2 and len({a.name for a in arms}) == len(arms)
  assert gin.query_parameter("train_study.baseline") in {a.name for a in arms}
  for arm in arms:
    assert arm.kind != "weights" or arm.static
    if arm.static:
      w = arm.rates(1)
      assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
  assert not (tmp_path / "study").exists()   # checking writes nothing


def test_the_swarm_quickstart_builds_its_program():
  import jax
  from doremi_jax import context
  from doremi_jax.stages import registry
  _parse("gin/swarm_quickstart.gin")
  with context.using(devices=jax.devices()[:2]):
    program = context.build_program(lambda: registry.get("swarm")("/nonexistent/swarm"))
  assert program.name == f"swarm{gin.query_parameter('train_swarm.members')}"


def test_the_ladder_quickstart_rungs_grow_to_about_30_times_the_proxy():
  from doremi_jax.stages import ladder
  _parse("gin/ladder_quickstart.gin")
  rungs = ladder.parse_rungs(gin.query_parameter("train_study.rungs"))
  sizes = [dataclasses.replace(r.configs()[1], vocab_size=128).num_params() for r in rungs]
  assert [r.name for r in rungs] == ["tiny", "small", "medium"]
  assert sizes == sorted(sizes) and 25 < sizes[-1] / sizes[0] < 35
  assert gin.query_parameter("train_study.schedule") == "halving"
