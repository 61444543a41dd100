"""Local multi-domain corpora: the domains `python -m doremi_jax.prepare`
wrote, read as packed rows by index.

The `local` corpus (`get_corpus.name = 'local'`, `LocalCorpusConfig`) lists
prepared domains. `prepare` takes text files, TFDS datasets
(`NAME=tfds:DATASET[/CONFIG][:VERSION]`) and TFRecord files of
tf.train.Example (`NAME=tfrecord:TRAIN_GLOB[|VAL_GLOB]`) alike: it writes
each domain's text once (a TFDS dataset in the data dir, see
`local_prepare`) and tokenizes and packs it for a vocabulary and a sequence
length (`pack_prepare`, `packing`). Training reads only the packed rows, and
a domain's size (train tokens) and bytes per token are those its packing's
meta.json records. A `tfds:` or `tfrecord:` entry in
`LocalCorpusConfig.domains` is refused with the `prepare` command that
makes it trainable.

Each domain's seqio Task (read text, tokenize, append EOS, concatenate and
chunk into sequences of the training length) reads the prepared text; it is
registered only when seqio is wanted (`corpus.register_tasks`), which is
where seqio and TensorFlow are imported.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
from typing import Optional

import gin
from etils import epath

from doremi_jax.config import ConfigError
from doremi_jax.data import packing
from doremi_jax.data.corpus import Corpus, register_task, with_tasks_where_seqio_is_loaded
from doremi_jax.data.local_prepare import BUILDER_NAME, domain_dir, manifest_path, sanitize
from doremi_jax.data.vocab import ByteVocabulary, SentencePieceVocabulary

_SOURCE_KINDS = ("tfds:", "tfrecord:")
_ENTRY_FORMS = "'NAME', a domain prepared by `python -m doremi_jax.prepare`"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LocalCorpusConfig:
  """A corpus prepared by `python -m doremi_jax.prepare`.

  domains: () for every domain in the manifest, or the names of prepared
    domains ("NAME"). Text files, TFDS datasets and TFRecord files all
    become prepared domains through `prepare --domain NAME=SOURCE`; an entry
    "NAME=tfds:..." or "NAME=tfrecord:..." is refused with the command that
    prepares it. A domain's size (what 'proportional' weights and the
    repetition checks use) is the train tokens of its packing for
    `vocabulary` (meta.json).
  vocabulary: 'byte' (seqio's ByteVocabulary ids) or the path of a
    SentencePiece .model file (see `python -m doremi_jax.tokenizer`).
  text_feature: the text feature of TFDS / TFRecord sources, only named in
    the `prepare` command (`--text_field`) a "NAME=tfds:..." entry's error
    gives.

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
      if sep:
        raise ConfigError(self.unprepared(entry))
      keys.append(sanitize(name))
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
      raise ConfigError(f"LocalCorpusConfig.domains names {repeated} more than once (names are "
                        "compared in lower case with punctuation as '_'); give each domain "
                        "a distinct name.")
    object.__setattr__(self, "domains", domains)

  def unprepared(self, entry: str) -> str:
    """The error for a "NAME=SOURCE" entry: training reads only prepared
    domains; the `prepare` command that makes this one trainable."""
    name, _, source = entry.partition("=")
    if not (source.startswith(_SOURCE_KINDS) and source.partition(":")[2].strip("|").strip()):
      return (f"LocalCorpusConfig.domains entry {entry!r}: use {_ENTRY_FORMS} (text files, "
              "TFDS datasets and TFRecord files: `prepare --domain NAME=GLOB`, "
              "`NAME=tfds:DATASET[/CONFIG][:VERSION]` or `NAME=tfrecord:TRAIN_GLOB[|VAL_GLOB]`).")
    vocab = shlex.quote(self.vocabulary)
    return (f"LocalCorpusConfig.domains entry {entry!r}: {source.partition(':')[0]} domains are "
            "read only once they are prepared (tokenized and packed). Run `python -m "
            f"doremi_jax.prepare --corpus {shlex.quote(self.name)} --data_dir "
            f"{shlex.quote(self.data_dir)} --domain {shlex.quote(entry)} --text_field "
            f"{shlex.quote(self.text_feature)} --vocabulary {vocab} --seq_len SEQ_LEN` (SEQ_LEN: "
            f"the runs' TrainConfig.seq_len), then list the domain as {name!r}.")


def make_vocabulary(spec: str):
  """`vocab.ByteVocabulary` for 'byte', else the SentencePiece model at
  `spec` (loaded here, so a missing or broken file fails before any domain
  is read)."""
  if spec == "byte":
    return ByteVocabulary()
  if not os.path.isfile(spec):
    raise ConfigError(f"LocalCorpusConfig.vocabulary: SentencePiece model {spec!r} does not "
                      "exist; train one with `python -m doremi_jax.tokenizer` or use 'byte'.")
  vocab = SentencePieceVocabulary(os.path.abspath(spec))
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
  shorter)."""
  import tensorflow as tf
  del output_features
  length = sequence_length["targets"]
  tokens = dataset.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(ex["targets"]))
  return tokens.batch(length).map(lambda t: {"targets": t})


def text_files(base: str) -> dict:
  """{split: glob} of a prepared domain's text (TFDS TFRecord files)."""
  return {s: os.path.join(base, f"{BUILDER_NAME}-{s}.tfrecord*") for s in ("train", "validation")}


