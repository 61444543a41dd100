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

import contextlib
import time
from typing import Any, Mapping, Optional

import gin

from doremi_jax import arms as arms_lib
from doremi_jax import files
from doremi_jax import plan
from doremi_jax import rundir
from doremi_jax.analysis import study_report
from doremi_jax.analysis import study_stats
from doremi_jax.analysis import task_stats
from doremi_jax.config import ConfigError, check_number
from doremi_jax.data.registry import get_corpus
from doremi_jax.stages import ladder
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
              seeds: int = 3, method_seeds: str = "per_seed", rung=None,
              scales: Optional[dict] = None) -> list:
  """The study's arms (`arms_lib.Arm`s) from `train_study.arms`, each
  checked (ConfigError before anything trains); at `rung` (a ladder's
  `ladder.Rung`) their main runs are that rung's. `scales`: {name: Rung}
  a method arm may name for its own runs ('doremi@NAME')."""
  root = files.path(workdir)
  cfg = rung.configs()[0] if rung is not None else main_config()
  study = arms_lib.Study(root, get_corpus(), cfg,
                         {"rounds": rounds, "unimax_epochs": unimax_epochs, "seeds": seeds,
                          "method_seeds": method_seeds, "scales": scales or {}},
                         arms_root=rundir.rung_dir(root, rung.name) if rung is not None else root)
  made = [arms_lib.make(name, spec, study) for name, spec in parse_arms(arms).items()]
  for arm in made:
    arm.check()
  return made


def plan_tasks(made: list, seeds: int, rung=None) -> tuple:
  """The study's work at one size as `plan.Task`s: each arm kind's method
  runs for each method seed (after the earlier kinds' for that seed: a
  kind may reuse their runs; those it trains apart, `method_subtasks`,
  first, each its own task), then every arm x seed main run (after all
  method runs; it first reads their results, once per worker). Returns
  (tasks, read): `read()` reads the method runs' results into the arms
  (once per worker; every worker does before the report)."""
  study = made[0].study
  kinds = arms_lib.by_kind(made)
  read = []

  def read_methods():
    if not read:
      with plan.reading():
        for kind, mine in kinds:
          kind.prepare_all(mine, study)
      read.append(True)

  def method_task(i, seed):
    def fn():
      with plan.reading(), study.restricted([seed]):
        for kind, mine in kinds[:i + 1]:
          kind.prepare_all(mine, study)
    return fn

  tasks, keys = [], {}
  for i, (kind, mine) in enumerate(kinds):
    for seed in study.method_seeds() if kind.has_method_runs() else ():
      key = f"methods/{kind.kind}/" + ("shared" if seed is None else f"seed_{seed}")
      deps = tuple(k for (j, s), k in keys.items() if s == seed and j < i)
      keys[(i, seed)] = key
      subs = [plan.Task(f"{key}/{sub}", fn, deps, what=what, complete=complete)
              for sub, fn, complete, what in kind.method_subtasks(mine, study, seed)]
      tasks += subs
      what = f"the method runs of {', '.join(a.name for a in mine)}" + (
          "" if seed is None else f", seed {seed}")
      tasks.append(plan.Task(key, method_task(i, seed), deps + tuple(t.key for t in subs),
                             what=what))

  def main_task(arm, seed, run_dir):
    def fn():
      read_methods()
      arm.study.say(f"arm {arm.name}, seed {seed}: training in {run_dir}")
      with rung.active() if rung is not None else contextlib.nullcontext():
        arm.train(str(run_dir), seed)
    return fn

  for arm in made:
    for seed in range(seeds):
      run_dir = study.arm_dir(arm.name, seed)
      tasks.append(plan.Task(f"arms/{arm.name}/seed_{seed}", main_task(arm, seed, run_dir),
                             tuple(keys.values()), what=f"the main run in {run_dir}",
                             complete=lambda d=run_dir: rundir.is_complete(d)))
  return tasks, read_methods


