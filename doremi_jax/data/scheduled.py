"""The domain assignment of a mixture that changes during training (an
online mixer, issue 14): rates per block of `every` steps, published by the
trainer as the run goes, read by the loader's prefetch thread.

Step s draws its rows from Categorical(rates of block s // every) with the
same random stream as `loader.MixtureAssignment`, so constant rates give
exactly a static mixture's batches. The loader builds batches ahead of the
trainer; when it reaches a block whose rates are not published yet it waits
for them (`timeout` seconds, then an error naming the block). The trainer
publishes block b's rates from the mixer state it has (e.g. after the last
step of block b - 1) before it asks for step b * every's batch, so the
batches are a pure function of the published history: `history()` goes into
the checkpoint's data state and `ScheduledAssignment(..., history=...)`
restores it, and `BatchLoader.replay_positions` then replays the data
position exactly.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from doremi_jax.config import ConfigError
from doremi_jax.data import weights as weights_lib


def check_rates(rates, num_domains: int, where: str) -> np.ndarray:
  """`rates` normalised to sum to 1; ConfigError naming `where` unless they
  are `num_domains` finite, non-negative numbers with a positive sum
  (`weights.validate_weights`, domains named by index)."""
  r = np.asarray(rates, np.float64)
  if r.shape != (num_domains,):
    raise ConfigError(f"{where}: {num_domains} sampling rates needed, one per domain; got "
                      f"{np.asarray(rates).tolist()}.")
  return weights_lib.validate_weights(r, [f"domain {i}" for i in range(num_domains)], where)


class ScheduledAssignment:
  """Rows of step s ~ Categorical(rates of block s // every)."""

  def __init__(self, initial_rates, seed: int, every: int, timeout: float = 600.0,
               history: Optional[dict] = None):
    if not isinstance(every, int) or every < 1:
      raise ConfigError(f"a mixer's update interval must be an integer >= 1, got {every!r}.")
    self.seed, self.every, self.timeout = seed, every, timeout
    first = check_rates(initial_rates, len(initial_rates), "initial mixture")
    self.num_domains = len(first)
    self._rates = {0: first}
    for block, rates in (history or {}).items():
      self._rates[int(block)] = check_rates(rates, self.num_domains, f"saved block {block}")
    self._cond = threading.Condition()

  def publish(self, block: int, rates) -> None:
    """Sets the rates of steps [block * every, (block + 1) * every). A block
    is published once; publishing it again with other rates is an error
    (the batches already drawn from it would no longer be reproducible)."""
    r = check_rates(rates, self.num_domains, f"mixer rates for block {block}")
    with self._cond:
      old = self._rates.get(block)
      if old is not None and not np.array_equal(old, r):
        raise ValueError(f"block {block}'s rates are already published as {old.tolist()}.")
      self._rates[block] = r
      self._cond.notify_all()

  def rates(self, step: int) -> np.ndarray:
    block = step // self.every
    with self._cond:
      if not self._cond.wait_for(lambda: block in self._rates, timeout=self.timeout):
        raise RuntimeError(f"the loader waited {self.timeout:g}s for the mixer's rates of "
                           f"block {block} (steps from {block * self.every}); the trainer "
                           f"never published them.")
      return self._rates[block]

  def history(self) -> dict:
    """{block: rates} published so far (JSON-ready), for the data state."""
    with self._cond:
      return {str(b): r.tolist() for b, r in sorted(self._rates.items())}

  def __call__(self, step: int, batch_size: int) -> np.ndarray:
    rates = self.rates(step)
    rng = np.random.default_rng([self.seed, 0x6D6978, step])
    return rng.choice(len(rates), size=batch_size, p=rates).astype(np.int32)
