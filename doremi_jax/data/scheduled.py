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

import json
import logging
import threading
import time
import zlib
from typing import Optional

import numpy as np

from doremi_jax import files
from doremi_jax.config import ConfigError
from doremi_jax.data import weights as weights_lib


def check_rates(rates, num_domains: int, where: str) -> np.ndarray:
  """`rates` normalised to sum to 1; ConfigError naming `where` unless they
  are `num_domains` finite, non-negative numbers with a positive sum
  (`weights.validate_weights`, domains named by index). Rates that already
  sum to 1 (to 1e-12) are returned as they are: normalising again could
  move their last bits, and a resumed run must draw from the same bits
  as the run it continues."""
  r = np.asarray(rates, np.float64)
  if r.shape != (num_domains,):
    raise ConfigError(f"{where}: {num_domains} sampling rates needed, one per domain; got "
                      f"{np.asarray(rates).tolist()}.")
  normalised = weights_lib.validate_weights(r, [f"domain {i}" for i in range(num_domains)],
                                            where)
  return r if abs(r.sum() - 1.0) <= 1e-12 else normalised


class ScheduledAssignment:
  """Rows of step s ~ Categorical(row rates of block s // every): the
  published rates are token shares, drawn as `weights.row_rates` of them
  with the domains' measured `tokens_per_row` (None: full rows)."""

  def __init__(self, initial_rates, seed: int, every: int, timeout: float = 600.0,
               history: Optional[dict] = None, first_block: bool = True,
               tokens_per_row=None):
    if not isinstance(every, int) or every < 1:
      raise ConfigError(f"a mixer's update interval must be an integer >= 1, got {every!r}.")
    self.seed, self.every, self.timeout = seed, every, timeout
    self.tokens_per_row = tokens_per_row
    first = check_rates(initial_rates, len(initial_rates), "initial mixture")
    self.num_domains = len(first)
    self.initial_rates = first
    # first_block False: block 0 is published like the others (a mixer
    # whose first rates are not the initial mixture, e.g. Aioli's bursts).
    self._rates = {0: first} if first_block else {}
    for block, rates in (history or {}).items():
      self._rates[int(block)] = check_rates(rates, self.num_domains, f"saved block {block}")
    self._cond = threading.Condition()
    self._closed = False

  def close(self) -> None:
    """Wakes a loader thread waiting for rates (it stops with an error the
    closed loader never reads)."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()

  def known(self, block: int) -> bool:
    with self._cond:
      return block in self._rates

  def publish(self, block: int, rates) -> np.ndarray:
    """Sets the rates of steps [block * every, (block + 1) * every) and
    returns them as stored (normalised). A block is published once;
    publishing it again with other rates is an error (the batches already
    drawn from it would no longer be reproducible)."""
    r = check_rates(rates, self.num_domains, f"mixer rates for block {block}")
    with self._cond:
      old = self._rates.get(block)
      if old is not None and not np.array_equal(old, r):
        raise ValueError(f"block {block}'s rates are already published as {old.tolist()}.")
      self._rates[block] = r
      self._cond.notify_all()
    return r

  def rates(self, step: int) -> np.ndarray:
    block = step // self.every
    with self._cond:
      if not self._cond.wait_for(lambda: block in self._rates or self._closed,
                                 timeout=self.timeout) or block not in self._rates:
        if self._closed:
          raise RuntimeError("the run ended before the mixer's rates of block "
                             f"{block} were published")
        raise RuntimeError(f"the loader waited {self.timeout:g}s for the mixer's rates of "
                           f"block {block} (steps from {block * self.every}); the trainer "
                           f"never published them.")
      return self._rates[block]

  def history(self) -> dict:
    """{block: rates} published so far (JSON-ready), for the data state."""
    with self._cond:
      return {str(b): r.tolist() for b, r in sorted(self._rates.items())}

  def __call__(self, step: int, batch_size: int) -> np.ndarray:
    rates = weights_lib.row_rates(self.rates(step), self.tokens_per_row)
    rng = np.random.default_rng([self.seed, 0x6D6978, step])
    return rng.choice(len(rates), size=batch_size, p=rates).astype(np.int32)


def _python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def read_log(path) -> list:
  """The lines of a mixture_weights.jsonl, one per block (a block logged
  twice, by a run and by its resumption, keeps its last line; the two are
  identical), in block order. [] when there is no file. A line cut short
  by a killed run is skipped (a block it held that a resumed run needs is
  reported by `RatesPublisher.check_replayable`)."""
  if not files.exists(path):
    return []
  by_block = {}
  lines = [line for line in files.read_text(path).splitlines() if line.strip()]
  for i, line in enumerate(lines):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      logging.warning("%s line %d is not JSON (cut short by a killed run?); skipped",
                      path, i + 1)
      continue
    by_block[int(row["block"])] = row
  return [by_block[b] for b in sorted(by_block)]


class RatesPublisher:
  """Feeds a `ScheduledAssignment` from the trainer's step metrics (or,
  with `rates_key` None, from the stage's own `publish` calls).

  The rates of block b are the metrics' `rates_key` of step index
  `b * every - 1 - delay` (`mixers.base.DELAY`), or the assignment's
  initial rates when that step is before the first. The trainer calls
  `on_step(done, host_metrics)` for every step in order; every published
  block within the run is logged to `log_path` (process 0): the DataFlex
  fields (step, timestamp, domain_names, domain_weights, perdomain_scores)
  plus block, source_step (steps done when the rates were computed),
  method and the method's own state (`mixer/<name>` metrics)."""

  def __init__(self, assignment: ScheduledAssignment, rates_key: Optional[str], domains,
               num_steps: int, delay: int, log_path, method: str, writer: bool,
               score_key: str = "domain_loss"):
    self.assignment, self.rates_key, self.domains = assignment, rates_key, list(domains)
    self.num_steps, self.delay, self.every = num_steps, delay, assignment.every
    self.log_path, self.method, self.writer, self.score_key = log_path, method, writer, score_key
    self._crc = 0
    self._sum = np.zeros(assignment.num_domains, np.float64)  # rates summed over steps
    self._counted = 0                                         # ... [0, _counted)

  def restore(self, start_step: int, data_state: Optional[dict]) -> None:
    """Publishes the blocks the checkpoint's data state holds, then every
    block the run's log holds up to the restored step (the history a replay
    of the data position needs, e.g. after a change of process count).
    Process 0 first cuts the log back to the rows published by step
    `start_step` (their `source_step`; none for a fresh start): a killed
    run's rows past its checkpoint go, so the resumed log equals an
    uninterrupted run's."""
    if self.writer:
      files.keep_jsonl_through(self.log_path, start_step if start_step else -1, "source_step")
    saved = (data_state or {}).get("mixture", {})
    for block, rates in saved.get("blocks", {}).items():
      self.assignment.publish(int(block), rates)
    if saved:
      self._sum = np.asarray(saved["rates_sum"], np.float64)
      self._counted = int(saved["counted"])
    for row in read_log(self.log_path):
      if int(row["block"]) * self.every < start_step and not self.assignment.known(
          int(row["block"])):
        self.assignment.publish(int(row["block"]), row["domain_weights"])

  def check_replayable(self, start_step: int) -> None:
    """ConfigError unless every block before `start_step` is known."""
    missing = [b for b in range(-(-start_step // self.every)) if not self.assignment.known(b)]
    if missing:
      raise ConfigError(
          f"resuming at step {start_step} needs the mixture's rates of blocks {missing[:5]}"
          f"{'...' if len(missing) > 5 else ''} to replay the data position, and neither "
          f"the checkpoint nor {self.log_path} holds them. Resume with the process count "
          "of the original run, or restore that log from the original run.")

  def start(self, start_step: int) -> None:
    """Publishes the initial rates for the blocks whose source step is
    before the first (not for host-published rates, `rates_key` None)."""
    if self.rates_key is None:
      return
    b = start_step // self.every
    while b * self.every - 1 - self.delay < 0 and b * self.every < self.num_steps + self.every:
      if not self.assignment.known(b) or b == start_step == 0:  # known, not yet logged
        self._publish(b, self.assignment.initial_rates, None)
      b += 1

  def on_step(self, done: int, host: dict) -> None:
    """Step index done - 1's metrics are on the host: publish the block
    they are the source of, if any."""
    if self.rates_key is None:
      return
    k = done + self.delay
    if k % self.every == 0:
      self._publish(k // self.every, host[self.rates_key], host)

  def publish(self, block: int, rates, host: Optional[dict], source_step: int) -> None:
    """Host-published rates (`rates_key` None): block `block`'s rates,
    known after `source_step` steps; `host` as a step's metrics for the log."""
    self._publish(block, rates, host, source_step)

  def _publish(self, block: int, rates, host: Optional[dict],
               source_step: Optional[int] = None) -> None:
    rates = self.assignment.publish(block, rates)   # as stored: normalised
    self._crc = zlib.crc32(np.asarray([block], np.int64).tobytes() + rates.tobytes(), self._crc)
    if not self.writer or block * self.every >= self.num_steps:
      return
    row = {"step": block * self.every, "timestamp": time.time(),
           "domain_names": self.domains, "domain_weights": rates.tolist(),
           "perdomain_scores": None if host is None else _python(host[self.score_key]),
           "block": block, "source_step": (max(block * self.every - self.delay, 0)
                                           if source_step is None else source_step),
           "method": self.method,
           "state": {} if host is None else {k.split("/", 1)[1]: _python(v)
                                             for k, v in host.items()
                                             if k.startswith("mixer/")}}
    files.append_jsonl(self.log_path, row)

  def fingerprint(self) -> int:
    """A CRC of every block this process published, in order."""
    return self._crc

  def average(self, done: int) -> np.ndarray:
    """The rates used, averaged over steps [0, done) (summed step by step,
    so a resumed run ends with the same bits)."""
    for step in range(self._counted, done):
      self._sum += self.assignment.rates(step)
    self._counted = max(self._counted, done)
    return self._sum / done

  def data_state(self, next_step: int) -> dict:
    """For the checkpoint's data state: the published blocks from
    `next_step`'s on (what a resumed run needs besides the log) and the
    running sum of the rates used."""
    self.average(next_step)
    first = next_step // self.every
    return {"blocks": {b: r for b, r in self.assignment.history().items() if int(b) >= first},
            "rates_sum": self._sum.tolist(), "counted": self._counted}
