"""The stage registry: what `run.stage` may name.

Each stage module registers its stages when imported (`doremi_jax.main`
imports them all). `main` runs `get(name)(workdir)`; the pipeline and the
study run other stages the same way; `compile_check` builds, for each
stage kind in `get(name).compiled`, the step program that stage would
train (`context.build_program`) and compiles it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import gin

from doremi_jax.config import ConfigError


# Gin scopes entered inside every single stage's own scope (`inner_scope`):
# a study's rung binds `main/<rung scope>/ModelConfig.*`, which applies to
# the main runs it trains (and to no other stage) without hiding the
# user's own `main/` bindings.
_INNER_SCOPES: list = []


@contextlib.contextmanager
def inner_scope(name: str):
  """Runs every stage started in the block under `<stage>/<name>` (gin)."""
  _INNER_SCOPES.append(name)
  try:
    yield
  finally:
    _INNER_SCOPES.pop()


def bindings(name: str, fn) -> dict:
  """gin's bindings of the configurable `fn` as the stage `name` started
  here sees them (under its scope and the block's inner scopes)."""
  with contextlib.ExitStack() as scopes:
    for scope in [name, *_INNER_SCOPES]:
      scopes.enter_context(gin.config_scope(scope))
    return gin.get_bindings(fn)


@dataclasses.dataclass(frozen=True)
class Stage:
  """`fn(workdir, **kwargs)` runs the stage. A composite stage (the pipeline,
  the study) runs other stages, each under the gin scope of its kind;
  `runs` lists them as (kind, kwargs) or (kind, kwargs, inner scope): the
  arguments the composite passes that gin does not (`compile_check` passes
  these, e.g. placeholder weights that do not change the step program), and
  the `inner_scope` a run trains under (a ladder's rung); or it is a
  function that returns that list from gin's settings. A single stage runs under the gin
  scope of its own name, so `proxy/TrainConfig.num_steps` applies to a
  proxy run alone as to the proxy inside a pipeline."""
  name: str
  fn: Callable[..., Any]
  runs: Any = ()
  shared: bool = False   # its workers share the directory (`doremi_jax.plan`)

  @property
  def compiled(self) -> tuple:
    """(kind, kwargs) of every step program `compile_check` compiles."""
    return (self.runs() if callable(self.runs) else self.runs) or ((self.name, {}),)

  def __call__(self, workdir: str, **kwargs):
    """Runs the stage holding its run directory's lease (`doremi_jax.lease`;
    a composite's lease covers its stages), except in build-only mode,
    which writes nothing, and for a `shared` stage, whose workers claim
    its runs one by one (`doremi_jax.plan`)."""
    # pylint: disable=import-outside-toplevel
    from doremi_jax import context, lease, rundir
    check_tasks()
    if context.current().build_only:
      held = contextlib.nullcontext()
    else:
      rundir.check_writable(workdir)   # before the lease makes the directory
      held = contextlib.nullcontext() if self.shared else lease.hold(workdir, rundir.LOCK)
    with held:
      if self.runs:
        return self.fn(workdir, **kwargs)
      with contextlib.ExitStack() as scopes:
        for name in [self.name, *_INNER_SCOPES]:
          scopes.enter_context(gin.config_scope(name))
        return self.fn(workdir, **kwargs)


def check_tasks() -> None:
  """Every configured downstream task loads (`tasks.registry.check_configured`)."""
  # pylint: disable=import-outside-toplevel
  from doremi_jax.data.registry import get_corpus
  from doremi_jax.tasks import registry as task_registry
  task_registry.check_configured(get_corpus())


STAGES: dict = {}


def register(stage: Stage) -> Stage:
  STAGES[stage.name] = stage
  return stage


def get(name: str) -> Stage:
  if name not in STAGES:
    raise ConfigError(f"run.stage={name!r} is not a stage; choose one of {sorted(STAGES)}.")
  return STAGES[name]
