"""Local multi-domain corpora, fully offline: preparation.

`python -m doremi_jax.prepare --domain NAME=SOURCE [...] --data_dir DIR`
reads each domain's documents and prepares one TFDS dataset per domain in
DIR (`doremi_local_corpus/<corpus>_<domain>/1.0.0`, TFRecord files of its
text), with a train/validation split. A SOURCE is

* a file, a directory or a glob of plain text (one document per file, or
  per line with `--text_format=lines`), JSONL / JSONL.gz (a configurable
  text field) and Parquet files: documents are split by a hash of file
  name and document index;
* `tfrecord:TRAIN_GLOB[|VAL_GLOB]`: TFRecord files of tf.train.Example with
  a bytes text feature (`--text_field`); the two globs give the splits,
  one glob is split by hash like text files;
* `tfds:DATASET[/CONFIG][:VERSION]`: a TFDS dataset already prepared in the
  TFDS data dir, with a text feature; its train and validation splits, or
  its train split split by hash when it has no validation split.

Records (`Records`) stand beside file paths in the lists of a domain's
inputs, so every reading path (text, counts, packing; locally or with Beam)
reads them the same way (`split_documents`). A manifest
`DIR/doremi_corpora/<corpus>.json` lists the domains and their document
and byte counts.

`pack_prepare` tokenizes and packs what this module reads; `local_tasks`
serves the prepared corpus. TensorFlow and TFDS are imported inside the
functions that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import gzip
import hashlib
import json
import os
import re
from typing import Iterator, Optional

from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import packing

BUILDER_NAME = "doremi_local_corpus"
VERSION = "1.0.0"


def sanitize(name: str) -> str:
  """Lower-case letters, digits and underscores only: the form of a name in
  TFDS config names, seqio task names and the manifest file name."""
  s = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
  if not s:
    raise ConfigError(f"domain/corpus name {name!r} has no usable characters; use letters, "
                      "digits and underscores.")
  return s


def config_name(corpus: str, domain: str) -> str:
  return f"{sanitize(corpus)}__{sanitize(domain)}"


@dataclasses.dataclass(frozen=True)
class Records:
  """Documents stored as records: one TFRecord file of tf.train.Example
  (kind 'tfrecord', `path` the file) or one split (`tfds_split`) of a TFDS
  dataset (kind 'tfds', `path` its name, in `data_dir`). `split` is the
  split its documents go to; None: by hash, as for text files."""
  kind: str
  path: str
  split: Optional[str] = None
  tfds_split: Optional[str] = None
  data_dir: Optional[str] = None

  def __str__(self):
    return f"{self.kind}:{self.path}" + (f"[{self.tfds_split}]" if self.tfds_split else "")


def unit_name(unit) -> str:
  """The name that keys a domain input's documents (their split and shard
  hashes): a file's base name."""
  return os.path.basename(unit.path if isinstance(unit, Records) else unit)


def expand(pattern: str, domain: str, tfds_data_dir: Optional[str] = None,
           text_field: str = "text") -> list:
  """A domain's inputs: the files of a path or glob, or `Records` of a
  `tfrecord:` or `tfds:` source (`tfds_data_dir`: where its TFDS datasets
  are prepared)."""
  if pattern.startswith("tfrecord:"):
    train, _, val = pattern[len("tfrecord:"):].partition("|")
    globs = {"train": train, "validation": val} if val else {None: train}
    out = []
    for split, g in globs.items():
      files = sorted(f for f in glob.glob(os.path.expanduser(g)) if os.path.isfile(f))
      if not files:
        raise ConfigError(f"domain {domain!r}: no TFRecord files match {g!r}"
                          f"{f' ({split})' if split else ''}.")
      out += [Records("tfrecord", f, split) for f in files]
    return out
  if pattern.startswith("tfds:"):
    return tfds_inputs(pattern[len("tfds:"):], domain, tfds_data_dir, text_field)
  files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
  if os.path.isdir(os.path.expanduser(pattern)):
    d = os.path.expanduser(pattern)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs)
  files = [f for f in files if os.path.isfile(f)]
  if not files:
    raise ConfigError(f"domain {domain!r}: no files match {pattern!r} (missing path?).")
  return files


