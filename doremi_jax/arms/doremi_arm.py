"""DoReMi arms: the study runs DoReMi's reference + proxy itself."""

from __future__ import annotations

import contextlib

from doremi_jax import rundir
from doremi_jax.arms import base
from doremi_jax.config import ConfigError
from doremi_jax.stages import registry as stages



@base.register
class DoReMi(base.Arm):
  """'doremi': the weights of DoReMi's last round (`train_study.rounds`;
  iterated DoReMi when > 1), run once in RUN/doremi for all DoReMi arms.
  'doremi:N': the weights after round N of the same iterated run (it runs
  as many rounds as any arm asks for; a round the run skipped because the
  weights had converged gives the converged ones), so one study compares
  DoReMi with iterated DoReMi. 'doremi@RUNG' (or 'doremi:N@RUNG'): the
  same with the reference and proxy at the model size of the ladder's rung
  RUNG (its ModelConfig fields), run once in RUN/doremi_at_RUNG: does the
  proxy's size change DoReMi's weights and their value? The reference and
  proxy runs of the rounds an arm uses are charged to its cost."""
  kind, spelling = "doremi", "doremi, doremi:N, doremi@RUNG"

  @classmethod
  def matches(cls, spec):
    return isinstance(spec, str) and (spec == "doremi" or spec.startswith(("doremi:",
                                                                            "doremi@")))

  @property
  def scale(self):
    """The rung whose size the method's own runs use (None: gin's sizes)."""
    return self.spec.partition("@")[2] or None

  def round(self) -> int:
    """The round whose weights the arm uses."""
    base = self.spec.partition("@")[0]
    if base == "doremi":
      return self.study.settings["rounds"]
    n = base[len("doremi:"):]
    if not (base.startswith("doremi:") and n.isdigit() and int(n) >= 1):
      raise ConfigError(f"train_study.arms: {self.spec!r} names no round; write 'doremi:N' "
                        "with N >= 1 (the weights after round N of iterated DoReMi).")
    return int(n)

  def check(self):
    self.round()
    scales = self.study.settings.get("scales") or {}
    if self.scale is not None and self.scale not in scales:
      raise ConfigError(f"train_study.arms: {self.spec!r} names the rung {self.scale!r}, but "
                        f"train_study.rungs has {sorted(scales) or 'none'}; name one of them "
                        "(its model size is the reference's and proxy's).")

  @classmethod
  def prepare_all(cls, arms, study):
    for scale in dict.fromkeys(a.scale for a in arms):
      mine = [a for a in arms if a.scale == scale]
      rung = study.settings["scales"][scale] if scale is not None else None
      with rung.active() if rung is not None else contextlib.nullcontext():
        cls.prepare_scale(mine, study, scale)

  @classmethod
  def prepare_scale(cls, arms, study, scale):
    most = max(a.round() for a in arms)
    for seed in study.method_seeds():
      run_dir = study.method_dir(rundir.STUDY_DOREMI, seed, scale)
      study.say(f"arms {', '.join(a.name for a in arms)}: DoReMi's reference + proxy ({most} "
                f"round(s)) in {run_dir}")
      state = stages.get("pipeline")(str(run_dir), rounds=most, run_main=False,
                                     run_baseline=False, seed=seed)
      done = state["rounds"]
      if scale is None:
        study.shared.setdefault("reference_dir", {})[seed] = done[0]["reference_dir"]
      for arm in arms:
        used = done[:arm.round()]   # fewer when the run converged before the arm's round
        arm.final[seed] = used[-1]["weights"]
        arm.charge(*[x[k] for x in used for k in ("reference_dir", "proxy_dir")])
