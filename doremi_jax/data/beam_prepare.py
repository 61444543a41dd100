"""Tokenize once with Apache Beam: `pack_prepare`'s work as a pipeline, for
corpora too large for one machine.

  python -m doremi_jax.prepare ... --seq_len 1024 --vocabulary spm.model \
      --beam_options='--runner=DirectRunner --direct_num_workers=2'

The pipeline reads the domain's files in parallel, keys every document by
its shard (`packing.shard_of`, the same hash as the local path), groups each
shard's documents, orders them by (file, index) and packs and writes the
shard (`packing.pack_documents`, `pack_prepare.write_shard`). Every shard is
the file the local path writes, byte for byte (tests/e2e/local_corpus_test.py).
The driver then writes meta.json from the shards' summaries.

On Dataflow (`--runner=DataflowRunner --project=... --region=...
--temp_location=gs://...`), the workers write the shards to the domain's
directory, so it must be a file system every worker and the training hosts
share (e.g. a Cloud Storage FUSE mount), and the vocabulary file must be
readable by the workers.
"""

from __future__ import annotations

import json
import os
import shlex

from doremi_jax.data import packing, pack_prepare
from doremi_jax.data import local_prepare
from doremi_jax.data.local_prepare import split_documents


def _read(item, counts, text_field, text_format, domain, validation_fraction):
  """((split, shard), (file index, document index, text)) per document."""
  f, path = item
  for i, split, doc in split_documents(path, text_field, text_format, validation_fraction,
                                       domain):
    split = local_prepare.packed_split(split, path, i)
    yield (split, packing.shard_of(local_prepare.document_key(path, i), counts[split])), (f, i,
                                                                                         doc)


class _PackShard:
  """Packs and writes one shard (its documents in (file, index) order)."""

  def __init__(self, vocab_spec, seq_len, paths, dtype, info_dir):
    self.vocab_spec, self.seq_len, self.paths = vocab_spec, seq_len, paths
    self.dtype, self.info_dir = dtype, info_dir
    self.vocab = None

  def __call__(self, keyed):
    from doremi_jax.data.local_tasks import make_vocabulary
    if self.vocab is None:
      self.vocab = make_vocabulary(self.vocab_spec)
    (split, j), docs = keyed
    docs = sorted(d for d in docs if d is not None)
    rows = packing.pack_documents((pack_prepare.tokenize(self.vocab, t) for _, _, t in docs),
                                  self.seq_len)
    info = pack_prepare.write_shard(self.paths[split][j], rows, self.dtype)
    summary = {"split": split, "shard": j, "info": info, "documents": len(docs),
               "text_bytes": sum(len(t.encode("utf-8")) for _, _, t in docs)}
    with open(os.path.join(self.info_dir, f"{split}-{j}.json"), "w") as f:
      json.dump(summary, f)
    return summary


def pack_domain(domain, files, domain_dir, vocab_spec, vocab, seq_len, text_field="text",
                text_format="file", validation_fraction=0.05, shards=0, split_bytes=None,
                beam_options="--runner=DirectRunner") -> dict:
  """`pack_prepare.pack_domain` through an Apache Beam pipeline run with
  `beam_options`; same files, same return value."""
  try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
  except ImportError as e:
    from doremi_jax.config import ConfigError
    raise ConfigError("--beam_options needs Apache Beam: pip install -e '.[beam]'.") from e
  identity = packing.vocabulary_identity(vocab_spec, vocab)
  dtype = packing.token_dtype(identity["size"])
  counts = pack_prepare.shard_counts(split_bytes, shards)
  directory = pack_prepare.start_dir(domain_dir, identity, seq_len)
  paths = pack_prepare.shard_paths(directory, counts)
  info_dir = os.path.join(directory, "_shard_info")
  os.makedirs(info_dir)
  keys = [((s, j), None) for s in pack_prepare.SPLITS for j in range(counts[s])]
  spec = vocab_spec if vocab_spec == "byte" else os.path.abspath(vocab_spec)
  with beam.Pipeline(options=PipelineOptions(shlex.split(beam_options))) as p:
    docs = (p | "Files" >> beam.Create(list(enumerate(files)))
            | "Read" >> beam.FlatMap(_read, counts, text_field, text_format, domain,
                                     validation_fraction))
    every_shard = p | "Shards" >> beam.Create(keys)   # so empty shards are written too
    _ = ((docs, every_shard) | beam.Flatten() | beam.GroupByKey()
         | "Pack" >> beam.Map(_PackShard(spec, seq_len, paths, dtype, info_dir)))
  infos = {s: [None] * counts[s] for s in pack_prepare.SPLITS}
  stats = {s: {"documents": 0, "bytes": 0} for s in pack_prepare.SPLITS}
  for name in os.listdir(info_dir):
    with open(os.path.join(info_dir, name)) as f:
      summary = json.load(f)
    infos[summary["split"]][summary["shard"]] = summary["info"]
    stats[summary["split"]]["documents"] += summary["documents"]
    stats[summary["split"]]["bytes"] += summary["text_bytes"]
    os.remove(os.path.join(info_dir, name))
  os.rmdir(info_dir)
  missing = [(s, j) for s in infos for j, x in enumerate(infos[s]) if x is None]
  if missing:
    raise RuntimeError(f"the Beam pipeline wrote no summary for shards {missing}")
  pack_prepare.write_packed(directory, identity, seq_len, infos, stats)
  return {s: {"rows": sum(x["rows"] for x in infos[s]),
              "tokens": sum(x["tokens"] for x in infos[s])} for s in pack_prepare.SPLITS}