def _tfds_builder(name: str, domain: str, data_dir: Optional[str]):
  """The TFDS builder of a prepared dataset, read from its files (no
  generation code needed; this module's own builder class needs files)."""
  from tensorflow_datasets.core import read_only_builder
  corpus_lib.disable_tfds_gcs()
  try:
    return read_only_builder.builder_from_files(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for a missing dataset
    raise ConfigError(f"domain {domain!r}: TFDS dataset {name!r} is not prepared in "
                      f"{data_dir!r} ({type(e).__name__}: {e}); prepare it there with TFDS or "
                      "set --tfds_data_dir.") from e


def tfds_inputs(name: str, domain: str, data_dir: Optional[str], text_field: str) -> list:
  """`Records` of a TFDS dataset's train and validation splits (its train
  split alone, split by hash, when it has no validation split)."""
  builder = _tfds_builder(name, domain, data_dir)
  splits = set(builder.info.splits.keys())
  if not builder.info.splits.total_num_examples or "train" not in splits:
    raise ConfigError(f"domain {domain!r}: TFDS dataset {name!r} is not prepared in "
                      f"{data_dir!r} or has no train split (splits: {sorted(splits)}).")
  if text_field not in builder.info.features:
    raise ConfigError(f"domain {domain!r}: TFDS dataset {name!r} has no feature "
                      f"{text_field!r} (features: {sorted(builder.info.features)}); set "
                      "--text_field.")
  if "validation" not in splits:
    return [Records("tfds", name, None, "train", data_dir)]
  return [Records("tfds", name, s, s, data_dir) for s in ("train", "validation")]


def read_records(unit: Records, text_field: str, domain: str) -> Iterator[str]:
  """Yields the text of every record of `unit` (empty texts left out, as
  in text files)."""
  if unit.kind == "tfds":
    import tensorflow_datasets as tfds
    builder = _tfds_builder(unit.path, domain, unit.data_dir)
    ds = builder.as_dataset(split=unit.tfds_split, shuffle_files=False)
    texts = (ex[text_field] for ex in tfds.as_numpy(ds))
  else:
    import tensorflow as tf

    def texts_of(path):
      for i, raw in enumerate(tf.data.TFRecordDataset([path]).as_numpy_iterator()):
        value = tf.train.Example.FromString(raw).features.feature.get(text_field)
        if value is None or not value.bytes_list.value:
          raise ConfigError(f"domain {domain!r}: record {i} of {path} has no bytes feature "
                            f"{text_field!r}; set --text_field to the feature that holds "
                            "the text.")
        yield value.bytes_list.value[0]
    texts = texts_of(unit.path)
  for t in texts:
    t = t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
    if t.strip():
      yield t


def read_documents(path: str, text_field: str = "text", text_format: str = "file",
                   domain: str = "?") -> Iterator[str]:
  """Yields the documents of one domain input (a file, format from its
  name, or `Records`)."""
  if isinstance(path, Records):
    yield from read_records(path, text_field, domain)
    return
  name = path.lower()
  if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ConfigError(f"domain {domain!r}: {path}:{lineno} is not valid JSON ({e.msg}); "
                            "fix or remove that line.") from e
        if not isinstance(obj, dict) or text_field not in obj:
          raise ConfigError(f"domain {domain!r}: {path}:{lineno} has no {text_field!r} field; "
                            "set --text_field to the field that holds the text.")
        yield str(obj[text_field])
  elif name.endswith(".parquet"):
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    if text_field not in table.column_names:
      raise ConfigError(f"domain {domain!r}: {path} has no column {text_field!r} (columns: "
                        f"{table.column_names}); set --text_field.")
    for v in table.column(text_field).to_pylist():
      if v is not None:
        yield str(v)
  else:
    with open(path, encoding="utf-8", errors="replace") as f:
      if text_format == "lines":
        for line in f:
          if line.strip():
            yield line.rstrip("\n")
      else:
        text = f.read()
        if text.strip():
          yield text


def document_key(path, index: int) -> str:
  """A document's identity (its input's name and its index there): what
  every split and shard hash reads."""
  return f"{unit_name(path)}:{index}"


def is_validation(path, index: int, fraction: float) -> bool:
  h = hashlib.sha1(document_key(path, index).encode()).digest()
  return int.from_bytes(h[:8], "big") / 2**64 < fraction


def packed_split(split: str, path, index: int) -> str:
  """The packed split of a document that `split_documents` put in `split`:
  train stays train, validation becomes tune or test (`packing.eval_split`)."""
  return split if split == packing.TRAIN else packing.eval_split(document_key(path, index))


def split_documents(path, text_field: str, text_format: str, fraction: float,
                    domain: str) -> Iterator[tuple]:
  """(index, split, text) of one domain input's documents: the one reading
  every preparation path shares (text, counts, packing; locally or with
  Beam). `Records` with a split keep it."""
  fixed = path.split if isinstance(path, Records) else None
  for i, doc in enumerate(read_documents(path, text_field, text_format, domain)):
    split = fixed or ("validation" if is_validation(path, i, fraction) else "train")
    yield i, split, doc


@functools.lru_cache(maxsize=None)
def _builder_class():
  import tensorflow_datasets as tfds

  class DoremiLocalCorpus(tfds.core.GeneratorBasedBuilder):
    """One domain of a local corpus (configured per domain)."""
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, files, text_field, text_format, validation_fraction, domain,
                 beam=False, **kw):
      self._files, self._text_field = files, text_field
      self._text_format, self._frac, self._domain = text_format, validation_fraction, domain
      self._beam = beam
      super().__init__(**kw)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=f"domain {self._domain}",
                                   features=tfds.features.FeaturesDict(
                                       {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples("train"),
              "validation": self._generate_examples("validation")}

    def _generate_examples(self, split):
      if self._beam:   # the same examples, read by a Beam pipeline (TFDS runs it)
        import apache_beam as beam
        return (beam.Create(list(self._files))
                | beam.FlatMap(_split_examples, split, self._text_field, self._text_format,
                               self._frac, self._domain))
      return (ex for path in self._files for ex in _split_examples(
          path, split, self._text_field, self._text_format, self._frac, self._domain))

  DoremiLocalCorpus.name = BUILDER_NAME
  return DoremiLocalCorpus


def _split_examples(path, split, text_field, text_format, fraction, domain):
  """(key, example) of one file's documents in `split`."""
  for i, s, doc in split_documents(path, text_field, text_format, fraction, domain):
    if s == split:
      yield f"{path}:{i}", {"text": doc}


def prepare_domain(corpus: str, domain: str, pattern: str, data_dir: str, text_field="text",
                   text_format="file", validation_fraction=0.05, beam_options=None,
                   tfds_data_dir=None) -> dict:
  """Prepares one domain into `data_dir`; returns its summary. With
  `beam_options` TFDS writes the text through an Apache Beam pipeline run
  with them. `tfds_data_dir` (default `data_dir`) holds a `tfds:` source."""
  import tensorflow_datasets as tfds
  corpus_lib.disable_tfds_gcs()
  files = expand(pattern, domain, tfds_data_dir or data_dir, text_field)
  # Validate and count before writing anything (a corrupt line fails here).
  n_docs, n_bytes, n_val, train_bytes = 0, 0, 0, 0
  held_out = {packing.TUNE: 0, packing.TEST: 0}
  for path in files:
    for i, split, doc in split_documents(path, text_field, text_format, validation_fraction,
                                         domain):
      n_docs += 1
      size = len(doc.encode("utf-8"))
      n_bytes += size
      if split == "validation":
        n_val += 1
        held_out[packed_split(split, path, i)] += 1
      else:
        train_bytes += size
  if n_docs == 0:
    raise ConfigError(f"domain {domain!r}: the files matching {pattern!r} hold no documents "
                      "(empty domain).")
  if n_val == 0 or n_val == n_docs:
    raise ConfigError(f"domain {domain!r}: {n_docs} documents give an empty "
                      f"{'validation' if n_val == 0 else 'train'} split at "
                      f"validation_fraction={validation_fraction}; add documents or change it.")
  empty = [s for s, n in held_out.items() if n == 0]
  if empty:
    raise ConfigError(f"domain {domain!r}: its {n_val} validation documents give an empty "
                      f"{empty[0]!r} split (they are halved by hash into 'tune', what methods "
                      "adapt to, and 'test', what is reported); raise --validation_fraction "
                      "or add documents.")
  cls = _builder_class()
  builder = cls(files=files, text_field=text_field, text_format=text_format,
                validation_fraction=validation_fraction, domain=domain,
                beam=beam_options is not None,
                config=tfds.core.BuilderConfig(name=config_name(corpus, domain)),
                data_dir=data_dir, file_format="tfrecord")
  extra = {}
  if beam_options is not None:
    import shlex
    from apache_beam.options.pipeline_options import PipelineOptions
    extra["beam_options"] = PipelineOptions(shlex.split(beam_options))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, **extra))
  return {"domain": domain, "pattern": pattern, "files": len(files), "documents": n_docs,
          "validation_documents": n_val, "bytes": n_bytes, "train_bytes": train_bytes,
          "tfds_name": f"{BUILDER_NAME}/{config_name(corpus, domain)}:{VERSION}",
          "path": os.path.relpath(builder.data_dir, data_dir)}


def domain_dir(data_dir: str, entry: dict) -> str:
  """A prepared domain's directory: the manifest records it relative to the
  data dir (so the data dir can be moved or copied); older manifests hold an
  absolute path."""
  return os.path.join(data_dir, entry["path"])   # an absolute path stays as it is


def manifest_path(data_dir: str, corpus: str) -> str:
  """`DATA_DIR/doremi_corpora/<corpus>.json`: the domains `prepare` wrote
  (name, source pattern, document/byte counts, TFDS path)."""
  return os.path.join(data_dir, "doremi_corpora", f"{sanitize(corpus)}.json")
