"""Stage `study`: which mixture trains the better main model on this corpus,
by how much, with what certainty, at equal compute.

Named arms x seeds. Every arm trains the same main model (gin's `main/`
scope) for the same number of tokens; seed s uses the same initialisation
and the same data-order seed in every arm (a paired design); every run is
evaluated on the same validation examples at the same steps
(`main/TrainConfig.eval_every`). An arm is any Step 3 weights spec
('uniform', 'proportional', a preset, a {domain: weight} file or mapping, a
Step 2 run directory), or:

  'stratified'  exactly equal rows of every domain in every batch
  'unimax'      UniMax (Chung et al. 2023): uniform over domains, each capped
                at `unimax_epochs` epochs of its data for the run's token
                budget, what capped domains cannot use spread over the rest
  'doremi'      the study runs DoReMi's reference + proxy itself (iterated
                when `rounds` > 1) in RUN/doremi and uses its weights
  'doremi:N'    the weights after round N of the same iterated run (it runs
                as many rounds as any arm asks for; a round the run skipped
                because the weights had converged gives the converged ones),
                so one study compares DoReMi with iterated DoReMi
  'swarm'       the study trains a swarm (`train_swarm`, gin's `swarm/` scope)
                in RUN/swarm and uses its law's optimum (swarm_weights.json)
  'swarm:LAW'   the optimum of the same swarm's law LAW (linear, loglinear,
                gbm), so one study compares the laws at the cost of one swarm
  'odm', 'ado', 'aioli', 'doremi_online'
                an online mixer (`train_main_model.mixer`) from its
                method's starting mixture (`mixers.PRIORS`), with gin's
                settings for it; the arm's weights are the rates averaged
                over the run's steps (mean over seeds). 'doremi_online'
                uses DoReMi's round-1 reference when the study has DoReMi
                arms, else trains one in RUN/reference (charged to it)

    RUN/arms/<arm>/seed_<s>/   one main-model run (resumable, skipped when complete)
    RUN/study.json, study.md   the statistics (doremi_jax.analysis.stats) and the verdicts

Re-running the command after a kill finishes the study with identical
numbers: finished runs are skipped and the interrupted one resumes.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional

import gin
import numpy as np

from doremi_jax import files
from doremi_jax import mixers
from doremi_jax import rundir
from doremi_jax.analysis import study_report
from doremi_jax.analysis import study_stats
from doremi_jax.config import ConfigError
from doremi_jax.data import weights as weights_lib
from doremi_jax.data.registry import get_corpus
from doremi_jax.stages import registry
from doremi_jax.state import TrainConfig
from doremi_jax.swarm import fit

STUDY_FILE = "study.json"
METHOD_ARMS = ("stratified", "unimax", "doremi", "doremi:N", "swarm", "swarm:LAW",
               *mixers.METHODS)


def _say(msg: str):
  rundir.announce("study", msg)


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


def unimax_weights(train_tokens, budget_tokens: float, max_epochs: float) -> np.ndarray:
  """UniMax (Chung et al. 2023, Algorithm 1): visit domains from the smallest;
  each gets the uniform share of the budget still unallocated, or
  `max_epochs` x its size if that is less. Returns the shares of the budget."""
  sizes = np.asarray(train_tokens, np.float64)
  alloc = np.zeros_like(sizes)
  left = float(budget_tokens)
  order = np.argsort(sizes, kind="stable")
  for i, d in enumerate(order):
    share = left / (len(order) - i)
    alloc[d] = min(share, sizes[d] * max_epochs)
    left -= alloc[d]
  return alloc / alloc.sum()


def main_config() -> TrainConfig:
  """The main model's TrainConfig (gin's `main/` scope, also when called
  inside another stage's scope, which would otherwise win)."""
  with gin.config_scope(None), gin.config_scope("main"):
    return TrainConfig()


