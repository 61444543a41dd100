"""The mixer interface: a mixture that changes during the main run.

A mixer is a small object with pure functions over a pytree state:

  init(prior_K) -> state              the state before the first step
  update(state, signals, step) -> state
                                      inside the jitted step, after the
                                      step's losses are known; `step` is the
                                      index of the step that produced them
  rates(state) -> [K]                 the sampling rates it proposes now
  report(state) -> {name: array}      its own state worth logging

The state is checkpointed with the model (the step program's state is
`{"train": TrainState, "mixer": state}`). The step hands every mixer the
same `Signals`, computed from the batch it trains on anyway.

Rates reach the loader with a fixed delay: the rates of block b (steps
[b N, (b + 1) N), N = `every`) are `rates(state after step b N - 1 -
DELAY)`, or the prior when that step is before the first. The trainer
reads each step's metrics one step late, so with DELAY = 2 the rates of a
block are on the host one step before the loader needs them and the
prefetch thread never waits on the device. Every host computes the same
rates from the same replicated state, so every host builds the same batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from doremi_jax.config import ConfigError

DELAY = 2


class Signals(NamedTuple):
  """Per-domain signals of one training step (all [K], fp32)."""
  loss_K: jax.Array       # mean training token loss before the update (0 if absent)
  tokens_K: jax.Array     # real tokens of each domain in the batch
  rows_K: jax.Array       # sequences of each domain in the batch
  excess_K: Optional[jax.Array] = None  # DoReMi's clipped excess over a reference

  @property
  def observed_K(self):
    return self.tokens_K > 0


def where_tree(pred, new, old):
  """`new` where `pred` (a traced bool) else `old`, leaf by leaf."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


class Mixer:
  """Base class: a method sets `name`, `every`, `needs_reference` and the
  four functions. `hyper` holds its settings (logged in run_info)."""
  name: str = "static"
  every: int = 1
  needs_reference: bool = False
  host_driven: bool = False   # rates from host-side events (Aioli), not the step's metrics

  def __init__(self, num_domains: int, hyper: dict):
    self.num_domains = num_domains
    self.hyper = dict(hyper)

  def init(self, prior_K) -> Any:
    raise NotImplementedError

  def update(self, state, signals: Signals, step) -> Any:
    raise NotImplementedError

  def rates(self, state) -> jax.Array:
    raise NotImplementedError

  def report(self, state) -> dict:
    return {}

  def describe(self) -> dict:
    return {"method": self.name, "every": self.every, "delay": DELAY, **self.hyper}


@dataclasses.dataclass(frozen=True)
class Registered:
  """A mixing method as users name it: its class and its starting mixture
  (a weights spec, e.g. 'proportional')."""
  name: str
  cls: type
  prior: str


REGISTRY: dict = {}


def register(prior: str):
  """Class decorator: registers a `Mixer` subclass under its `name`, with
  the starting mixture `prior` its authors start from."""

  def add(cls):
    if cls.name in REGISTRY and REGISTRY[cls.name].cls is not cls:
      raise ValueError(f"two mixers are named {cls.name!r}")
    REGISTRY[cls.name] = Registered(cls.name, cls, prior)
    return cls

  return add


def names() -> tuple:
  return tuple(REGISTRY)


def get(name: str) -> Registered:
  if name not in REGISTRY:
    raise ConfigError(f"unknown mixing method {name!r}; train_main_model.mixer takes one of "
                      f"{', '.join(REGISTRY)}, or None for a static mixture.")
  return REGISTRY[name]
