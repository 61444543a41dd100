"""Swarm arms: the optimum of a mixing law fitted to a swarm of small models."""

from __future__ import annotations

import contextlib
import functools

from doremi_jax import context
from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.arms import base
from doremi_jax.config import ConfigError
from doremi_jax.stages import registry as stages
from doremi_jax.swarm import fit


@base.register
class Swarm(base.Arm):
  """'swarm': the study trains a swarm (`train_swarm`, gin's `swarm/`
  scope) once in RUN/swarm and uses its law's optimum (swarm_weights.json).
  'swarm:LAW': the optimum of the same swarm's law LAW (linear, loglinear,
  gbm), so one study compares the laws at the cost of one swarm.
  'swarm@RUNG' (or 'swarm:LAW@RUNG'): the same with the members at the
  model size of the ladder's rung RUNG (its ModelConfig fields), trained
  once in RUN/swarm_at_RUNG: does the members' size change the law's
  optimum and its value? A swarm split into groups (`train_swarm.groups`)
  gives the study's workers one task per group. The swarm's runs are
  charged to every swarm arm that uses them."""
  kind, spelling = "swarm", "swarm, swarm:LAW, swarm@RUNG"

  @classmethod
  def matches(cls, spec):
    return isinstance(spec, str) and (spec == "swarm" or spec.startswith(("swarm:", "swarm@")))

  @property
  def scale(self):
    """The rung whose size the swarm's members have (None: gin's sizes)."""
    return self.spec.partition("@")[2] or None

  def law(self) -> str:
    """The arm's law ('' for the swarm's own `train_swarm.law`)."""
    base_spec = self.spec.partition("@")[0]
    law = base_spec[len("swarm:"):] if base_spec != "swarm" else ""
    if base_spec != "swarm" and law not in fit.LAWS:
      raise ConfigError(f"train_study.arms: {self.spec!r} names no law; write 'swarm:LAW' "
                        f"with LAW one of {fit.LAWS}.")
    return law

  def check(self):
    self.law()
    scales = self.study.settings.get("scales") or {}
    if self.scale is not None and self.scale not in scales:
      raise ConfigError(f"train_study.arms: {self.spec!r} names the rung {self.scale!r}, but "
                        f"train_study.rungs has {sorted(scales) or 'none'}; name one of them "
                        "(its model size is the swarm members').")
    checked = self.study.shared.setdefault("swarm_checked", set())
    if self.scale not in checked:   # its settings and mesh, training nothing
      run_dir = str(self.study.method_dir(rundir.STUDY_SWARM, None, self.scale))
      with _at(self.study, self.scale):
        context.build_program(lambda: stages.get("swarm")(run_dir))
      checked.add(self.scale)

  @classmethod
  def method_subtasks(cls, arms, study, seed):
    out = []
    for scale in dict.fromkeys(a.scale for a in arms):
      with _at(study, scale):
        groups = stages.bindings("swarm", stages.get("swarm").fn).get("groups", 1)
      run_dir = study.method_dir(rundir.STUDY_SWARM, seed, scale)
      for g in range(groups if groups > 1 else 0):
        group_dir = run_dir / rundir.SWARM_GROUP.format(g)
        out.append((("" if scale is None else f"at_{scale}/") + group_dir.name,
                    functools.partial(_train_group, study, scale, run_dir, seed, g),
                    functools.partial(rundir.is_complete, group_dir),
                    f"the swarm's group {g} in {group_dir}"))
    return out

  @classmethod
  def prepare_all(cls, arms, study):
    for scale in dict.fromkeys(a.scale for a in arms):
      mine = [a for a in arms if a.scale == scale]
      for seed in study.method_seeds():
        run_dir = study.method_dir(rundir.STUDY_SWARM, seed, scale)
        if not rundir.is_complete(run_dir):
          study.say(f"arms {', '.join(a.name for a in mine)}: the swarm in {run_dir}")
          with _at(study, scale):
            stages.get("swarm")(str(run_dir), seed=seed)
        swarm = rundir.read_result(run_dir / rundir.SWARM_JSON)
        for arm in mine:
          law = swarm["laws"][arm.law() or swarm["law"]]
          arm.final[seed] = law["optimum"]
          arm.predicted[seed] = dict(law["predicted"], objective=law["predicted_objective"])
          arm.terms = swarm["objective_terms"]
          arm.charge(*[run_dir / g for g in swarm.get("groups") or ()] or [run_dir])

  def __init__(self, name, spec, study):
    super().__init__(name, spec, study)
    self.predicted: dict = {}   # {method seed: the law's predicted losses at its optimum}
    self.terms: dict = {}       # the swarm's objective, {target: weight}

  def report(self, seeds):
    """The law's prediction at its optimum (fitted to the swarm members'
    `tune` losses) beside what the arm's main runs measured on `test`
    (means over seeds). The prediction is for a swarm member's run (gin's
    `swarm/` scope, at RUNG's size for 'swarm@RUNG'): a main model of
    another size or length is expected to differ by its scale, not only by
    the law's error."""
    domains = list(self.study.corpus.domains)
    keys = [self.study.method_seed(s) for s in range(seeds)]
    finals = [files.read_json(self.study.arm_dir(self.name, s) / rundir.EVAL)
              for s in range(seeds)]
    measured = {d: sum(f["per_domain"][d]["loss"] for f in finals) / seeds for d in domains}
    measured["average"] = sum(f["uniform_average"] for f in finals) / seeds
    measured["worst"] = sum(f["worst_case"]["loss"] for f in finals) / seeds
    for t in self.predicted[keys[0]]:   # task targets the main runs also evaluated
      task = t.rpartition("/")[0]
      if task and all(task in f.get("tasks", {}) for f in finals):
        measured[t] = sum(f["tasks"][task]["bpb"] for f in finals) / seeds
    # the objective the law's optimum minimises (its terms' laws combined);
    # None when the main runs did not evaluate one of its tasks
    measured["objective"] = (sum(w * measured[t] for t, w in self.terms.items())
                             if all(t in measured for t in self.terms) else None)
    predicted = {t: sum(self.predicted[k][t] for k in keys) / seeds for t in measured}
    return {"law_prediction": {"predicted_from": "tune", "measured_on": finals[0]["split"],
                               "predicted": predicted, "measured": measured}}


def _at(study, scale):
  """The block runs the swarm stage at rung `scale`'s size (None: gin's)."""
  return study.settings["scales"][scale].active() if scale is not None else \
      contextlib.nullcontext()


def _train_group(study, scale, run_dir, seed, group) -> None:
  with _at(study, scale):
    stages.get("swarm")(str(run_dir), seed=seed, group=group)
