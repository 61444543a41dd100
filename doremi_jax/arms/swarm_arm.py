"""Swarm arms: the optimum of a mixing law fitted to a swarm of small models."""

from __future__ import annotations

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
  gbm), so one study compares the laws at the cost of one swarm. The
  swarm's run is charged to every swarm arm."""
  kind, spelling = "swarm", "swarm, swarm:LAW"

  @classmethod
  def matches(cls, spec):
    return isinstance(spec, str) and (spec == "swarm" or spec.startswith("swarm:"))

  def law(self) -> str:
    """The arm's law ('' for the swarm's own `train_swarm.law`)."""
    law = self.spec[len("swarm:"):] if self.spec != "swarm" else ""
    if law and law not in fit.LAWS:
      raise ConfigError(f"train_study.arms: {self.spec!r} names no law; write 'swarm:LAW' "
                        f"with LAW one of {fit.LAWS}.")
    return law

  def check(self):
    self.law()
    if "swarm_checked" not in self.study.shared:   # its settings and mesh, training nothing
      run_dir = str(self.study.root / rundir.STUDY_SWARM)
      context.build_program(lambda: stages.get("swarm")(run_dir))
      self.study.shared["swarm_checked"] = True

  @classmethod
  def prepare_all(cls, arms, study):
    for seed in study.method_seeds():
      run_dir = study.method_dir(rundir.STUDY_SWARM, seed)
      if not rundir.is_complete(run_dir):
        study.say(f"arms {', '.join(a.name for a in arms)}: the swarm in {run_dir}")
        stages.get("swarm")(str(run_dir), seed=seed)
      swarm = rundir.read_result(run_dir / rundir.SWARM_JSON)
      for arm in arms:
        law = swarm["laws"][arm.law() or swarm["law"]]
        arm.final[seed] = law["optimum"]
        arm.predicted[seed] = dict(law["predicted"], objective=law["predicted_objective"])
        arm.terms = swarm["objective_terms"]
        arm.charge(run_dir)

  def __init__(self, name, spec, study):
    super().__init__(name, spec, study)
    self.predicted: dict = {}   # {method seed: the law's predicted losses at its optimum}
    self.terms: dict = {}       # the swarm's objective, {target: weight}

  def report(self, seeds):
    """The law's prediction at its optimum (fitted to the swarm members'
    `tune` losses) beside what the arm's main runs measured on `test`
    (means over seeds). The prediction is for a swarm member's run (gin's
    `swarm/` scope): a main model of another size or length is expected
    to differ by its scale, not only by the law's error."""
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
