r"""Prepare a local multi-domain corpus for doremi_jax, offline.

  python -m doremi_jax.prepare --corpus mycorpus --data_dir data --seq_len 1024 \
      --domain wiki='raw/wiki/*.jsonl.gz' --domain code='raw/code/*.parquet' \
      --domain books='raw/books/' --domain news=tfds:my_news/en:1.0.0 \
      --domain forum='tfrecord:/data/forum/train-*|/data/forum/val-*'

Then train with `get_corpus.name = 'local'`, `LocalCorpusConfig.name =
'mycorpus'`, `LocalCorpusConfig.data_dir = 'data'`: training reads only
what this command writes.

A domain is text files (a file, a directory or a glob: plain text, JSONL,
Parquet), a TFDS dataset already prepared in `--tfds_data_dir`
(`tfds:DATASET[/CONFIG][:VERSION]`, its train and validation splits) or
TFRecord files of tf.train.Example (`tfrecord:TRAIN_GLOB[|VAL_GLOB]`); the
text is the `--text_field` field, column or feature. Every kind is prepared
the same way: the text once (a TFDS dataset per domain, which the seqio
Tasks read), then tokenized with `--vocabulary` and packed into rows of
`--seq_len` (ArrayRecord shards and meta.json; `data/packing.py`), which
training reads by index. Run it again with another `--vocabulary` (e.g. a
SentencePiece model trained on the text by `python -m doremi_jax.tokenizer`)
or `--seq_len` to add packings. `--beam_options='--runner=DirectRunner'` (or
DataflowRunner with its options) writes the text (through TFDS's Beam
support) and the packed rows with Apache Beam pipelines instead of in this
process.
"""

from __future__ import annotations

import json
import os
import re

from absl import flags

from doremi_jax.cli import load_tensorflow_quietly, run_tool

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus", "local", "Corpus name.")
flags.DEFINE_string("data_dir", "data", "TFDS data dir to prepare into.")
flags.DEFINE_multi_string("domain", [], "NAME=GLOB (a file, a directory, or a glob), "
                          "NAME=tfds:DATASET[/CONFIG][:VERSION] or "
                          "NAME=tfrecord:TRAIN_GLOB[|VAL_GLOB].")
flags.DEFINE_string("text_field", "text", "Text field of JSONL records, Parquet column, or "
                    "text feature of TFDS / TFRecord (tf.train.Example) records.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data dir holding the `tfds:` domains' "
                    "datasets (default: --data_dir).")
flags.DEFINE_enum("text_format", "file", ["file", "lines"],
                  "Plain-text files: one document per file, or one per line.")
flags.DEFINE_float("validation_fraction", 0.05, "Fraction of documents for validation.")
flags.DEFINE_string("vocabulary", "byte", "Vocabulary to pack with: 'byte' or a SentencePiece "
                    ".model file (LocalCorpusConfig.vocabulary of the runs).")
flags.DEFINE_integer("seq_len", 128, "Sequence length to pack for (TrainConfig.seq_len of the "
                     "runs); 0 prepares the text only.")
flags.DEFINE_integer("shards", 0, "Train shards per domain (0: one per 128 MiB of text).")
flags.DEFINE_string("beam_options", None, "Prepare the text and pack with Apache Beam, with "
                    "these pipeline options (e.g. '--runner=DirectRunner'); default: in this "
                    "process.")


# Corpus and domain names become directory and file names: letters, digits,
# '_', '-' and '.', starting with a letter or digit (so never '..').
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_safe_name(what: str, name: str) -> None:
  """ConfigError unless `name` has the safe form (SAFE_NAME)."""
  from doremi_jax.config import ConfigError
  if not SAFE_NAME.fullmatch(name) or ".." in name:
    raise ConfigError(f"{what} {name!r} is not a safe name: it becomes a directory name, so "
                      "use letters, digits, '_', '-' and '.', starting with a letter or digit "
                      "(no path separators, spaces, quotes or '..').")


