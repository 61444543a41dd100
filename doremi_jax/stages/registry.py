"""The stage registry: what `run.stage` may name.

Each stage module registers its stages when imported (`doremi_jax.main`
imports them all). `main` runs `get(name)(workdir)`; the pipeline runs each
step's stage the same way; and
`compile_check` compiles, for each kind in `get(name).compiles`, the step
program that `get(kind).build_program(corpus, cfg, devices)` returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import gin

from doremi_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Stage:
  """`fn(workdir, devices=None)` runs the stage. `build_program(corpus, cfg,
  devices)` returns its step program (for ahead-of-time compilation) where
  it trains one. A composite stage (the pipeline) runs other stages, each
  under the gin scope of its name; `runs` names them. A single stage runs
  under the gin scope of its own name, so `proxy/TrainConfig.num_steps`
  applies to a proxy run alone as to the proxy inside a pipeline."""
  name: str
  fn: Callable[..., Any]
  build_program: Optional[Callable[..., Any]] = None
  runs: tuple = ()

  @property
  def compiled_kinds(self) -> tuple:
    """The stages whose step programs `compile_check` compiles for this one."""
    return self.runs or (self.name,)

  def __call__(self, workdir: str, **kwargs):
    if self.runs:
      return self.fn(workdir, **kwargs)
    with gin.config_scope(self.name):
      return self.fn(workdir, **kwargs)


STAGES: dict = {}


def register(stage: Stage) -> Stage:
  STAGES[stage.name] = stage
  return stage


def get(name: str) -> Stage:
  if name not in STAGES:
    raise ConfigError(f"run.stage={name!r} is not a stage; choose one of {sorted(STAGES)}.")
  return STAGES[name]
