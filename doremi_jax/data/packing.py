"""Packed sequences: documents packed into rows with segment ids, stored
once per (vocabulary, sequence length) and read by row index.

A *packed row* is `targets` [L] and `segment_ids` [L] (int32): the tokens
of one or more documents (each ends with EOS), document j of the row
carrying segment id j (1, 2, ...), the unused tail id 0 (padding). The
model restarts positions at each document and never attends across two
(`loss.model_inputs`), and the loss ignores segment 0.

* `pack_documents` packs token lists first-fit into at most `open_rows`
  open rows (a document longer than L is cut into pieces of L, each its own
  segment); the result is a pure function of the document order.
* `shard_of` spreads a domain's documents over shards by a hash of their
  key, so shards pack independently, in parallel (`beam_prepare`) or one
  after the other (`local_prepare`), to the same files.
* Rows are stored as ArrayRecord files (the random-access format MaxText
  reads through Grain), `group_size:1`, one record per row; `meta.json`
  beside them records the vocabulary's identity, the sequence length and
  each shard's row count and size, so data prepared for another vocabulary
  or length, or a missing or truncated shard, is refused.
* Row sources (`MemoryRows`, `ArrayRecordRows`) read rows by global index
  (`shuffling` says which row each stream position reads).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from doremi_jax.config import ConfigError

# 2: the evaluation documents are packed as two splits, `tune` and `test`
# (version 1 packed them as one `validation` split).
FORMAT_VERSION = 2
META = "meta.json"
TRAIN, TUNE, TEST = "train", "tune", "test"
SPLITS = (TRAIN, TUNE, TEST)
OPEN_ROWS = 8        # rows a packer keeps open (first fit among them)
SEGMENT_DTYPE = np.uint16


# --------------------------------------------------------------------------
# Packing


class Packer:
  """First-fit packing of token lists into rows of `seq_len`, with at most
  `open_rows` rows open: a piece goes into the first open row it fits;
  when none has room, the fullest open row is closed (emitted) if the open
  rows are at the limit, and a new row opens. `add` returns the rows it
  closed; `flush` the rest, in the order they were opened."""

  def __init__(self, seq_len: int, open_rows: int = OPEN_ROWS):
    if seq_len < 1 or open_rows < 1:
      raise ValueError(f"seq_len ({seq_len}) and open_rows ({open_rows}) must be >= 1")
    self.seq_len, self.open_rows = seq_len, open_rows
    self._rows: list = []     # each: list of token arrays (its segments)
    self._used: list = []

  def add(self, tokens: Sequence[int]) -> list:
    tokens = np.asarray(tokens, np.int32)
    out = []
    for lo in range(0, len(tokens), self.seq_len):
      piece = tokens[lo:lo + self.seq_len]
      room = [i for i, u in enumerate(self._used) if u + len(piece) <= self.seq_len]
      if room:
        i = room[0]
      else:
        if len(self._rows) >= self.open_rows:
          full = int(np.argmax(self._used))
          out.append(self._close(full))
        self._rows.append([])
        self._used.append(0)
        i = len(self._rows) - 1
      self._rows[i].append(piece)
      self._used[i] += len(piece)
    return out

  def _close(self, i: int):
    segments = self._rows.pop(i)
    self._used.pop(i)
    targets = np.zeros(self.seq_len, np.int32)
    seg = np.zeros(self.seq_len, np.int32)
    at = 0
    for j, piece in enumerate(segments, 1):
      targets[at:at + len(piece)] = piece
      seg[at:at + len(piece)] = j
      at += len(piece)
    return targets, seg

  def flush(self) -> list:
    out = []
    while self._rows:
      out.append(self._close(0))
    return out


def pack_documents(documents: Iterable[Sequence[int]], seq_len: int,
                   open_rows: int = OPEN_ROWS) -> Iterator[tuple]:
  """Yields packed rows (targets [L], segment_ids [L], int32) of the token
  lists `documents`, in order (see `Packer`)."""
  packer = Packer(seq_len, open_rows)
  for doc in documents:
    yield from packer.add(doc)
  yield from packer.flush()


def eval_split(key: str) -> str:
  """`tune` or `test` (half each, by a hash of the document's key): where
  an evaluation document goes. What a method adapts to reads `tune`;
  everything reported reads `test` (docs/data.md). Train documents are
  chosen before this, by their own hash, so nothing moves between train
  and evaluation."""
  h = hashlib.sha1(f"eval-split:{key}".encode()).digest()
  return TUNE if h[0] < 128 else TEST


def shard_of(key: str, num_shards: int) -> int:
  """The shard of a document, from a hash of its key (file name and index)."""
  h = hashlib.sha1(f"shard:{key}".encode()).digest()
  return int.from_bytes(h[:8], "big") % num_shards


# --------------------------------------------------------------------------
# Records


def token_dtype(vocab_size: int):
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def encode_row(targets: np.ndarray, segment_ids: np.ndarray, dtype) -> bytes:
  return (np.asarray(targets).astype(dtype).tobytes() +
          np.asarray(segment_ids).astype(SEGMENT_DTYPE).tobytes())


def decode_rows(records: Sequence[bytes], seq_len: int, dtype) -> tuple:
  """(targets, segment_ids), int32 [len(records), seq_len]."""
  dtype = np.dtype(dtype)
  width = seq_len * (dtype.itemsize + np.dtype(SEGMENT_DTYPE).itemsize)
  if any(len(r) != width for r in records):
    bad = next(len(r) for r in records if len(r) != width)
    raise ConfigError(f"a packed record holds {bad} bytes where {width} were expected "
                      f"(rows of {seq_len} tokens); the files are corrupt or were written "
                      "for another sequence length. Prepare the corpus again.")
  flat = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), width)
  split = seq_len * dtype.itemsize
  targets = flat[:, :split].copy().view(dtype).astype(np.int32)
  seg = flat[:, split:].copy().view(SEGMENT_DTYPE).astype(np.int32)
  return targets, seg


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}.array_record-{index:05d}-of-{count:05d}"


# --------------------------------------------------------------------------
# Vocabulary identity and the packed directory


def vocabulary_identity(spec: str, vocab) -> dict:
  """What a packed directory records of its vocabulary: the kind, the
  SHA-256 of the SentencePiece model file, the size."""
  if spec == "byte":
    return {"kind": "byte", "sha256": None, "size": int(vocab.vocab_size)}
  with open(spec, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return {"kind": "sentencepiece", "sha256": digest, "size": int(vocab.vocab_size)}


def vocabulary_tag(identity: dict) -> str:
  return "byte" if identity["kind"] == "byte" else f"spm_{identity['sha256'][:12]}"


def describe(identity: dict) -> str:
  return ("the byte vocabulary" if identity["kind"] == "byte" else
          f"a SentencePiece model (sha256 {identity['sha256'][:12]}..., {identity['size']} ids)")


def packed_dir(domain_dir: str, identity: dict, seq_len: int) -> str:
  return os.path.join(domain_dir, "packed", f"{vocabulary_tag(identity)}_L{seq_len}")


def write_meta(directory: str, identity: dict, seq_len: int, splits: dict, **extra) -> None:
  meta = {"format_version": FORMAT_VERSION, "vocabulary": identity, "seq_len": seq_len,
          "token_dtype": token_dtype(identity["size"]).name, "open_rows": OPEN_ROWS,
          "splits": splits, **extra}
  tmp = os.path.join(directory, META + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(directory, META))


def available(domain_dir: str) -> list:
  """The (identity, seq_len) of every packed directory of a domain."""
  root = os.path.join(domain_dir, "packed")
  out = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
    try:
      with open(os.path.join(root, name, META)) as f:
        meta = json.load(f)
      out.append((meta["vocabulary"], meta["seq_len"]))
    except (OSError, ValueError, KeyError):
      continue
  return out


def _fix(identity: dict, seq_len) -> str:
  return ("run `python -m doremi_jax.prepare` again with `--vocabulary` and `--seq_len` "
          f"set to this run's ({'byte' if identity['kind'] == 'byte' else 'the model file'}"
          f", {'TrainConfig.seq_len' if seq_len is None else seq_len})")


def not_packed(domain: str, domain_dir: str, identity: dict, seq_len=None) -> ConfigError:
  """The error for a domain with no rows packed for `identity` (at
  `seq_len`, or at any length when None), naming what was prepared."""
  what = ", ".join(f"{describe(v)} at length {n}" for v, n in available(domain_dir)) or "nothing"
  at = "" if seq_len is None else f" at sequence length {seq_len}"
  return ConfigError(f"domain {domain!r} is not packed for {describe(identity)}{at} "
                     f"(prepared: {what}); {_fix(identity, seq_len)}, or set the run's "
                     "vocabulary and sequence length to what was prepared.")


def read_meta(domain: str, domain_dir: str, identity: dict, seq_len: int) -> tuple:
  """(directory, meta) of a domain's rows packed for `identity` and
  `seq_len`; ConfigError naming what was prepared when there are none."""
  directory = packed_dir(domain_dir, identity, seq_len)
  path = os.path.join(directory, META)
  fix = _fix(identity, seq_len)
  if not os.path.exists(path):
    raise not_packed(domain, domain_dir, identity, seq_len)
  try:
    with open(path) as f:
      meta = json.load(f)
    ok = (meta["format_version"] == FORMAT_VERSION and isinstance(meta["splits"], dict))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"domain {domain!r}: {path} is unreadable ({e}); {fix}.") from e
  if not ok:
    old = ("; it was prepared before evaluation documents were split into `tune` and "
           "`test`" if meta.get("format_version") == 1 else "")
    raise ConfigError(f"domain {domain!r}: {path} has format {meta.get('format_version')!r}, "
                      f"this version reads {FORMAT_VERSION}{old}; {fix}.")
  if meta["vocabulary"] != identity or meta["seq_len"] != seq_len:
    raise ConfigError(f"domain {domain!r}: {directory} holds data prepared for "
                      f"{describe(meta['vocabulary'])} at length {meta['seq_len']}, not "
                      f"{describe(identity)} at length {seq_len}; {fix}.")
  return directory, meta


# --------------------------------------------------------------------------
# Row sources


class MemoryRows:
  """Packed rows held in memory (the synthetic corpus)."""

  def __init__(self, targets: np.ndarray, segment_ids: np.ndarray):
    self.targets = np.asarray(targets, np.int32)
    self.segment_ids = np.asarray(segment_ids, np.int32)
    self.seq_len = self.targets.shape[1]
    self.bytes_read = 0

  @property
  def tokens_per_row(self) -> float:
    """Real (non-padding) tokens per row, measured: what turns a token
    mixture into row rates (`weights.row_rates`)."""
    return float(np.count_nonzero(self.segment_ids)) / max(len(self.targets), 1)

  def __len__(self) -> int:
    return len(self.targets)

  def read(self, rows: np.ndarray) -> tuple:
    rows = np.asarray(rows, np.int64)
    self.bytes_read += int(rows.size) * self.seq_len * 8
    return self.targets[rows], self.segment_ids[rows]


class ArrayRecordRows:
  """One split of a packed domain, read by global row index from its
  ArrayRecord shards (one `ArrayRecordReader` per shard, opened when first
  read, batch reads by position). Checks every shard against meta.json
  when opened: a missing or truncated shard is refused."""

  def __init__(self, domain: str, directory: str, meta: dict, split: str):
    info = meta["splits"].get(split)
    if not info or not info["shards"]:
      raise ConfigError(f"domain {domain!r}: {directory} has no {split!r} rows; prepare the "
                        "corpus again.")
    self.paths = []
    for shard in info["shards"]:
      path = os.path.join(directory, shard["file"])
      if not os.path.exists(path):
        raise ConfigError(f"domain {domain!r}: shard {path} is missing; restore it or prepare "
                          "the corpus again.")
      if os.path.getsize(path) != shard["bytes"]:
        raise ConfigError(f"domain {domain!r}: shard {path} holds {os.path.getsize(path)} "
                          f"bytes where {shard['bytes']} were written (truncated or "
                          "replaced); restore it or prepare the corpus again.")
      self.paths.append(path)
    self.starts = np.concatenate([[0], np.cumsum([s["rows"] for s in info["shards"]])])
    self.tokens_per_row = float(info["tokens"]) / max(int(info["rows"]), 1)
    self._readers = [None] * len(self.paths)
    self.domain, self.seq_len = domain, meta["seq_len"]
    self.dtype = np.dtype(meta["token_dtype"])
    self.bytes_read = 0

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _reader(self, j: int):
    if self._readers[j] is None:
      from array_record.python.array_record_module import ArrayRecordReader
      try:
        reader = ArrayRecordReader(self.paths[j], "readahead_buffer_size:0")
        n = reader.num_records()
      except Exception as e:  # array_record raises several types for a bad file
        raise ConfigError(f"domain {self.domain!r}: cannot read {self.paths[j]} "
                          f"({type(e).__name__}: {e}); prepare the corpus again.") from e
      if n != self.starts[j + 1] - self.starts[j]:
        raise ConfigError(f"domain {self.domain!r}: {self.paths[j]} holds {n} rows where "
                          f"{self.starts[j + 1] - self.starts[j]} were written; prepare the "
                          "corpus again.")
      self._readers[j] = reader
    return self._readers[j]

  def read(self, rows: np.ndarray) -> tuple:
    rows = np.asarray(rows, np.int64).ravel()
    records = [b""] * len(rows)
    shard = np.searchsorted(self.starts, rows, side="right") - 1
    for j in np.unique(shard):
      at = np.flatnonzero(shard == j)
      got = self._reader(int(j)).read((rows[at] - self.starts[j]).tolist())
      for i, r in zip(at, got):
        records[i] = r
    self.bytes_read += sum(len(r) for r in records)
    if not len(rows):
      return (np.zeros((0, self.seq_len), np.int32),) * 2
    return decode_rows(records, self.seq_len, self.dtype)


def open_source(domain: str, domain_dir: str, identity: dict, split: str,
                seq_len: int) -> ArrayRecordRows:
  """A prepared domain's rows for `split` at `seq_len` (bound per domain
  with functools.partial: a corpus's `packed` openers)."""
  directory, meta = read_meta(domain, domain_dir, identity, seq_len)
  return ArrayRecordRows(domain, directory, meta, split)
