"""Host-local, exactly resumable batch loading.

Each global batch is built from a *domain assignment*: a vector of length
`global_batch_size` saying which domain each row comes from. The assignment is
a pure function of (seed, step), computed identically on every host, so:

* the reference and main stages sample domains with the mixture's rates
  (`MixtureAssignment`), and the proxy stage uses exact stratified batches
  (`StratifiedAssignment`); a mixture that changes during training uses
  rates published block by block (`scheduled.ScheduledAssignment`), still a
  pure function of the step once published;
* each host keeps only its contiguous slice of rows. With
  `LoaderConfig.host_reads = 'all'` (the default) every host reads every
  domain's whole stream and keeps the examples of its rows, so the global
  batch does not depend on the number of processes: a 2-process run sees
  exactly the batches of a 1-process run. With `'shard'` each host reads
  only its own shard of each domain (seqio `ShardInfo`), which scales the
  input pipeline with the hosts but ties the batches to the process count;
* the data position saved with each checkpoint is the number of examples
  consumed from each domain (per host with 'shard'), so a resumed run sees
  exactly the batches an uninterrupted run would.

(seqio's own `Mixture.get_dataset` samples with tf.data, whose state cannot be
checkpointed cheaply across hosts; the mixture's rates are read from the
registered seqio Mixture and applied here instead.)
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Optional

import gin
import numpy as np

from doremi_jax.config import ConfigError

HOST_READS = ("all", "shard")


@gin.configurable
def loader_host_reads(host_reads: str = "all") -> str:
  """'all': every host reads all data and keeps its rows (batches independent
  of the process count); 'shard': every host reads its own shard."""
  if host_reads not in HOST_READS:
    raise ConfigError(f"loader_host_reads.host_reads={host_reads!r}; choose 'all' or 'shard'.")
  return host_reads


class _QuietUncachedWarning(logging.Filter):
  """seqio warns that uncached function sources reshuffle badly on restarts;
  our streams resume by exact position, so the warning does not apply."""

  def filter(self, record):
    return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUncachedWarning())


class MixtureAssignment:
  """Row i of step s's batch comes from domain ~ Categorical(rates)."""

  def __init__(self, rates, seed: int):
    self.rates = np.asarray(rates, np.float64) / np.sum(rates)
    self.seed = seed

  @property
  def num_domains(self) -> int:
    return len(self.rates)

  def __call__(self, step: int, batch_size: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, 0x6D6978, step])
    return rng.choice(len(self.rates), size=batch_size, p=self.rates).astype(np.int32)


class StratifiedAssignment:
  """Every global batch holds batch_size // k rows of each domain; the
  remainder r goes to domains (step * r + j) % k, j < r, so it rotates over
  steps. Rows are shuffled so every host sees a mix of domains."""

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


def _domain_dataset(task_name, split, seq_len, seed, shard_info, shuffle, repeat):
  import seqio
  import tensorflow as tf
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(
      {"targets": seq_len}, split=split, shuffle=shuffle, seed=seed if shuffle else None,
      shard_info=shard_info, num_epochs=None if repeat else 1)

  def pad(ex):
    t = ex["targets"][:seq_len]
    return tf.pad(t, [[0, seq_len - tf.shape(t)[0]]])
  ds = ds.map(pad)
  # No autotuning thread: the per-example work is trivial, and an autotuned
  # iterator can take seconds to tear down, which stalls the next stage of a
  # pipeline run.
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


class DomainStream:
  """Deterministic, resumable stream of one domain's sequences on this host."""

  def __init__(self, task_name: str, split: str, seq_len: int, seed: int,
               shard_info, position: int = 0, chunk: int = 256):
    ds = _domain_dataset(task_name, split, seq_len, seed, shard_info, shuffle=True, repeat=True)
    self._it = ds.skip(position).batch(chunk).prefetch(2).as_numpy_iterator()
    self._buf = np.zeros((0, seq_len), np.int32)
    self.task_name = task_name

  def take(self, n: int) -> np.ndarray:
    while len(self._buf) < n:
      try:
        self._buf = np.concatenate([self._buf, next(self._it)])
      except StopIteration as e:  # only an empty split ends a repeated stream
        raise ConfigError(f"seqio task {self.task_name!r} yields no examples; "
                          "check that the domain has data.") from e
    out, self._buf = self._buf[:n], self._buf[n:]
    return out


