"""The last arm kind: any other spec is read as Step 3 weights."""

from __future__ import annotations

import os
from typing import Any

from doremi_jax.arms import base
from doremi_jax.config import ConfigError
from doremi_jax.data import weights as weights_lib


@base.register
class Weights(base.Arm):
  """Any Step 3 weights spec: 'uniform', 'proportional', a preset, a
  {domain: weight} mapping, a weights JSON file or a Step 2 run directory."""
  kind, static, fallback = "weights", True, True

  @classmethod
  def matches(cls, spec: Any):
    return True   # the fallback: anything else is read as weights (or refused by check)

  def check(self):
    spec = self.spec
    if (isinstance(spec, str) and spec not in weights_lib.BUILTIN and
        spec not in weights_lib.PRESETS and not os.path.exists(spec)):
      presets = ", ".join([*weights_lib.BUILTIN, *weights_lib.PRESETS])
      raise ConfigError(
          f"{self.what()}: {spec!r} is not an arm. An arm is one of the study's methods "
          f"({', '.join(base.spellings())}), a preset ({presets}), a {{domain: weight}} "
          "mapping, or the path of a weights JSON file or a Step 2 run directory.")
    self._rates = weights_lib.resolve_weights(spec, self.study.corpus, self.what())

  def weights(self, seed=0):
    return weights_lib.as_dict(self.study.corpus.domains, self._rates)

  def rates(self, seeds):
    return self._rates