def study_at(workdir: str, arms: Any, s: dict, rung=None) -> dict:
  """Every arm x seed at one size (the `main/` settings, or a ladder's
  rung): the methods' own runs, the main runs (shared with any other
  worker on this study: `plan`), then study.json and study.md in the
  study's (or the rung's) directory. `s`: train_study's settings. Returns
  that study.json."""
  made = make_arms(arms, workdir, s["rounds"], s["unimax_epochs"], s["seeds"],
                   s["method_seeds"], rung, s.get("scales"))
  study = made[0].study
  where = f" at rung {rung.name}" if rung is not None else ""
  study.say(f"{len(made)} arms x {s['seeds']} seeds{where} in {study.arms_root}: "
            f"{', '.join(a.name for a in made)}; baseline {s['baseline']}.")
  phase = "study" if rung is None else f"rung_{rung.name}"
  tasks, read = plan_tasks(made, s["seeds"], rung)
  plan.execute(study.root, phase, tasks, study.say)
  read()
  seeds = s["seeds"]
  rates = {arm.name: arm.rates(seeds) for arm in made}
  method_runs = {arm.name: arm.method_runs for arm in made}
  result = study_stats.analyse(study.arms_root, [a.name for a in made], seeds, s["baseline"],
                               study.corpus, rates, method_runs, s["level"], s["method_seeds"],
                               s["primary"], (s["power"], s["power_difference"]),
                               method_root=study.root)
  for arm in made:
    result["results"][arm.name].update(arm.report(seeds))
  with plan.writer(study.root, phase) as mine:
    if mine:
      files.write_json(study.arms_root / rundir.STUDY_JSON, result)
      path = study_report.write(study.arms_root)
      print(study_report.format_verdicts(result), flush=True)
      study.say(f"report: {path}")
  return result


@gin.configurable
def train_study(workdir: str, arms: Any = gin.REQUIRED, seeds: int = 3,
                baseline: str = "stratified", rounds: int = 1, unimax_epochs: float = 1.0,
                level: float = 0.95, method_seeds: str = "per_seed",
                primary: str = "uniform_avg", rungs: Any = None, power: float = 0.8,
                power_difference: float = 0.01, schedule: str = "grid",
                keep: float = 0.5) -> dict:
  """Trains every arm x seed and writes study.json and study.md (see the
  module docstring). `rounds`: DoReMi's rounds ('doremi' arms);
  `unimax_epochs`: UniMax's cap ('unimax' arms); `level` is the confidence
  of every interval (before the Bonferroni adjustment for the number of
  arms). `method_seeds`: 'per_seed' (seed s runs the methods' own runs,
  DoReMi's reference and proxy, the swarm, online DoReMi's reference, with
  seed s: the intervals include the whole method's randomness) or 'shared'
  (one run of each, shared by every seed). `primary`: the metric of the
  headline verdict (`check_primary`). `rungs`: a ladder of main-model sizes
  (`ladder`; None: one size). `power`, `power_difference`: the seeds each
  arm would need to tell `power_difference` (in the primary metric's
  units) from zero at `level` with that power (`ladder_stats.seeds_needed`).
  `schedule`: 'grid' (every arm at every rung) or 'halving' (only arms not
  beaten at a rung, or among its best fraction `keep`, go up;
  `ladder_stats.halving_step`). Returns study.json."""
  names = parse_arms(arms)
  _check_settings(names, seeds, baseline, rounds, unimax_epochs, level, method_seeds)
  check_number("train_study.power", power, low=0, high=1, low_open=True, high_open=True)
  check_number("train_study.power_difference", power_difference, low=0, low_open=True)
  steps = ladder.parse_rungs(rungs)
  ladder.check_schedule(schedule, keep, steps)
  for cfg in [main_config()] + [r.configs()[0] for r in steps]:
    check_primary(primary, cfg.eval_tasks)
  rundir.check_writable(workdir)
  s = dict(seeds=seeds, baseline=baseline, rounds=rounds, unimax_epochs=unimax_epochs,
           level=level, method_seeds=method_seeds, primary=primary, power=power,
           power_difference=power_difference, schedule=schedule, keep=keep,
           scales={r.name: r for r in steps})
  t_start = time.time()
  if not steps:
    result = study_at(workdir, arms, s)
  else:
    result = ladder.run(workdir, names, s, steps, study_at)
  rundir.announce("study", f"done in {time.time() - t_start:.0f}s")
  return result


def compiled_runs() -> tuple:
  """What compile_check compiles for a study: the main model's step (the
  arms' weights do not change it), at every rung of a ladder."""
  rungs = ladder.parse_rungs(registry.bindings("study", train_study).get("rungs"))
  if not rungs:
    return (("main", {"weights": "uniform"}),)
  return tuple(("main", {"weights": "uniform"}, r.scope) for r in rungs)


registry.register(registry.Stage("study", train_study, runs=compiled_runs, shared=True))
