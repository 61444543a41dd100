"""Local multi-domain corpora as seqio Tasks.

The `local` corpus (`get_corpus.name = 'local'`, `LocalCorpusConfig`) turns
each domain into a seqio Task: read text, tokenize, append EOS, concatenate
and chunk into sequences of the training length. Training reads a prepared
domain's packed rows instead (tokenized once by `prepare --seq_len`, read by
index; see `packing`); the seqio Task over its text stays registered for
seqio/T5X users. A corpus with a `tfds:` or `tfrecord:` domain is streamed
through the seqio Tasks (`loader`). Domains are usually
prepared offline by `python -m doremi_jax.prepare` (see `local_prepare`);
they may also be any TFDS dataset already prepared in the data dir
(`tfds:NAME`) or TFRecord files of tf.train.Example with a text feature
(`tfrecord:GLOB`). seqio and TensorFlow are imported inside the functions
that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Optional

import gin
from etils import epath

from doremi_jax.config import ConfigError
from doremi_jax.data import packing
from doremi_jax.data.corpus import Corpus, register_task
from doremi_jax.data.local_prepare import BUILDER_NAME, domain_dir, manifest_path, sanitize

_SOURCE_KINDS = ("tfds:", "tfrecord:")
_ENTRY_FORMS = ("'NAME' (prepared), 'NAME=tfds:DATASET[/CONFIG][:VERSION]' or "
                "'NAME=tfrecord:GLOB'")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LocalCorpusConfig:
  """A corpus prepared by `doremi_jax.prepare` (or given as TFRecords).

  domains: () for every domain in the manifest, or entries "NAME" (a
    prepared domain), "NAME=tfds:DATASET[/CONFIG][:VERSION]" (any TFDS
    dataset already prepared in `data_dir`, with a `text_feature` string
    feature and train/validation splits) or "NAME=tfrecord:GLOB"
    (tf.train.Example files with `text_feature`; give a validation split as
    `NAME=tfrecord:TRAIN_GLOB|VAL_GLOB`). A prepared domain's size (what
    'proportional' weights and the repetition checks use) is its train bytes
    divided by the bytes per token measured on its validation text under
    `vocabulary`; for TFRecord domains the same on the file bytes (an upper
    bound: files hold more than text); for TFDS domains the train example
    count.
  vocabulary: 'byte' (seqio.ByteVocabulary) or the path of a SentencePiece
    .model file (see `python -m doremi_jax.tokenizer`).

  Values are checked when the config is built (`__post_init__`); what needs
  the file system (data_dir, the vocabulary file) is checked by
  `local_corpus` / `make_vocabulary`.
  """
  name: str = "local"
  data_dir: str = "data"
  domains: tuple = ()
  vocabulary: str = "byte"
  text_feature: str = "text"

  def __post_init__(self):
    for field in ("name", "data_dir", "vocabulary", "text_feature"):
      value = getattr(self, field)
      if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"LocalCorpusConfig.{field} must be a non-empty string, "
                          f"got {value!r}.")
    sanitize(self.name)  # raises when the name has no usable characters
    domains = self.domains
    if isinstance(domains, str) or not isinstance(domains, (tuple, list)) or not all(
        isinstance(e, str) for e in domains):
      raise ConfigError(f"LocalCorpusConfig.domains must be a tuple of strings "
                        f"({_ENTRY_FORMS}), got {domains!r}.")
    domains = tuple(domains)
    keys = []
    for entry in domains:
      name, sep, source = entry.partition("=")
      if not name.strip():
        raise ConfigError(f"LocalCorpusConfig.domains entry {entry!r} has no domain name; "
                          f"use {_ENTRY_FORMS}.")
      if sep and not (source.startswith(_SOURCE_KINDS)
                      and source.partition(":")[2].strip("|").strip()):
        raise ConfigError(f"domain entry {entry!r}: use {_ENTRY_FORMS}.")
      keys.append(sanitize(name))
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
      raise ConfigError(f"LocalCorpusConfig.domains names {repeated} more than once (names are "
                        "compared in lower case with punctuation as '_'); give each domain "
                        "a distinct name.")
    object.__setattr__(self, "domains", domains)


def make_vocabulary(spec: str):
  """seqio.ByteVocabulary for 'byte', else the SentencePiece model at `spec`
  (loaded here, so a missing or broken file fails before any task is built)."""
  import seqio
  if spec == "byte":
    return seqio.ByteVocabulary()
  if not os.path.isfile(spec):
    raise ConfigError(f"LocalCorpusConfig.vocabulary: SentencePiece model {spec!r} does not "
                      "exist; train one with `python -m doremi_jax.tokenizer` or use 'byte'.")
  vocab = seqio.SentencePieceVocabulary(os.path.abspath(spec))
  try:
    vocab.vocab_size  # pylint: disable=pointless-statement
  except Exception as e:  # sentencepiece/protobuf raise several types for a bad file
    raise ConfigError(f"LocalCorpusConfig.vocabulary: {spec!r} is not a SentencePiece model "
                      f"({type(e).__name__}: {e}); give a .model file written by "
                      "`python -m doremi_jax.tokenizer` or use 'byte'.") from e
  return vocab


def _chunk(dataset, sequence_length, output_features):
  """seqio preprocessor: concatenates the token streams of consecutive
  documents and splits them into sequences of exactly
  `sequence_length['targets']` tokens (the last piece of an epoch may be
  shorter; it is padded by the loader)."""
  import tensorflow as tf
  del output_features
  length = sequence_length["targets"]
  tokens = dataset.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(ex["targets"]))
  return tokens.batch(length).map(lambda t: {"targets": t})


MEASURE_BYTES = 1 << 18   # validation text read per domain to measure bytes per token


def bytes_per_token(files_glob: str, feature: str, vocab, limit: int = MEASURE_BYTES):
  """UTF-8 bytes per token (EOS included, as training appends it) of the
  text in TFRecord files of tf.train.Example, over up to `limit` bytes of
  documents; None when the files hold no text."""
  import tensorflow as tf
  paths = sorted(glob.glob(files_glob))
  if not paths:
    return None
  n_bytes = n_tokens = 0
  spec = {feature: tf.io.FixedLenFeature([], tf.string)}
  for raw in tf.data.TFRecordDataset(paths):
    text = tf.io.parse_single_example(raw, spec)[feature].numpy()
    n_bytes += len(text)
    n_tokens += len(vocab.encode(text.decode("utf-8", errors="replace"))) + 1
    if n_bytes >= limit:
      break
  return n_bytes / n_tokens if n_tokens else None


def local_corpus(cfg: Optional[LocalCorpusConfig] = None) -> Corpus:
  """Registers one seqio Task per domain of a local corpus; returns the Corpus.

  train_tokens (what 'proportional' weights use) is, per domain, the
  prepared train bytes (or TFRecord train file bytes) over the bytes per
  token measured on its validation text, or the TFDS train example count.
  """
  import seqio
  import tensorflow as tf
  cfg = cfg or LocalCorpusConfig()
  needs_data_dir = not cfg.domains or any(not e.partition("=")[2].startswith("tfrecord:")
                                          for e in cfg.domains)
  if needs_data_dir and not epath.Path(cfg.data_dir).is_dir():
    raise ConfigError(f"LocalCorpusConfig.data_dir {cfg.data_dir!r} does not exist or is not a "
                      "directory; set it to the --data_dir given to `python -m "
                      "doremi_jax.prepare`.")
  vocab = make_vocabulary(cfg.vocabulary)
  mpath = manifest_path(cfg.data_dir, cfg.name)
  manifest = None
  if os.path.exists(mpath):
    with open(mpath) as f:
      manifest = json.load(f)
  entries = list(cfg.domains) or [d["domain"] for d in (manifest or {}).get("domains", [])]
  if not entries:
    raise ConfigError(f"local corpus {cfg.name!r}: no domains. Prepare it with `python -m "
                      f"doremi_jax.prepare --corpus {cfg.name} --data_dir {cfg.data_dir} "
                      "--domain NAME=GLOB ...` or list LocalCorpusConfig.domains.")
  prepared = {d["domain"]: d for d in (manifest or {}).get("domains", [])}
  identity = packing.vocabulary_identity(cfg.vocabulary, vocab)
  names, tasks, sizes, bpt, openers = [], [], [], [], []
  for entry in entries:
    ratio = None
    name, _, source = entry.partition("=")
    if source.startswith("tfrecord:"):
      train_glob, _, val_glob = source[len("tfrecord:"):].partition("|")
      split_map = {"train": train_glob, "validation": val_glob or train_glob}
      for split, pattern in split_map.items():
        if not glob.glob(pattern):
          raise ConfigError(f"domain {name!r}: no TFRecord files match {pattern!r} ({split}).")
      src = seqio.TFExampleDataSource(
          split_map, {cfg.text_feature: tf.io.FixedLenFeature([], tf.string)})
      ratio = bytes_per_token(split_map["validation"], cfg.text_feature, vocab)
      size = sum(os.path.getsize(p) for p in glob.glob(train_glob)) / (ratio or 1.0)
    elif source.startswith("tfds:"):
      tfds_name = source[len("tfds:"):]
      src = seqio.TfdsDataSource(tfds_name, tfds_data_dir=cfg.data_dir)
      try:
        size = src.num_input_examples("train")
      except Exception as e:  # tfds raises several types for a missing dataset
        raise ConfigError(f"domain {name!r}: TFDS dataset {tfds_name!r} is not prepared in "
                          f"{cfg.data_dir!r} ({type(e).__name__}: {e}).") from e
      if not size:
        raise ConfigError(f"domain {name!r}: TFDS dataset {tfds_name!r} has no train examples.")
    elif not source:
      if name not in prepared:
        raise ConfigError(
            f"domain {name!r} is not in the prepared corpus {cfg.name!r} "
            f"({mpath}: {sorted(prepared) if prepared else 'no manifest'}). Prepare it with "
            "`python -m doremi_jax.prepare`, or fix LocalCorpusConfig.domains.")
      d = prepared[name]
      base = domain_dir(cfg.data_dir, d)
      split_map = {s: os.path.join(base, f"{BUILDER_NAME}-{s}.tfrecord*")
                   for s in ("train", "validation")}
      for split, pattern in split_map.items():
        if not glob.glob(pattern):
          raise ConfigError(f"domain {name!r}: the prepared {split} files are missing "
                            f"({pattern}); re-run `python -m doremi_jax.prepare` for this "
                            f"data dir ({cfg.data_dir}).")
      src = seqio.TFExampleDataSource(
          split_map, {"text": tf.io.FixedLenFeature([], tf.string)})
      ratio = bytes_per_token(split_map["validation"], "text", vocab)
      size = d.get("train_bytes", d["bytes"]) / (ratio or 1.0)
      openers.append(functools.partial(packing.open_source, name, base, identity))
    else:  # (LocalCorpusConfig.__post_init__ already rejects these)
      raise ConfigError(f"domain entry {entry!r}: use {_ENTRY_FORMS}.")
    task = f"doremi_local_{sanitize(cfg.name)}_{sanitize(name)}"
    key = cfg.text_feature if source else "text"
    pre = [functools.partial(seqio.preprocessors.rekey, key_map={"targets": key}),
           seqio.preprocessors.tokenize, seqio.preprocessors.append_eos, _chunk]
    register_task(task, source=src, preprocessors=pre,
                  output_features={"targets": seqio.Feature(vocab, add_eos=True)},
                  shuffle_buffer_size=10_000)
    names.append(name)
    tasks.append(task)
    sizes.append(max(int(round(size)), 1))
    bpt.append(ratio)
  return Corpus(name=f"local_{sanitize(cfg.name)}", domains=tuple(names),
                task_names=tuple(tasks), vocabulary=vocab, train_tokens=tuple(sizes),
                bytes_per_token=tuple(bpt) if any(r is not None for r in bpt) else None,
                packed=tuple(openers) if len(openers) == len(names) else None)
