"""Host-local, exactly resumable batch loading.

Each global batch is built from a *domain assignment*: a vector of length
`global_batch_size` saying which domain each row comes from. The assignment is
a pure function of (seed, step), computed identically on every host, so:

* the reference and main stages sample domains with the mixture's rates
  (`MixtureAssignment`), and the proxy stage uses exact stratified batches
  (`StratifiedAssignment`); a mixture that changes during training uses
  rates published block by block (`scheduled.ScheduledAssignment`), still a
  pure function of the step once published;
* each domain is a stream whose position p is a row of the domain's packed
  data (`packing.shuffled_rows`: epoch p // n, a keyed permutation of the
  n rows). Row i of the global batch takes the next position of its
  domain's stream, in row order; each host computes every row's position
  but **reads only the rows of its own slice** of the global batch, by
  index. So the global batch is the same for any number of processes, a
  host's reads shrink as hosts are added, and the data position saved with
  each checkpoint (the positions consumed per domain) is exact;
* batches are `{'targets', 'segment_ids', 'domain_ids'}`: packed rows carry
  each document's segment id (0 is padding; see `packing`).

Sources that cannot be read by index (a local corpus's `tfds:` and
`tfrecord:` domains, whose text is tokenized on the fly by seqio) are
streamed instead, with the older trade-off `loader_host_reads.host_reads`:
'all' (every host reads every domain's whole stream and keeps its rows;
batches independent of the process count) or 'shard' (every host reads its
own seqio shard: scales with the hosts, but ties the batches to the process
count). Their rows are the seqio Task's concatenated-and-chunked sequences,
one segment per row.

(seqio's own `Mixture.get_dataset` samples with tf.data, whose state cannot be
checkpointed cheaply across hosts; the mixture's rates are read from the
registered seqio Mixture and applied here instead.)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Optional

import gin
import numpy as np

from doremi_jax.config import ConfigError
from doremi_jax.data import packing

HOST_READS = ("all", "shard")


@gin.configurable
def loader_host_reads(host_reads: str = "all") -> str:
  """For streamed sources only (corpora with `tfds:`/`tfrecord:` domains;
  packed data is always read by index): 'all': every host reads all data
  and keeps its rows (batches independent of the process count); 'shard':
  every host reads its own shard."""
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


def open_sources(corpus, split: str, seq_len: int):
  """Every domain's packed rows (`packing` row sources) for `split`, or None
  for a corpus whose sources cannot be read by index."""
  if corpus.packed is None:
    return None
  sources = [open_rows(split, seq_len) for open_rows in corpus.packed]
  for name, src in zip(corpus.domains, sources):
    if not len(src):
      raise ConfigError(f"domain {name!r} has no {split!r} rows; check that the domain has "
                        "data.")
  return sources


def _unpacked(targets: np.ndarray) -> np.ndarray:
  """Segment ids of a streamed row (concatenated documents): one segment."""
  return (targets != 0).astype(np.int32)


class BatchLoader:
  """Yields host-local batches `{'targets': [b, L] int32, 'segment_ids':
  [b, L] int32, 'domain_ids': [b] int32}` for consecutive steps, with the
  data position after each batch."""

  def __init__(self, corpus, assignment, global_batch_size: int, seq_len: int, seed: int,
               start_step: int = 0, positions: Optional[np.ndarray] = None,
               process_index: int = 0, process_count: int = 1, split: str = "train",
               prefetch: int = 2, host_reads: str = "all"):
    if host_reads not in HOST_READS:
      raise ConfigError(f"host_reads={host_reads!r}; choose one of {HOST_READS}.")
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
    self.sizes = None if self.sources is None else np.array([len(s) for s in self.sources])
    # Streamed sources keep the 'all'/'shard' trade-off; packed ones are read by index.
    self.host_reads = "all" if self.sources is not None else host_reads
    k = corpus.num_domains
    readers = self.readers(corpus, process_count, host_reads)
    if positions is None or np.shape(positions) != (readers, k):
      # No saved position (fresh run) or saved with another host count:
      # replay the assignments, which are a pure function of the step.
      positions = self.replay_positions(start_step)
    self.positions = np.array(positions, np.int64)
    self.streams = None
    if self.sources is None:
      import seqio
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
  def readers(corpus, process_count: int, host_reads: str) -> int:
    """Rows of the data position: one (global positions) unless a streamed
    corpus reads per-host shards."""
    return process_count if corpus.packed is None and host_reads == "shard" else 1

  @classmethod
  def needs_replay(cls, data_state: Optional[dict], corpus, process_count: int,
                   host_reads: str) -> bool:
    """Whether a loader resumed from `data_state` replays the assignments
    to find its data position (saved for other readers)."""
    readers = cls.readers(corpus, process_count, host_reads)
    return (data_state is not None and
            np.shape(data_state["positions"]) != (readers, corpus.num_domains))

  @property
  def bytes_read(self) -> int:
    """Bytes this host has read from packed sources."""
    return sum(s.bytes_read for s in self.sources or ())

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
    lo = self.pid * self.local_batch_size
    hi = lo + self.local_batch_size
    local = assignment[lo:hi]
    targets = np.zeros((self.local_batch_size, self.seq_len), np.int32)
    segments = np.zeros((self.local_batch_size, self.seq_len), np.int32)
    if self.sources is not None:
      # Row r of the global batch takes its domain's next stream position
      # (in row order); this host reads only the rows of its slice.
      k = self.corpus.num_domains
      onehot = assignment[:, None] == np.arange(k)[None]
      rank = np.cumsum(onehot, axis=0)[np.arange(len(assignment)), assignment] - 1
      pos = self.positions[0, local] + rank[lo:hi]
      rows = packing.shuffled_rows(pos, self.sizes[local], self.seed, local)
      for i in np.unique(local):
        mine = np.flatnonzero(local == i)
        targets[mine], segments[mine] = self.sources[i].read(rows[mine])
    for i, stream in enumerate(self.streams or ()):
      rows = np.flatnonzero(assignment == i)     # global rows of domain i, in order
      if self.host_reads == "all":
        # The domain's examples for the whole global batch, in row order;
        # keep the ones that land in this host's rows.
        if len(rows):
          examples = stream.take(len(rows))
          mine = (rows >= lo) & (rows < hi)
          targets[rows[mine] - lo] = examples[mine]
        continue
      rows = np.flatnonzero(local == i)
      if len(rows):
        targets[rows] = stream.take(len(rows))
    if self.sources is None:
      segments = _unpacked(targets)
    self.positions = self.positions + self._host_counts(assignment)
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
                 process_index: int = 0, process_count: int = 1, split: str = "validation",
                 host_reads: str = "all"):
  """Host-local evaluation batches over the first `examples_per_domain`
  validation rows of every domain (fixed order, no shuffling), domain after
  domain. Rows past the end are all padding (segment 0), so every host
  yields the same number of equally shaped batches. The global batches are
  the same for any process count; with packed data each host reads only its
  slice of each (a streamed corpus with host_reads='shard' shards them)."""
  sources = open_sources(corpus, split, seq_len)
  local_bs = batch_size // process_count
  if sources is not None:
    counts = [min(examples_per_domain, len(s)) for s in sources]
    dom = np.repeat(np.arange(len(sources)), counts).astype(np.int32)
    row = np.concatenate([np.arange(c) for c in counts])
    n_batches = -(-len(dom) // batch_size)
    pad = n_batches * batch_size - len(dom)
    dom = np.concatenate([dom, np.zeros(pad, np.int32)])
    row = np.concatenate([row, np.full(pad, -1)])
    lo = process_index * local_bs
    mine = ((np.arange(len(dom)) % batch_size) >= lo) & ((np.arange(len(dom)) % batch_size) <
                                                          lo + local_bs)
    dom, row = dom[mine], row[mine]
    targets = np.zeros((len(dom), seq_len), np.int32)
    segments = np.zeros((len(dom), seq_len), np.int32)
    for i, src in enumerate(sources):
      sel = np.flatnonzero((dom == i) & (row >= 0))
      if len(sel):
        targets[sel], segments[sel] = src.read(row[sel])
    return [{"targets": targets[j:j + local_bs], "segment_ids": segments[j:j + local_bs],
             "domain_ids": dom[j:j + local_bs]} for j in range(0, len(dom), local_bs)]
  import seqio
  if host_reads == "all" and process_count > 1:
    full = eval_batches(corpus, seq_len, examples_per_domain, batch_size, 0, 1, split)
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
  # Same number of batches on every host (hosts may hold different counts).
  n_batches = -(-(local_n * corpus.num_domains) // local_bs)
  pad = n_batches * local_bs - len(targets)
  targets = np.concatenate([targets, np.zeros((pad, seq_len), np.int32)])
  domains = np.concatenate([domains, np.zeros(pad, np.int32)])
  return [{"targets": targets[j:j + local_bs], "segment_ids": _unpacked(targets[j:j + local_bs]),
           "domain_ids": domains[j:j + local_bs]}
          for j in range(0, len(targets), local_bs)]