def register_seqio_tasks(seqio, vocab, task_names: tuple, text: tuple):
  """Registers the seqio Task of every domain (`Corpus.seqio_tasks`): its
  prepared text, tokenized, EOS appended, concatenated and chunked."""
  import tensorflow as tf
  feature = seqio.Feature(vocab.seqio_vocabulary(), add_eos=True)
  for task, split_map in zip(task_names, text):
    src = seqio.TFExampleDataSource(split_map, {"text": tf.io.FixedLenFeature([], tf.string)})
    pre = [functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
           seqio.preprocessors.tokenize, seqio.preprocessors.append_eos, _chunk]
    register_task(task, source=src, preprocessors=pre, output_features={"targets": feature},
                  shuffle_buffer_size=10_000)


def packed_meta(name: str, base: str, identity: dict) -> dict:
  """The meta.json of a packing of the domain for `identity` (any sequence
  length: its token counts and bytes per token do not depend on it)."""
  lengths = sorted(n for v, n in packing.available(base) if v == identity)
  if not lengths:
    raise packing.not_packed(name, base, identity)
  return packing.read_meta(name, base, identity, lengths[0])[1]


def local_corpus(cfg: Optional[LocalCorpusConfig] = None) -> Corpus:
  """The Corpus of a prepared local corpus: its domains' packed rows, with
  each domain's train tokens and bytes per token from its packing's meta."""
  cfg = cfg or LocalCorpusConfig()
  if not epath.Path(cfg.data_dir).is_dir():
    raise ConfigError(f"LocalCorpusConfig.data_dir {cfg.data_dir!r} does not exist or is not a "
                      "directory; set it to the --data_dir given to `python -m "
                      "doremi_jax.prepare`.")
  vocab = make_vocabulary(cfg.vocabulary)
  mpath = manifest_path(cfg.data_dir, cfg.name)
  manifest = None
  if os.path.exists(mpath):
    with open(mpath) as f:
      manifest = json.load(f)
  prepared = {d["domain"]: d for d in (manifest or {}).get("domains", [])}
  entries = list(cfg.domains) or list(prepared)
  if not entries:
    raise ConfigError(f"local corpus {cfg.name!r}: no domains. Prepare it with `python -m "
                      f"doremi_jax.prepare --corpus {cfg.name} --data_dir {cfg.data_dir} "
                      "--domain NAME=GLOB ...` or list LocalCorpusConfig.domains.")
  identity = packing.vocabulary_identity(cfg.vocabulary, vocab)
  sizes, bpt, openers, text = [], [], [], []
  for name in entries:
    if name not in prepared:
      raise ConfigError(
          f"domain {name!r} is not in the prepared corpus {cfg.name!r} "
          f"({mpath}: {sorted(prepared) if prepared else 'no manifest'}). Prepare it with "
          "`python -m doremi_jax.prepare`, or fix LocalCorpusConfig.domains.")
    base = domain_dir(cfg.data_dir, prepared[name])
    meta = packed_meta(name, base, identity)
    sizes.append(max(int(meta["splits"]["train"]["tokens"]), 1))
    bpt.append(meta.get("bytes_per_token"))
    openers.append(functools.partial(packing.open_source, name, base, identity))
    text.append(text_files(base))
  tasks = tuple(f"doremi_local_{sanitize(cfg.name)}_{sanitize(n)}" for n in entries)
  return with_tasks_where_seqio_is_loaded(Corpus(
      name=f"local_{sanitize(cfg.name)}", domains=tuple(entries), task_names=tasks,
      vocabulary=vocab, train_tokens=tuple(sizes),
      bytes_per_token=tuple(bpt) if any(r is not None for r in bpt) else None,
      packed=tuple(openers),
      seqio_tasks=functools.partial(register_seqio_tasks, vocab=vocab, task_names=tasks,
                                    text=tuple(text))))