def doremi_round(spec: Any, rounds: int) -> Optional[int]:
  """The DoReMi round an arm uses ('doremi' -> `rounds`, 'doremi:N' -> N),
  or None for an arm that is not DoReMi."""
  if spec == "doremi":
    return rounds
  if isinstance(spec, str) and spec.startswith("doremi:"):
    n = spec[len("doremi:"):]
    if not (n.isdigit() and int(n) >= 1):
      raise ConfigError(f"train_study.arms: {spec!r} names no round; write 'doremi:N' with "
                        "N >= 1 (the weights after round N of iterated DoReMi).")
    return int(n)
  return None


def swarm_law(spec: Any) -> Optional[str]:
  """The law a swarm arm uses ('swarm' -> '' for the swarm's own
  `train_swarm.law`, 'swarm:LAW' -> LAW), or None for other arms."""
  if spec == "swarm":
    return ""
  if isinstance(spec, str) and spec.startswith("swarm:"):
    law = spec[len("swarm:"):]
    if law not in fit.LAWS:
      raise ConfigError(f"train_study.arms: {spec!r} names no law; write 'swarm:LAW' with LAW "
                        f"one of {fit.LAWS}.")
    return law
  return None


def resolve_arm(name: str, spec: Any, corpus, cfg: TrainConfig,
                unimax_epochs: float) -> Optional[np.ndarray]:
  """The arm's rates in domain order; None for the DoReMi arms (known after
  their Step 2). Raises ConfigError before any training for a spec that
  cannot work."""
  what = f"train_study.arms[{name!r}]"
  if doremi_round(spec, 1) is not None or spec in mixers.METHODS or \
      swarm_law(spec) is not None:
    return None
  if spec == "stratified":
    return np.full(corpus.num_domains, 1.0 / corpus.num_domains)
  if spec == "unimax":
    budget = cfg.num_steps * cfg.tokens_per_step
    return unimax_weights(corpus.train_tokens, budget, unimax_epochs)
  if (isinstance(spec, str) and spec not in weights_lib.BUILTIN and
      spec not in weights_lib.PRESETS and not os.path.exists(spec)):
    presets = ", ".join([*weights_lib.BUILTIN, *weights_lib.PRESETS])
    raise ConfigError(
        f"{what}: {spec!r} is not an arm. An arm is one of the study's methods "
        f"({', '.join(METHOD_ARMS)}), a preset ({presets}), a {{domain: weight}} mapping, or "
        "the path of a weights JSON file or a Step 2 run directory.")
  return weights_lib.resolve_weights(spec, corpus, what)


