"""A study's ladder of model sizes: `train_study.rungs`.

A rung is one main-model setting, smallest first; the last is the size the
others are judged against (the target, or the largest the user can
afford). Each rung is written

* `'NAME'`: the model of `gin/models/NAME.gin` (its `ModelConfig`
  bindings; `vocab_size` is left to the corpus, as the study's data
  decides it), or
* `{'name': 'NAME', 'model': 'MODEL', 'ModelConfig.d_model': 128,
  'TrainConfig.num_steps': 400, 'OptimizerConfig.learning_rate': 1e-3}`:
  an optional model file and any `ModelConfig`, `TrainConfig` or
  `OptimizerConfig` field (a size and its token budget and schedule),
  applied over the study's `main/` settings.

`TrainConfig.seed` is not a rung setting: the study's seeds pair every
rung. A rung's bindings are gin bindings in the scope `main/rung_NAME`
(`Rung.bind`), and its main runs train under that scope
(`Rung.active`, `registry.inner_scope`), so they apply to the arms' main
runs at that rung and to nothing else (the methods' own runs keep their
own sizes), and each run's config.gin records them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import gin
from gin import config as gin_config
from gin import config_parser

from doremi_jax import config as config_lib
from doremi_jax import files
from doremi_jax import plan
from doremi_jax import rundir
from doremi_jax.analysis import ladder_report
from doremi_jax.analysis import ladder_stats
from doremi_jax.config import ConfigError
from doremi_jax.model import ModelConfig
from doremi_jax.optimizer import OptimizerConfig
from doremi_jax.stages import registry
from doremi_jax.state import TrainConfig

SAFE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
CONFIGURABLES = {"ModelConfig": ModelConfig, "TrainConfig": TrainConfig,
                 "OptimizerConfig": OptimizerConfig}
NOT_PER_RUNG = ("TrainConfig.seed",)


@dataclasses.dataclass(frozen=True)
class Rung:
  name: str
  bindings: tuple   # ((Configurable.field, value), ...)

  @property
  def scope(self) -> str:
    return f"rung_{self.name}"

  def bind(self) -> None:
    with gin.unlock_config():
      for key, value in self.bindings:
        gin.bind_parameter(f"main/{self.scope}/{key}", value)

  def bind_methods(self, stages=("reference", "proxy", "swarm")) -> None:
    """The rung's ModelConfig fields also for a method's own runs of these
    stages when they run inside `active` (a 'doremi@NAME' or 'swarm@NAME'
    arm)."""
    with gin.unlock_config():
      for key, value in self.bindings:
        if key.startswith("ModelConfig."):
          for stage in stages:
            gin.bind_parameter(f"{stage}/{self.scope}/{key}", value)

  def active(self):
    """The block's stages run under this rung's scope."""
    return registry.inner_scope(self.scope)

  def configs(self) -> tuple:
    """(TrainConfig, ModelConfig, OptimizerConfig) of this rung's main runs
    (their own checks run here: a bad value is a ConfigError before anything
    trains)."""
    with gin.config_scope(None), gin.config_scope("main"), gin.config_scope(self.scope):
      return TrainConfig(), ModelConfig(), OptimizerConfig()

  def settings(self) -> dict:
    return {key: value for key, value in self.bindings}


def model_file(name: str) -> str:
  """The path of gin/models/NAME.gin."""
  for base in config_lib.GIN_SEARCH_PATHS:
    for path in (os.path.join(base, "gin", "models", f"{name}.gin"),
                 os.path.join(base, "models", f"{name}.gin")):
      if os.path.isfile(path):
        return path
  have = sorted(f[:-4] for f in os.listdir(os.path.join(config_lib.GIN_SEARCH_PATHS[1], "gin",
                                                        "models")) if f.endswith(".gin"))
  raise ConfigError(f"train_study.rungs: there is no model {name!r} (gin/models/{name}.gin); "
                    f"name one of {have} or give the rung's ModelConfig fields in a dict.")


def model_bindings(name: str) -> list:
  """[(ModelConfig.field, value)] of gin/models/NAME.gin, without vocab_size."""
  path = model_file(name)
  with open(path) as f:
    text = f.read()
  out = []
  try:
    statements = list(config_parser.ConfigParser(text, gin_config.ParserDelegate(
        skip_unknown=True)))
  except SyntaxError as e:
    raise ConfigError(f"train_study.rungs: {path} does not parse: {e}") from e
  for st in statements:
    if not (isinstance(st, config_parser.BindingStatement) and not st.scope and
            st.selector == "ModelConfig"):
      raise ConfigError(f"train_study.rungs: {path} holds more than ModelConfig bindings; a "
                        "rung's model file may only bind ModelConfig fields.")
    if st.arg_name != "vocab_size":
      out.append((f"ModelConfig.{st.arg_name}", st.value))
  return out


def _check_key(rung: str, key: Any) -> None:
  configurable, _, field = str(key).partition(".")
  cls = CONFIGURABLES.get(configurable)
  if cls is None or field not in {f.name for f in dataclasses.fields(cls)}:
    raise ConfigError(f"train_study.rungs[{rung!r}]: {key!r} is not a setting; write "
                      f"'ModelConfig.FIELD', 'TrainConfig.FIELD' or 'OptimizerConfig.FIELD' "
                      "with a field of that config (or 'name' / 'model').")
  if key in NOT_PER_RUNG:
    raise ConfigError(f"train_study.rungs[{rung!r}]: {key} cannot change between rungs (the "
                      "study's seeds pair the rungs); set train_study.seeds instead.")


def parse_one(spec: Any) -> Rung:
  if isinstance(spec, str):
    return Rung(spec, tuple(model_bindings(spec)))
  if not isinstance(spec, Mapping):
    raise ConfigError(f"train_study.rungs: {spec!r} is not a rung; write a model name "
                      "('tiny') or a dict {'name': ..., 'model': ..., 'ModelConfig.FIELD': ...}.")
  name = spec.get("name", spec.get("model"))
  if not isinstance(name, str):
    raise ConfigError(f"train_study.rungs: the rung {dict(spec)!r} has no 'name' (or 'model').")
  bindings = model_bindings(spec["model"]) if "model" in spec else []
  for key, value in spec.items():
    if key in ("name", "model"):
      continue
    _check_key(name, key)
    bindings = [(k, v) for k, v in bindings if k != key] + [(key, value)]
  return Rung(name, tuple(bindings))


def parse_rungs(spec: Any) -> list:
  """The ladder's rungs from `train_study.rungs` ([] when None: one size,
  the `main/` settings), each bound and checked (module docstring)."""
  if spec is None:
    return []
  if not isinstance(spec, (list, tuple)) or len(spec) < 2:
    raise ConfigError(f"train_study.rungs must list at least two rungs, smallest first (the "
                      f"last is the size the others are judged against), got {spec!r}; leave "
                      "it unset for a study at one size.")
  rungs = [parse_one(s) for s in spec]
  names = [r.name for r in rungs]
  bad = [n for n in names if not SAFE_NAME.match(n)]
  if bad:
    raise ConfigError(f"train_study.rungs: rung names are letters, digits and '_' (they name "
                      f"directories and gin scopes); rename {bad}.")
  if len(set(names)) != len(names):
    raise ConfigError(f"train_study.rungs names a rung twice: {names}.")
  for rung in rungs:
    rung.bind()
    rung.bind_methods()
    try:
      rung.configs()
    except ConfigError as e:
      raise ConfigError(f"train_study.rungs[{rung.name!r}]: {e}") from e
  return rungs


SCHEDULES = ("grid", "halving")


def check_schedule(schedule: Any, keep: Any, rungs: list) -> None:
  if schedule not in SCHEDULES:
    raise ConfigError(f"train_study.schedule = {schedule!r}; choose 'grid' (every arm at every "
                      "rung) or 'halving' (successive halving: only arms not beaten at a rung "
                      "go up to the next).")
  config_lib.check_number("train_study.keep", keep, low=0, high=1, low_open=True)
  if schedule == "halving" and not rungs:
    raise ConfigError("train_study.schedule = 'halving' needs a ladder: set train_study.rungs "
                      "(at least two sizes, smallest first).")


def run(workdir: str, arms: dict, s: dict, rungs: list, study_at) -> dict:
  """The ladder: `study_at(workdir, arms, s, rung)` (the study at one size)
  at every rung, smallest first, with every arm ('grid') or, under
  'halving', the arms `ladder_stats.halving_step` sends up from the rung
  below; then the ladder's study.json (`ladder_stats.summarise`, with the
  schedule's decisions and compute) and study.md. Every decision is a
  function of the rungs' study.json, so a re-run decides the same."""
  active, per_rung, decisions = list(arms), [], []
  for i, rung in enumerate(rungs):
    result = study_at(workdir, {a: arms[a] for a in active}, s, rung)
    per_rung.append((rung, result))
    if s["schedule"] == "halving" and i < len(rungs) - 1:
      step = dict(ladder_stats.halving_step(result, s["keep"], s["level"]), rung=rung.name)
      decisions.append(step)
      for arm, why in step["stopped"].items():
        rundir.announce("study", f"halving: {arm} stops at rung {rung.name}: {why}")
      active = step["survivors"]
  root = files.path(workdir)
  ladder = ladder_stats.summarise(
      [(r.name, r.settings(), rundir.rung_dir(root, r.name).relative_to(root).as_posix(), res)
       for r, res in per_rung], s["level"])
  ladder["schedule"] = {
      "name": s["schedule"], "keep": s["keep"], "decisions": decisions,
      "stopped_at": {a: d["rung"] for d in decisions for a in d["stopped"]},
      "compute": ladder_stats.compute([(r.name, res) for r, res in per_rung], list(arms))}
  with plan.writer(root, "ladder") as mine:
    if mine:
      files.write_json(root / rundir.STUDY_JSON, ladder)
      path = ladder_report.write(root)
      print(ladder_report.format_summary(ladder), flush=True)
      rundir.announce("study", f"ladder report: {path}")
  return ladder
