"""Stage `study`: which mixture trains the better main model on this corpus,
by how much, with what certainty, at equal compute.

Named arms x seeds. Every arm trains the same main model (gin's `main/`
scope) for the same number of tokens; seed s uses the same initialisation
and the same data-order seed in every arm (a paired design); every run is
evaluated on the same `test` rows at the same steps
(`main/TrainConfig.eval_every`). What an arm can be is the arm registry's
(`doremi_jax.arms`: stratified sampling, UniMax, any weights spec, DoReMi
and iterated DoReMi, swarm laws, every online mixer); the stage only asks
each arm to check itself, prepare its mixture (its method's own runs, once
per kind), train each seed and report its mixture.

    RUN/arms/<arm>/seed_<s>/   one main-model run (resumable, skipped when complete)
    RUN/doremi, RUN/swarm, RUN/reference
                               the methods' own runs (see each arm kind)
    RUN/study.json, study.md   the statistics (doremi_jax.analysis.stats) and the verdicts

Re-running the command after a kill finishes the study with identical
numbers: finished runs are skipped and the interrupted one resumes.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import gin

from doremi_jax import arms as arms_lib
from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import study_report
from doremi_jax.analysis import study_stats
from doremi_jax.analysis import task_stats
from doremi_jax.config import ConfigError, check_number
from doremi_jax.data.registry import get_corpus
from doremi_jax.stages import registry
from doremi_jax.state import TrainConfig
from doremi_jax.tasks import registry as task_registry


def parse_arms(arms) -> dict:
  """{name: spec} from a mapping or a list of specs named by themselves."""
  if isinstance(arms, Mapping):
    items = list(arms.items())
  elif isinstance(arms, (list, tuple)):
    bad = [a for a in arms if not isinstance(a, str)]
    if bad:
      raise ConfigError(f"train_study.arms: in a list every arm is a name or path (named by "
                        f"itself); give a dict {{name: spec}} for {bad}.")
    items = [(a, a) for a in arms]
  else:
    raise ConfigError(f"train_study.arms must be a dict {{name: spec}} or a list of specs, "
                      f"got {arms!r}.")
  names = [n for n, _ in items]
  if not items or any(not isinstance(n, str) or not n for n in names):
    raise ConfigError(f"train_study.arms needs at least one arm, each with a non-empty name; "
                      f"got {names}.")
  if len(set(names)) != len(names):
    raise ConfigError(f"train_study.arms names an arm twice: {names}.")
  return dict(items)


def main_config() -> TrainConfig:
  """The main model's TrainConfig (gin's `main/` scope, also when called
  inside another stage's scope, which would otherwise win)."""
  with gin.config_scope(None), gin.config_scope("main"):
    return TrainConfig()


METHOD_SEEDS = ("per_seed", "shared")


def check_primary(primary, eval_tasks) -> None:
  """`train_study.primary` names a loss ('uniform_avg', 'worst_case') or a
  task of `main/TrainConfig.eval_tasks`, alone (its primary metric) or as
  'TASK/METRIC'."""
  names = [task_registry.task_name(e) for e in eval_tasks]
  ok = isinstance(primary, str) and primary in task_stats.LOSS_METRICS
  if isinstance(primary, str) and not ok:
    task, _, metric = primary.partition("/")
    ok = task in names and (not metric or metric in task_stats.HIGHER_IS_BETTER)
  if not ok:
    raise ConfigError(
        f"train_study.primary = {primary!r}; name 'uniform_avg', 'worst_case', or a task of "
        f"main/TrainConfig.eval_tasks ({names or 'none set'}) alone or as 'TASK/METRIC' with "
        f"METRIC one of {sorted(task_stats.HIGHER_IS_BETTER)}.")


