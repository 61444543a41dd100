"""How a stage is run, set by its caller rather than by gin.

Two settings that are not a user's experiment settings, so no gin
configurable takes them:

* `devices`: the devices a stage builds its mesh on (default: every device
  JAX sees). Tests and notebooks pick a subset; a user sizes the mesh with
  `MeshConfig` instead.
* `build_only`: the stage checks its settings and builds its step program,
  then stops before it reads data or touches its run directory (the runner
  raises `ProgramBuilt` with the program). `compile_check` compiles the
  program a stage would train this way, and the study checks a swarm's
  settings before it trains anything.

    with context.using(devices=jax.devices()[:1]):
      registry.get("reference")(workdir)
    program = context.build_program(lambda: registry.get("main")(workdir))
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Context:
  devices: Optional[Sequence[Any]] = None
  build_only: bool = False


_CURRENT = contextvars.ContextVar("doremi_jax_context", default=Context())


def current() -> Context:
  return _CURRENT.get()


@contextlib.contextmanager
def using(**changes):
  """Runs the block with the given `Context` fields changed."""
  token = _CURRENT.set(dataclasses.replace(current(), **changes))
  try:
    yield current()
  finally:
    _CURRENT.reset(token)


class ProgramBuilt(Exception):
  """Raised by the runner in build-only mode; carries the step program the
  stage would have trained."""

  def __init__(self, program):
    super().__init__(program.name)
    self.program = program


def build_program(run: Callable[[], Any]):
  """The step program that `run()` (a stage call) would train, built
  without training, reading data or writing anything."""
  with using(build_only=True):
    try:
      run()
    except ProgramBuilt as built:
      return built.program
  raise RuntimeError("the stage returned without building a step program")