@gin.configurable
def train_study(workdir: str, arms: Any = gin.REQUIRED, seeds: int = 3,
                baseline: str = "stratified", rounds: int = 1, unimax_epochs: float = 1.0,
                level: float = 0.95, devices=None) -> dict:
  """Trains every arm x seed and writes study.json and study.md (see the
  module docstring). `level` is the confidence of every interval (before the
  Bonferroni adjustment for the number of arms). Returns study.json."""
  arms = parse_arms(arms)
  if not (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 2):
    raise ConfigError(f"train_study.seeds must be an integer >= 2 (intervals need two "
                      f"seeds), got {seeds!r}.")
  if baseline not in arms:
    raise ConfigError(f"train_study.baseline={baseline!r} is not one of the arms "
                      f"{list(arms)}; add it to train_study.arms or choose one of them.")
  if not (0 < level < 1):
    raise ConfigError(f"train_study.level must be in (0, 1), got {level!r}.")
  if not (isinstance(unimax_epochs, (int, float)) and unimax_epochs > 0):
    raise ConfigError(f"train_study.unimax_epochs must be > 0, got {unimax_epochs!r}.")
  if not (isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1):
    raise ConfigError(f"train_study.rounds must be an integer >= 1, got {rounds!r}.")
  doremi_rounds = {n: doremi_round(s, rounds) for n, s in arms.items()}
  doremi_rounds = {n: r for n, r in doremi_rounds.items() if r is not None}
  rundir.check_writable(workdir)
  corpus = get_corpus()
  cfg = main_config()
  rates = {n: resolve_arm(n, s, corpus, cfg, unimax_epochs) for n, s in arms.items()}
  root = files.path(workdir)
  swarm_laws = {n: swarm_law(s) for n, s in arms.items()}
  swarm_laws = {n: law for n, law in swarm_laws.items() if law is not None}
  if swarm_laws:   # the swarm's settings, checked before anything trains
    registry.get("swarm")(str(root / "swarm"), devices=devices, check_only=True)
  t_start = time.time()
  _say(f"{len(arms)} arms x {seeds} seeds in {workdir}: {', '.join(arms)}; baseline "
       f"{baseline}.")

  method_runs = {}
  if doremi_rounds:
    doremi_dir = root / "doremi"
    most = max(doremi_rounds.values())
    _say(f"arms {', '.join(doremi_rounds)}: DoReMi's reference + proxy ({most} round(s)) in "
         f"{doremi_dir}")
    state = registry.get("pipeline")(str(doremi_dir), rounds=most, run_main=False,
                                     run_baseline=False, devices=devices)
    done = state["rounds"]
    for name, r in doremi_rounds.items():
      used = done[:r]   # fewer when the run converged before round r
      w = used[-1]["weights"]
      rates[name] = np.array([w[d] for d in corpus.domains], np.float64)
      method_runs[name] = [x[k] for x in used for k in ("reference_dir", "proxy_dir")]

  if swarm_laws:
    swarm_dir = root / "swarm"
    if not rundir.is_complete(swarm_dir):
      _say(f"arms {', '.join(swarm_laws)}: the swarm in {swarm_dir}")
      registry.get("swarm")(str(swarm_dir), devices=devices)
    swarm = files.read_json(swarm_dir / "swarm.json")
    for name, law in swarm_laws.items():
      w = swarm["laws"][law or swarm["law"]]["optimum"]
      rates[name] = np.array([w[d] for d in corpus.domains], np.float64)
      method_runs[name] = [str(swarm_dir)]

  reference_dir = None
  if "doremi_online" in arms.values():
    if doremi_rounds:
      reference_dir = done[0]["reference_dir"]
    else:
      reference_dir = str(root / "reference")
      if not rundir.is_complete(reference_dir):
        _say(f"arm doremi_online: its reference in {reference_dir}")
        registry.get("reference")(reference_dir, devices=devices)
    for name, spec in arms.items():
      if spec == "doremi_online":
        method_runs[name] = [] if doremi_rounds else [reference_dir]

  for name, spec in arms.items():
    for seed in range(seeds):
      run_dir = rundir.arm_dir(root, name, seed)
      if rundir.is_complete(run_dir):
        _say(f"arm {name}, seed {seed}: already complete, skipping")
        continue
      _say(f"arm {name}, seed {seed}: training in {run_dir}")
      if spec in mixers.METHODS:
        registry.get("main")(str(run_dir), weights=mixers.PRIORS[spec], seed=seed, mixer=spec,
                             reference_dir=reference_dir if spec == "doremi_online" else None,
                             devices=devices)
        continue
      weights = "stratified" if spec == "stratified" else weights_lib.as_dict(
          corpus.domains, rates[name])
      registry.get("main")(str(run_dir), weights=weights, seed=seed, devices=devices)
  for name, spec in arms.items():
    if spec in mixers.METHODS:   # the schedule's time-averaged rates, mean over seeds
      avg = [files.read_json(rundir.arm_dir(root, name, s) / "average_mixture_weights.json")
             for s in range(seeds)]
      rates[name] = np.mean([[a[d] for d in corpus.domains] for a in avg], axis=0)

  result = study_stats.analyse(root, list(arms), seeds, baseline, corpus, rates, method_runs,
                               level)
  if rundir.is_writer():
    files.write_json(root / STUDY_FILE, result)
    path = study_report.write(root)
    print(study_report.format_verdicts(result), flush=True)
    _say(f"report: {path}")
  _say(f"done in {time.time() - t_start:.0f}s")
  return result


registry.register(registry.Stage("study", train_study, runs=("main",)))