def _check_settings(arms: dict, seeds, baseline, rounds, unimax_epochs, level, method_seeds):
  if method_seeds not in METHOD_SEEDS:
    raise ConfigError(f"train_study.method_seeds = {method_seeds!r}; choose 'per_seed' (seed s "
                      "runs each method's own runs with seed s, so the intervals include the "
                      "method's randomness) or 'shared' (one method run for all seeds: "
                      "cheaper, the intervals cover only the main model's seed).")
  if not (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 2):
    raise ConfigError(f"train_study.seeds must be an integer >= 2 (intervals need two "
                      f"seeds), got {seeds!r}.")
  if baseline not in arms:
    raise ConfigError(f"train_study.baseline={baseline!r} is not one of the arms "
                      f"{list(arms)}; add it to train_study.arms or choose one of them.")
  if not (0 < level < 1):
    raise ConfigError(f"train_study.level must be in (0, 1), got {level!r}.")
  check_number("train_study.unimax_epochs", unimax_epochs, low=0, low_open=True)
  if not (isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1):
    raise ConfigError(f"train_study.rounds must be an integer >= 1, got {rounds!r}.")


def make_arms(arms: Any, workdir: str, rounds: int = 1, unimax_epochs: float = 1.0,
              seeds: int = 3, method_seeds: str = "per_seed") -> list:
  """The study's arms (`arms_lib.Arm`s) from `train_study.arms`, each
  checked (ConfigError before anything trains)."""
  study = arms_lib.Study(files.path(workdir), get_corpus(), main_config(),
                         {"rounds": rounds, "unimax_epochs": unimax_epochs, "seeds": seeds,
                          "method_seeds": method_seeds})
  made = [arms_lib.make(name, spec, study) for name, spec in parse_arms(arms).items()]
  for arm in made:
    arm.check()
  return made


def _train_arms(made: list, seeds: int):
  for arm in made:
    for seed in range(seeds):
      run_dir = rundir.arm_dir(arm.study.root, arm.name, seed)
      if rundir.is_complete(run_dir):
        arm.study.say(f"arm {arm.name}, seed {seed}: already complete, skipping")
        continue
      arm.study.say(f"arm {arm.name}, seed {seed}: training in {run_dir}")
      arm.train(str(run_dir), seed)


@gin.configurable
def train_study(workdir: str, arms: Any = gin.REQUIRED, seeds: int = 3,
                baseline: str = "stratified", rounds: int = 1, unimax_epochs: float = 1.0,
                level: float = 0.95, method_seeds: str = "per_seed",
                primary: str = "uniform_avg") -> dict:
  """Trains every arm x seed and writes study.json and study.md (see the
  module docstring). `rounds`: DoReMi's rounds ('doremi' arms);
  `unimax_epochs`: UniMax's cap ('unimax' arms); `level` is the confidence
  of every interval (before the Bonferroni adjustment for the number of
  arms). `method_seeds`: 'per_seed' (seed s runs the methods' own runs,
  DoReMi's reference and proxy, the swarm, online DoReMi's reference, with
  seed s: the intervals include the whole method's randomness) or 'shared'
  (one run of each, shared by every seed). `primary`: the metric of the
  headline verdict (`check_primary`). Returns study.json."""
  names = parse_arms(arms)
  _check_settings(names, seeds, baseline, rounds, unimax_epochs, level, method_seeds)
  check_primary(primary, main_config().eval_tasks)
  rundir.check_writable(workdir)
  made = make_arms(arms, workdir, rounds, unimax_epochs, seeds, method_seeds)
  study = made[0].study
  t_start = time.time()
  study.say(f"{len(made)} arms x {seeds} seeds in {workdir}: {', '.join(names)}; baseline "
            f"{baseline}.")
  for kind, mine in arms_lib.by_kind(made):
    kind.prepare_all(mine, study)
  _train_arms(made, seeds)
  rates = {arm.name: arm.rates(seeds) for arm in made}
  method_runs = {arm.name: arm.method_runs for arm in made}
  result = study_stats.analyse(study.root, list(names), seeds, baseline, study.corpus, rates,
                               method_runs, level, method_seeds, primary)
  for arm in made:
    result["results"][arm.name].update(arm.report(seeds))
  if rundir.is_writer():
    files.write_json(study.root / rundir.STUDY_JSON, result)
    path = study_report.write(study.root)
    print(study_report.format_verdicts(result), flush=True)
    study.say(f"report: {path}")
  study.say(f"done in {time.time() - t_start:.0f}s")
  return result


# What compile_check compiles for a study: the main model's step (the arms'
# weights do not change it).
registry.register(registry.Stage("study", train_study, runs=(("main", {"weights": "uniform"}),)))
