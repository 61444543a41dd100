"""Tokenize once: a prepared domain's documents, tokenized with one
vocabulary and packed into rows of one sequence length, written as
ArrayRecord shards (`packing`).

`python -m doremi_jax.prepare ... --seq_len L [--vocabulary V]` runs
`pack_domain` after preparing the text. It reads the domain's inputs (text
files, TFRecord files, TFDS splits) the way `local_prepare` does (same
documents, same train/validation split; the validation documents split
again by hash into `tune` and `test`, `packing.eval_split`), spreads the documents over shards
by a hash of their key (`packing.shard_of`), and packs each shard's
documents in (input, index) order. `beam_prepare` runs the same per-shard work as an Apache Beam
pipeline and writes the same files.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterable, Iterator

import numpy as np

from doremi_jax.config import ConfigError
from doremi_jax.data import packing
from doremi_jax.data.local_prepare import document_key, packed_split, split_documents

SPLITS = packing.SPLITS
SHARD_BYTES = 128 << 20   # text bytes per shard when the shard count is automatic


def default_shards(text_bytes: int) -> int:
  return max(1, -(-text_bytes // SHARD_BYTES))


def documents(files, text_field, text_format, domain, validation_fraction) -> Iterator[tuple]:
  """(packed split, file index, document index, path, text) of every
  document, in order."""
  for f, path in enumerate(files):
    for i, split, doc in split_documents(path, text_field, text_format, validation_fraction,
                                         domain):
      yield packed_split(split, path, i), f, i, path, doc


def tokenize(vocab, text: str) -> np.ndarray:
  """The document's ids with EOS appended (as training appends it)."""
  return np.asarray(list(vocab.encode(text)) + [vocab.eos_id], np.int32)


def shard_counts(split_bytes: dict, shards: int) -> dict:
  """Shards per split: `shards` for train (0: automatic), automatic for
  tune and test (half the validation text each)."""
  half = default_shards(split_bytes["validation"] // 2)
  return {packing.TRAIN: shards or default_shards(split_bytes["train"]),
          packing.TUNE: half, packing.TEST: half}


def shard_paths(directory: str, counts: dict) -> dict:
  return {s: [os.path.join(directory, packing.shard_name(s, j, n)) for j in range(n)]
          for s, n in counts.items()}


def write_shard(path: str, rows: Iterable[tuple], dtype) -> dict:
  """Writes packed rows to one ArrayRecord file (atomically: a temporary
  name, then a rename); returns {'file', 'rows', 'tokens', 'bytes'}."""
  from array_record.python.array_record_module import ArrayRecordWriter
  tmp = path + ".tmp"
  writer = ArrayRecordWriter(tmp, "group_size:1")
  n = tokens = 0
  try:
    for targets, seg in rows:
      writer.write(packing.encode_row(targets, seg, dtype))
      n += 1
      tokens += int(np.count_nonzero(seg))
  finally:
    writer.close()
  os.replace(tmp, path)
  return {"file": os.path.basename(path), "rows": n, "tokens": tokens,
          "bytes": os.path.getsize(path)}


def write_packed(directory: str, identity: dict, seq_len: int, infos: dict,
                 split_stats: dict) -> None:
  """meta.json from each split's shard infos (in shard order) and counts."""
  splits = {}
  for s in SPLITS:
    shards = infos[s]
    splits[s] = {"rows": sum(x["rows"] for x in shards),
                 "tokens": sum(x["tokens"] for x in shards),
                 "documents": split_stats[s]["documents"],
                 "text_bytes": split_stats[s]["bytes"], "shards": shards}
  held_out = [splits[packing.TUNE], splits[packing.TEST]]
  tokens = sum(s["tokens"] for s in held_out) or 1
  packing.write_meta(directory, identity, seq_len, splits,
                     bytes_per_token=sum(s["text_bytes"] for s in held_out) / tokens)


def start_dir(domain_dir: str, identity: dict, seq_len: int) -> str:
  """The packed directory for (vocabulary, length), emptied."""
  directory = packing.packed_dir(domain_dir, identity, seq_len)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.makedirs(directory)
  return directory


def pack_domain(domain: str, files, domain_dir: str, vocab_spec: str, vocab, seq_len: int,
                text_field="text", text_format="file", validation_fraction=0.05,
                shards: int = 0, split_bytes=None) -> dict:
  """Tokenizes and packs one domain into `domain_dir/packed/<vocab>_L<len>/`
  on this machine; returns the meta's splits summary."""
  if seq_len < 2 or seq_len > np.iinfo(packing.SEGMENT_DTYPE).max:
    raise ConfigError(f"--seq_len={seq_len}: use a length in [2, "
                      f"{np.iinfo(packing.SEGMENT_DTYPE).max}].")
  identity = packing.vocabulary_identity(vocab_spec, vocab)
  dtype = packing.token_dtype(identity["size"])
  counts = shard_counts(split_bytes, shards)
  directory = start_dir(domain_dir, identity, seq_len)
  paths = shard_paths(directory, counts)
  from array_record.python.array_record_module import ArrayRecordWriter
  writers = {s: [ArrayRecordWriter(p + ".tmp", "group_size:1") for p in ps]
             for s, ps in paths.items()}
  packers = {s: [packing.Packer(seq_len) for _ in ps] for s, ps in paths.items()}
  stats = {s: {"rows": [0] * counts[s], "tokens": [0] * counts[s]} for s in SPLITS}
  split_stats = {s: {"documents": 0, "bytes": 0} for s in SPLITS}

  def emit(split, j, rows):
    for targets, seg in rows:
      writers[split][j].write(packing.encode_row(targets, seg, dtype))
      stats[split]["rows"][j] += 1
      stats[split]["tokens"][j] += int(np.count_nonzero(seg))

  try:
    for split, _, i, path, doc in documents(files, text_field, text_format, domain,
                                            validation_fraction):
      j = packing.shard_of(document_key(path, i), counts[split])
      emit(split, j, packers[split][j].add(tokenize(vocab, doc)))
      split_stats[split]["documents"] += 1
      split_stats[split]["bytes"] += len(doc.encode("utf-8"))
    for s in SPLITS:
      for j, packer in enumerate(packers[s]):
        emit(s, j, packer.flush())
  finally:
    for ws in writers.values():
      for w in ws:
        w.close()
  infos = {}
  for s in SPLITS:
    infos[s] = []
    for j, p in enumerate(paths[s]):
      os.replace(p + ".tmp", p)
      infos[s].append({"file": os.path.basename(p), "rows": stats[s]["rows"][j],
                       "tokens": stats[s]["tokens"][j], "bytes": os.path.getsize(p)})
  write_packed(directory, identity, seq_len, infos, split_stats)
  return {s: {"rows": sum(stats[s]["rows"]), "tokens": sum(stats[s]["tokens"])}
          for s in SPLITS}