def main(argv):
  del argv
  load_tensorflow_quietly()
  from doremi_jax.config import ConfigError, check_number
  from doremi_jax.data import local_prepare
  check_number("--validation_fraction", FLAGS.validation_fraction, low=0, high=1,
               low_open=True, high_open=True)
  check_number("--seq_len", FLAGS.seq_len, integer=True, low=0)
  check_number("--shards", FLAGS.shards, integer=True, low=0)
  from doremi_jax.data import local_tasks
  vocab = local_tasks.make_vocabulary(FLAGS.vocabulary) if FLAGS.seq_len else None
  if not FLAGS.corpus or not FLAGS.data_dir:
    raise ConfigError("--corpus and --data_dir must be non-empty.")
  check_safe_name("--corpus", FLAGS.corpus)
  if not FLAGS.domain:
    raise ConfigError("give at least one --domain NAME=GLOB.")
  specs = []
  for d in FLAGS.domain:
    name, sep, pattern = d.partition("=")
    if not sep or not name or not pattern:
      raise ConfigError(f"--domain {d!r}: use NAME=GLOB, NAME=tfds:DATASET or "
                        "NAME=tfrecord:TRAIN_GLOB[|VAL_GLOB].")
    check_safe_name(f"--domain {d!r}: the domain name", name)
    specs.append((name, pattern))
  names = [n for n, _ in specs]
  if len(set(names)) != len(names):
    raise ConfigError(f"duplicate domain names in {names}.")
  tfds_dir = FLAGS.tfds_data_dir or FLAGS.data_dir
  for name, pattern in specs:  # fail on a missing path before preparing anything
    local_prepare.expand(pattern, name, tfds_dir, FLAGS.text_field)
  summaries = []
  for i, (name, pattern) in enumerate(specs, 1):
    print(f"[prepare] {i}/{len(specs)} {name}: {pattern}", flush=True)
    summary = local_prepare.prepare_domain(
        FLAGS.corpus, name, pattern, FLAGS.data_dir, FLAGS.text_field, FLAGS.text_format,
        FLAGS.validation_fraction, FLAGS.beam_options, tfds_dir)
    if FLAGS.seq_len:
      _pack(name, pattern, summary, vocab, tfds_dir)
    summaries.append(summary)
  _write_manifest(summaries)


def _pack(name: str, pattern: str, summary: dict, vocab, tfds_dir: str):
  """Tokenizes and packs one prepared domain (locally or with Beam)."""
  from doremi_jax.data import local_prepare, pack_prepare
  files = local_prepare.expand(pattern, name, tfds_dir, FLAGS.text_field)
  split_bytes = {"train": summary["train_bytes"],
                 "validation": summary["bytes"] - summary["train_bytes"]}
  args = (name, files, local_prepare.domain_dir(FLAGS.data_dir, summary), FLAGS.vocabulary,
          vocab, FLAGS.seq_len, FLAGS.text_field, FLAGS.text_format,
          FLAGS.validation_fraction, FLAGS.shards, split_bytes)
  if FLAGS.beam_options is not None:
    from doremi_jax.data import beam_prepare
    packed = beam_prepare.pack_domain(*args, beam_options=FLAGS.beam_options)
  else:
    packed = pack_prepare.pack_domain(*args)
  print(f"[prepare]   packed for {FLAGS.vocabulary} at length {FLAGS.seq_len}: "
        f"{packed['train']['rows']} train rows, {packed['tune']['rows']} tune rows, "
        f"{packed['test']['rows']} test rows", flush=True)


def _write_manifest(summaries: list):
  """Adds the prepared domains to the corpus's manifest (atomically) and
  prints their sizes."""
  from doremi_jax.data import local_prepare
  mpath = local_prepare.manifest_path(FLAGS.data_dir, FLAGS.corpus)
  os.makedirs(os.path.dirname(mpath), exist_ok=True)
  old = {}
  if os.path.exists(mpath):
    with open(mpath) as f:
      old = {d["domain"]: d for d in json.load(f)["domains"]}
  old.update({s["domain"]: s for s in summaries})
  with open(mpath + ".tmp", "w") as f:
    json.dump({"corpus": FLAGS.corpus, "domains": list(old.values())}, f, indent=2)
  os.replace(mpath + ".tmp", mpath)
  print(f"{'domain':<16}{'documents':>11}{'validation':>12}{'bytes':>14}")
  for s in summaries:
    print(f"{s['domain']:<16}{s['documents']:>11}{s['validation_documents']:>12}"
          f"{s['bytes']:>14}")
  print(f"[prepare] manifest: {mpath}")


if __name__ == "__main__":
  run_tool(main)
