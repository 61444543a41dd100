"""Host-local, exactly resumable batch loading.

Each global batch is built from a *domain assignment*: a vector of length
`global_batch_size` saying which domain each row comes from. The assignment is
a pure function of (seed, step), computed identically on every host, so:

* the reference and main stages sample domains with the mixture's rates
  (`MixtureAssignment`); a mixture's weights are shares of *tokens*, turned
  into row rates by every domain's measured tokens per packed row
  (`weights.row_rates`), since rows of long documents carry more padding; the
  proxy stage uses stratified batches (`StratifiedAssignment`: equal rows,
  not tokens, per domain in every batch when k divides the batch, else over
  every k consecutive steps); a mixture that changes during training uses
  rates published block by block (`scheduled.ScheduledAssignment`), still a
  pure function of the step once published;
* each domain is a stream whose position p is a row of the domain's packed
  data (`shuffling.shuffled_rows`: epoch p // n, a keyed permutation of the
  n rows). Row i of the global batch takes the next position of its
  domain's stream, in row order; each host computes every row's position
  but **reads only the rows of its own slice** of the global batch, by
  index. So the global batch is the same for any number of processes, a
  host's reads shrink as hosts are added, and the data position saved with
  each checkpoint (the positions consumed per domain) is exact;
* batches are `{'targets', 'segment_ids', 'domain_ids'}`: packed rows carry
  each document's segment id (0 is padding; see `packing`).

Every corpus is read this way: text of every source kind is tokenized and
packed once, offline (`python -m doremi_jax.prepare`), and the synthetic
corpus is packed in memory. (seqio's own `Mixture.get_dataset` samples
with tf.data, whose state cannot be checkpointed cheaply across hosts; the
mixture's rates, the weights the stage resolved, are applied here instead.)
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Optional

import numpy as np

from doremi_jax.config import ConfigError
from doremi_jax.data import packing
from doremi_jax.data import shuffling
from doremi_jax.data import weights as weights_lib


def tokens_per_row(corpus, seq_len: int, split: str = packing.TRAIN) -> np.ndarray:
  """[K] float64: every domain's real (non-padding) tokens per packed row of
  `split` at `seq_len`, measured (packed meta.json; the synthetic rows)."""
  return np.array([float(s.tokens_per_row) for s in open_sources(corpus, split, seq_len)])


class MixtureAssignment:
  """Row i of step s's batch comes from domain ~ Categorical(row rates): the
  rates that make the token shares `weights` (`weights.row_rates`)."""

  def __init__(self, weights, seed: int, tokens_per_row=None):
    self.rates = weights_lib.row_rates(np.asarray(weights, np.float64) / np.sum(weights),
                                       tokens_per_row)
    self.seed = seed

  @property
  def num_domains(self) -> int:
    return len(self.rates)

  def __call__(self, step: int, batch_size: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, 0x6D6978, step])
    return rng.choice(len(self.rates), size=batch_size, p=self.rates).astype(np.int32)


class StratifiedAssignment:
  """What it equalises is rows (packed sequences) per domain, not tokens (a
  row's padding differs by domain). Every global batch holds batch_size //
  k rows of each domain; the remainder r = batch_size % k goes to domains
  (step * r + j) % k, j < r, so it rotates over steps. When k divides the
  batch every batch is exactly equal; otherwise a batch is equal to one row
  (batch 64, k 5: 13/13/13/13/12) and every k consecutive steps, from any
  step, give every domain exactly batch_size rows. Rows are shuffled so
  every host sees a mix of domains."""

  def __init__(self, num_domains: int, seed: int):
    self.num_domains = num_domains
    self.seed = seed

  def counts(self, step: int, batch_size: int) -> np.ndarray:
    k = self.num_domains
    if batch_size < k:
      raise ConfigError(
          f"the global batch ({batch_size} sequences) is smaller than the number of "
          f"domains ({k}): a stratified Group-DRO batch needs at least one sequence "
          f"per domain. Set TrainConfig.global_batch_size >= {k}.")
    q, r = divmod(batch_size, k)
    counts = np.full(k, q, np.int64)
    counts[(step * r + np.arange(r)) % k] += 1
    return counts

  def __call__(self, step: int, batch_size: int) -> np.ndarray:
    ids = np.repeat(np.arange(self.num_domains), self.counts(step, batch_size))
    rng = np.random.default_rng([self.seed, 0x737472, step])
    return rng.permutation(ids).astype(np.int32)


def open_sources(corpus, split: str, seq_len: int):
  """Every domain's packed rows (`packing` row sources) for `split`."""
  if corpus.packed is None:
    raise ValueError(f"corpus {corpus.name!r} has no packed sources")
  sources = [open_rows(split, seq_len) for open_rows in corpus.packed]
  for name, src in zip(corpus.domains, sources):
    if not len(src):
      raise ConfigError(f"domain {name!r} has no {split!r} rows; check that the domain has "
                        "data.")
  return sources


class BatchLoader:
  """Yields host-local batches `{'targets': [b, L] int32, 'segment_ids':
  [b, L] int32, 'domain_ids': [b] int32}` for consecutive steps, with the
  data position after each batch: `positions` [1, K] int64, the stream
  positions consumed per domain (global: the same on every host)."""

  def __init__(self, corpus, assignment, global_batch_size: int, seq_len: int, seed: int,
               start_step: int = 0, positions: Optional[np.ndarray] = None,
               process_index: int = 0, process_count: int = 1, split: str = "train",
               prefetch: int = 2):
    if global_batch_size % process_count:
      raise ConfigError(
          f"the global batch ({global_batch_size}) is not divisible by the number of "
          f"processes ({process_count}).")
    self.corpus = corpus
    self.assignment = assignment
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seq_len = seq_len
    self.seed = seed
    self.pid, self.nproc = process_index, process_count
    self.step = start_step
    self.sources = open_sources(corpus, split, seq_len)
    self.sizes = np.array([len(s) for s in self.sources])
    if positions is None or np.shape(positions) != (1, corpus.num_domains):
      # No saved position (fresh run) or one of another shape (saved per
      # host by an older version): replay the assignments, which are a pure
      # function of the step.
      positions = self.replay_positions(start_step)
    self.positions = np.array(positions, np.int64)
    self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True)
    self._thread.start()

  @staticmethod
  def needs_replay(data_state: Optional[dict], corpus) -> bool:
    """Whether a loader resumed from `data_state` replays the assignments
    to find its data position (not saved in the [1, K] global form)."""
    return (data_state is not None and
            np.shape(data_state["positions"]) != (1, corpus.num_domains))

  @property
  def bytes_read(self) -> int:
    """Bytes this host has read from packed sources."""
    return sum(s.bytes_read for s in self.sources)

  def replay_positions(self, step: int) -> np.ndarray:
    pos = np.zeros((1, self.corpus.num_domains), np.int64)
    for s in range(step):
      pos += self._counts(self.assignment(s, self.global_batch_size))
    return pos

  def _counts(self, assignment: np.ndarray) -> np.ndarray:
    return np.bincount(assignment, minlength=self.corpus.num_domains)[None]

  def _make(self, step: int):
    assignment = self.assignment(step, self.global_batch_size)
    lo = self.pid * self.local_batch_size
    hi = lo + self.local_batch_size
    local = assignment[lo:hi]
    targets = np.zeros((self.local_batch_size, self.seq_len), np.int32)
    segments = np.zeros((self.local_batch_size, self.seq_len), np.int32)
    # Row r of the global batch takes its domain's next stream position
    # (in row order); this host reads only the rows of its slice.
    k = self.corpus.num_domains
    onehot = assignment[:, None] == np.arange(k)[None]
    rank = np.cumsum(onehot, axis=0)[np.arange(len(assignment)), assignment] - 1
    pos = self.positions[0, local] + rank[lo:hi]
    rows = shuffling.shuffled_rows(pos, self.sizes[local], self.seed, local)
    for i in np.unique(local):
      mine = np.flatnonzero(local == i)
      targets[mine], segments[mine] = self.sources[i].read(rows[mine])
    self.positions = self.positions + self._counts(assignment)
    state = {"step": step + 1, "positions": self.positions.tolist(),
             "process_count": self.nproc}
    return {"targets": targets, "segment_ids": segments,
            "domain_ids": local.astype(np.int32)}, state

  def _produce(self):
    step = self.step
    try:
      while not self._stop.is_set():
        item = self._make(step)
        step += 1
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # surface errors in the consumer
      self._queue.put(e)

  def next(self):
    """Returns (host-local batch, data state after it)."""
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self, wait: float = 5.0):
    """Stops the reader thread and waits (up to `wait` seconds) for it, so a
    read in flight finishes before the process may exit. A producer waiting
    for rates that will never be published is woken (the assignment's
    `close`, where it has one) and ends with an error nobody reads."""
    self._stop.set()
    if hasattr(self.assignment, "close"):
      self.assignment.close()
    deadline = time.monotonic() + wait
    while self._thread.is_alive() and time.monotonic() < deadline:
      try:   # a producer blocked on a full queue needs room to see the stop
        self._queue.get_nowait()
      except queue.Empty:
        pass
      self._thread.join(timeout=0.05)