class BatchLoader:
  """Yields host-local batches `{'targets': [b, L] int32, 'domain_ids': [b] int32}`
  for consecutive steps, with the data position after each batch."""

  def __init__(self, corpus, assignment, global_batch_size: int, seq_len: int, seed: int,
               start_step: int = 0, positions: Optional[np.ndarray] = None,
               process_index: int = 0, process_count: int = 1, split: str = "train",
               prefetch: int = 2, host_reads: str = "all"):
    import seqio
    if host_reads not in HOST_READS:
      raise ConfigError(f"host_reads={host_reads!r}; choose one of {HOST_READS}.")
    self.host_reads = host_reads
    if global_batch_size % process_count:
      raise ConfigError(
          f"the global batch ({global_batch_size}) is not divisible by the number of "
          f"processes ({process_count}).")
    self.corpus = corpus
    self.assignment = assignment
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seq_len = seq_len
    self.pid, self.nproc = process_index, process_count
    self.step = start_step
    k = corpus.num_domains
    readers = process_count if host_reads == "shard" else 1
    if positions is None or np.shape(positions) != (readers, k):
      # No saved position (fresh run) or saved with another host count:
      # replay the assignments, which are a pure function of the step.
      positions = self.replay_positions(start_step)
    self.positions = np.array(positions, np.int64)
    shard = seqio.ShardInfo(index=process_index if readers > 1 else 0, num_shards=readers)
    row = process_index if readers > 1 else 0
    self.streams = [
        DomainStream(t, split, seq_len, seed=seed * 1000 + i, shard_info=shard,
                     position=int(self.positions[row, i]))
        for i, t in enumerate(corpus.task_names)]
    self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True)
    self._thread.start()

  @staticmethod
  def needs_replay(data_state: Optional[dict], num_domains: int, process_count: int,
                   host_reads: str) -> bool:
    """Whether a loader resumed from `data_state` replays the assignments
    to find its data position (none saved, or saved for other readers)."""
    readers = process_count if host_reads == "shard" else 1
    return (data_state is not None and
            np.shape(data_state["positions"]) != (readers, num_domains))

  def replay_positions(self, step: int) -> np.ndarray:
    readers = self.nproc if self.host_reads == "shard" else 1
    pos = np.zeros((readers, self.corpus.num_domains), np.int64)
    for s in range(step):
      pos += self._host_counts(self.assignment(s, self.global_batch_size))
    return pos

  def _host_counts(self, assignment: np.ndarray) -> np.ndarray:
    k = self.corpus.num_domains
    if self.host_reads == "all":
      return np.bincount(assignment, minlength=k)[None]
    rows = assignment.reshape(self.nproc, self.local_batch_size)
    return np.stack([np.bincount(r, minlength=k) for r in rows])

  def _make(self, step: int):
    assignment = self.assignment(step, self.global_batch_size)
    local = assignment[self.pid * self.local_batch_size:(self.pid + 1) * self.local_batch_size]
    targets = np.zeros((self.local_batch_size, self.seq_len), np.int32)
    lo = self.pid * self.local_batch_size
    for i, stream in enumerate(self.streams):
      if self.host_reads == "all":
        # The domain's examples for the whole global batch, in row order;
        # keep the ones that land in this host's rows.
        rows = np.flatnonzero(assignment == i)
        if len(rows):
          examples = stream.take(len(rows))
          mine = (rows >= lo) & (rows < lo + self.local_batch_size)
          targets[rows[mine] - lo] = examples[mine]
        continue
      rows = np.flatnonzero(local == i)
      if len(rows):
        targets[rows] = stream.take(len(rows))
    self.positions = self.positions + self._host_counts(assignment)
    state = {"step": step + 1, "positions": self.positions.tolist(),
             "process_count": self.nproc}
    return {"targets": targets, "domain_ids": local.astype(np.int32)}, state

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

  def close(self):
    self._stop.set()


def eval_batches(corpus, seq_len: int, examples_per_domain: int, batch_size: int,
                 process_index: int = 0, process_count: int = 1, split: str = "validation",
                 host_reads: str = "all"):
  """Host-local evaluation batches over the first `examples_per_domain`
  validation sequences of every domain (fixed order, no shuffling). Rows past
  the end are all padding (mask 0), so every host yields the same number of
  equally shaped batches. With host_reads='all' the global batches are the
  same for any process count (each host keeps its slice of each)."""
  import seqio
  if host_reads == "all" and process_count > 1:
    full = eval_batches(corpus, seq_len, examples_per_domain, batch_size, 0, 1, split)
    local_bs = batch_size // process_count
    lo = process_index * local_bs
    return [{k: v[lo:lo + local_bs] for k, v in b.items()} for b in full]
  shard = seqio.ShardInfo(index=process_index, num_shards=process_count)
  local_n = -(-examples_per_domain // process_count)
  rows_t, rows_d = [], []
  for i, task in enumerate(corpus.task_names):
    ds = _domain_dataset(task, split, seq_len, None, shard, shuffle=False, repeat=False)
    got = [x for x in ds.take(local_n).as_numpy_iterator()]
    if not got:
      raise ConfigError(f"domain {corpus.domains[i]!r} has no {split!r} examples.")
    rows_t.append(np.stack(got))
    rows_d.append(np.full(len(got), i, np.int32))
  targets, domains = np.concatenate(rows_t), np.concatenate(rows_d)
  local_bs = batch_size // process_count
  # Same number of batches on every host (hosts may hold different counts).
  n_batches = -(-(local_n * corpus.num_domains) // local_bs)
  pad = n_batches * local_bs - len(targets)
  targets = np.concatenate([targets, np.zeros((pad, seq_len), np.int32)])
  domains = np.concatenate([domains, np.zeros(pad, np.int32)])
  return [{"targets": targets[j:j + local_bs], "domain_ids": domains[j:j + local_bs]}
          for j in range(0, len(targets), local_bs)]
