"""Online mixer arms: the main run's mixture changes during training."""

from __future__ import annotations

import numpy as np

from doremi_jax import mixers
from doremi_jax import rundir
from doremi_jax.arms import base
from doremi_jax.stages import registry as stages


@base.register
class Mixer(base.Arm):
  """Every registered online mixer by its name (`mixers.names()`: 'odm',
  'ado', 'doremi_online', 'aioli', ...), from its method's starting mixture
  (`mixers.prior`), with gin's settings for it; the arm's weights are the
  rates averaged over the run's steps (mean over seeds). A mixer that
  compares with a reference ('doremi_online') uses DoReMi's round-1
  reference when the study has DoReMi arms, else trains one in
  RUN/reference (charged to it)."""
  kind = "mixer"

  @staticmethod
  def spelling():
    return ", ".join(mixers.names())

  @classmethod
  def matches(cls, spec):
    return isinstance(spec, str) and spec in mixers.names()

  @classmethod
  def prepare_all(cls, arms, study):
    needs = [a for a in arms if mixers.needs_reference(a.spec)]
    for seed in study.method_seeds() if needs else ():
      reference_dir = study.shared.get("reference_dir", {}).get(seed)
      own = reference_dir is None
      if own:
        reference_dir = str(study.method_dir(rundir.STUDY_REFERENCE, seed))
        if not rundir.is_complete(reference_dir):
          study.say(f"arms {', '.join(a.name for a in needs)}: their reference in "
                    f"{reference_dir}")
          stages.get("reference")(reference_dir, seed=seed)
      for arm in needs:
        arm.reference_dirs[seed] = reference_dir
        if own:
          arm.charge(reference_dir)

  def __init__(self, name, spec, study):
    super().__init__(name, spec, study)
    self.reference_dirs: dict = {}   # {method seed: the reference run}

  def train(self, run_dir, seed):
    stages.get("main")(run_dir, weights=mixers.prior(self.spec), seed=seed, mixer=self.spec,
                       reference_dir=self.reference_dirs.get(self.study.method_seed(seed)))

  def rates(self, seeds):
    avg = [rundir.read_result(self.study.arm_dir(self.name, s) /
                              rundir.AVERAGE_MIXTURE_WEIGHTS) for s in range(seeds)]
    return np.mean([self.study.domain_rates(a) for a in avg], axis=0)