def eval_batches(corpus, seq_len: int, examples_per_domain: int, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 split: str = packing.TEST):
  """Host-local evaluation batches over the first `examples_per_domain`
  rows of `split` of every domain (fixed order, no shuffling), domain after
  domain. Rows past the end are all padding (segment 0), so every host
  yields the same number of equally shaped batches. The global batches are
  the same for any process count; each host reads only its slice of each."""
  sources = open_sources(corpus, split, seq_len)
  local_bs = batch_size // process_count
  counts = [min(examples_per_domain, len(s)) for s in sources]
  dom = np.repeat(np.arange(len(sources)), counts).astype(np.int32)
  row = np.concatenate([np.arange(c) for c in counts])
  n_batches = -(-len(dom) // batch_size)
  pad = n_batches * batch_size - len(dom)
  dom = np.concatenate([dom, np.zeros(pad, np.int32)])
  row = np.concatenate([row, np.full(pad, -1)])
  lo = process_index * local_bs
  at = np.arange(len(dom)) % batch_size
  mine = (at >= lo) & (at < lo + local_bs)
  dom, row = dom[mine], row[mine]
  targets = np.zeros((len(dom), seq_len), np.int32)
  segments = np.zeros((len(dom), seq_len), np.int32)
  for i, src in enumerate(sources):
    sel = np.flatnonzero((dom == i) & (row >= 0))
    if len(sel):
      targets[sel], segments[sel] = src.read(row[sel])
  return [{"targets": targets[j:j + local_bs], "segment_ids": segments[j:j + local_bs],
           "domain_ids": dom[j:j + local_bs]} for j in range(0, len(dom), local_bs)]
