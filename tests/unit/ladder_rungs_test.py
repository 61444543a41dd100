"""`train_study.rungs`: a rung's settings bind in its own scope under
`main/`, keep the user's other `main/` settings, reach the main runs a
stage starts inside `Rung.active` and nothing else, and bad rungs are a
ConfigError naming what to change."""

import gin
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.model import ModelConfig
from doremi_jax.stages import ladder
from doremi_jax.stages import registry
from doremi_jax.state import TrainConfig
from helpers import configure


def _setup(*bindings):
  configure(["main/TrainConfig.eval_every = 25", "TrainConfig.num_steps = 50", *bindings],
            ["gin/cpu.gin"])


def test_a_model_name_and_a_dict_of_settings_make_rungs():
  _setup()
  tiny, wide = ladder.parse_rungs(["tiny", {"name": "wide", "model": "tiny",
                                             "ModelConfig.d_model": 96,
                                             "TrainConfig.num_steps": 80,
                                             "OptimizerConfig.learning_rate": 1e-3}])
  assert tiny.name == "tiny" and ("ModelConfig.d_model", 64) in tiny.bindings
  assert not any(k == "ModelConfig.vocab_size" for k, _ in tiny.bindings)   # the corpus's
  cfg, model, opt = wide.configs()
  assert (model.d_model, model.num_layers, cfg.num_steps, opt.learning_rate) == (96, 2, 80, 1e-3)
  assert cfg.eval_every == 25                  # the user's main/ setting still applies
  assert tiny.configs()[0].num_steps == 50
  assert wide.settings()["ModelConfig.d_model"] == 96


def test_a_rung_reaches_the_stages_started_inside_it_and_nothing_outside(tmp_path):
  _setup()
  _, wide = ladder.parse_rungs(["tiny", {"name": "wide", "ModelConfig.d_model": 96}])
  seen = []

  def fn(workdir):
    seen.append((gin.current_scope_str(), ModelConfig().d_model, TrainConfig().eval_every))

  for name in ("main", "reference"):
    stage = registry.Stage(name, fn)
    with wide.active():
      stage(str(tmp_path / name))
    stage(str(tmp_path / f"{name}_outside"))
  # a method's own runs inside the rung take its model size ('doremi@wide'), not the
  # main runs' other settings
  assert seen == [("main/rung_wide", 96, 25), ("main", 64, 25),
                  ("reference/rung_wide", 96, 0), ("reference", 64, 0)]


@pytest.mark.parametrize("rungs,message", [
    (["tiny"], "at least two rungs"),
    ("tiny", "at least two rungs"),
    (["tiny", "tiny"], "names a rung twice"),
    (["tiny", "nope"], "there is no model 'nope'"),
    (["tiny", {"name": "a/b", "ModelConfig.d_model": 8}], "letters, digits and '_'"),
    (["tiny", {"ModelConfig.d_model": 8}], "has no 'name'"),
    (["tiny", {"name": "x", "ModelConfig.depth": 8}], "'ModelConfig.depth' is not a setting"),
    (["tiny", {"name": "x", "Foo.bar": 8}], "'Foo.bar' is not a setting"),
    (["tiny", {"name": "x", "TrainConfig.seed": 3}], "cannot change between rungs"),
    (["tiny", {"name": "x", "ModelConfig.d_model": 0}],
     "train_study.rungs['x']: ModelConfig.d_model must be a positive integer"),
    (["tiny", 3], "is not a rung"),
])
def test_bad_rungs_say_what_to_change(rungs, message):
  _setup()
  with pytest.raises(ConfigError, match=None) as e:
    ladder.parse_rungs(rungs)
  assert message in str(e.value)


@pytest.mark.parametrize("schedule,keep,rungs,message", [
    ("halve", 0.5, ["r"], "train_study.schedule = 'halve'; choose 'grid'"),
    ("halving", 0.0, ["r"], "train_study.keep must be in (0, 1]"),
    ("halving", 1.5, ["r"], "train_study.keep must be in (0, 1]"),
    ("halving", 0.5, [], "needs a ladder: set train_study.rungs"),
])
def test_a_bad_schedule_says_what_to_change(schedule, keep, rungs, message):
  with pytest.raises(ConfigError) as e:
    ladder.check_schedule(schedule, keep, rungs)
  assert message in str(e.value)
  ladder.check_schedule("grid", 1.0, [])
