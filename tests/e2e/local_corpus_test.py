"""Bring-your-own domains: real text files in three formats, a TFDS dataset
and TFRecord files, prepared offline, tokenized with both vocabularies, all
three stages."""

import collections
import gzip
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from doremi_jax.data import local_prepare
from helpers import REPO, run_cli, run_cli_many

WORDS = ("the of and to in is was for on that with as by at from his her it an were are "
         "which this be or had not but").split()


def _write_raw(root):
  rnd = random.Random(0)
  (root / "wiki").mkdir()
  with gzip.open(root / "wiki" / "part0.jsonl.gz", "wt") as f:
    for i in range(150):
      f.write(json.dumps({"id": i, "text": " ".join(rnd.choice(WORDS) for _ in range(50))}) + "\n")
  (root / "code").mkdir()
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": [f"def f{i}(x):\n    return x * {i} + {i % 7}\n"
                                    for i in range(150)]}), root / "code" / "c.parquet")
  (root / "books").mkdir()
  for i in range(40):
    (root / "books" / f"b{i}.txt").write_text(
        f"Chapter {i}. " + " ".join(rnd.choice(WORDS) for _ in range(150)))


def _prepare(args):
  env = dict(os.environ, XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "doremi_jax.prepare", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("byod")
  _write_raw(root)
  data = root / "data"
  r = _prepare(["--corpus=byod", f"--data_dir={data}", "--seq_len=64",
                f"--domain=wiki={root}/wiki/*.jsonl.gz", f"--domain=code={root}/code",
                f"--domain=books={root}/books/*.txt"])
  assert r.returncode == 0, r.stderr[-3000:]
  return root, data, r.stdout


def test_prepare_summary_and_manifest(prepared):
  root, data, out = prepared
  assert "documents" in out and "wiki" in out and "manifest" in out
  m = json.loads((data / "doremi_corpora" / "byod.json").read_text())
  docs = {d["domain"]: d for d in m["domains"]}
  assert [d["documents"] for d in m["domains"]] == [150, 150, 40]
  for d in docs.values():
    assert 0 < d["validation_documents"] < d["documents"]
    assert not os.path.isabs(d["path"])   # relative: the data dir can move
    assert os.path.isdir(local_prepare.domain_dir(str(data), d))


def tfds_docs(path, split):
  """The documents of a prepared domain's split, read straight from its files."""
  import glob as glob_lib
  import tensorflow as tf
  spec = {"text": tf.io.FixedLenFeature([], tf.string)}
  files = sorted(glob_lib.glob(os.path.join(path, f"*-{split}.tfrecord*")))
  return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, spec).items()}
          for r in tf.data.TFRecordDataset(files)]


def _corpus(data, vocabulary="byte"):
  from doremi_jax.data import local_tasks
  return local_tasks.local_corpus(local_tasks.LocalCorpusConfig(
      name="byod", data_dir=str(data), vocabulary=vocabulary))


def _pack(data, vocab_spec, seq_len=64):
  """Packs every prepared domain of `data` for `vocab_spec`, in process (what
  `prepare --vocabulary --seq_len` adds)."""
  from doremi_jax.data import local_tasks, pack_prepare
  vocab = local_tasks.make_vocabulary(vocab_spec)
  for d in json.loads((data / "doremi_corpora" / "byod.json").read_text())["domains"]:
    files = local_prepare.expand(d["pattern"], d["domain"])
    sizes = {"train": d["train_bytes"], "validation": d["bytes"] - d["train_bytes"]}
    pack_prepare.pack_domain(d["domain"], files, local_prepare.domain_dir(str(data), d),
                             vocab_spec, vocab, seq_len, split_bytes=sizes)


def test_seqio_tasks_tokenize_with_both_vocabularies(prepared, tmp_path):
  import shutil
  import seqio
  from doremi_jax.data import corpus as corpus_lib
  from doremi_jax.data import packing
  from doremi_jax import tokenizer
  spm_model = tokenizer.train("byod", str(prepared[1]), 300, 100_000, str(tmp_path / "spm"))
  data = tmp_path / "data"    # a copy, packed for the SentencePiece model too
  shutil.copytree(prepared[1], data)
  _pack(data, spm_model)
  for vocab in ("byte", spm_model):
    corpus = _corpus(data, vocab)
    assert corpus.domains == ("wiki", "code", "books")
    assert corpus_lib.register_tasks(corpus)
    task = seqio.get_mixture_or_task(corpus.task_names[1])
    exs = list(task.get_dataset({"targets": 32}, split="train", shuffle=False)
               .take(3).as_numpy_iterator())
    assert all(len(e["targets"]) == 32 for e in exs)
    text = corpus.vocabulary.decode(np.concatenate([e["targets"] for e in exs]).tolist())
    assert "return x *" in text, text
    # documents are separated by EOS in the chunked stream
    assert corpus.vocabulary.eos_id in np.concatenate([e["targets"] for e in exs])
    # train sizes are the packing's train tokens; bytes per token its
    # validation text over its validation tokens (EOS counted), both
    # recomputed here from the text
    m = json.loads((data / "doremi_corpora" / "byod.json").read_text())
    seqio_vocab = corpus.vocabulary.seqio_vocabulary()
    for d, size, ratio in zip(m["domains"], corpus.train_tokens, corpus.bytes_per_token):
      base = local_prepare.domain_dir(str(data), d)
      texts = {split: [ex["text"].decode() for ex in tfds_docs(base, split)]
               for split in ("train", "validation")}
      count = lambda docs: sum(len(seqio_vocab.encode(t)) + 1 for t in docs)
      val = texts["validation"]
      np.testing.assert_allclose(ratio, sum(len(t.encode()) for t in val) / count(val),
                                 rtol=1e-12)
      assert size == count(texts["train"])
      identity = packing.vocabulary_identity(vocab, corpus.vocabulary)
      assert size == packing.read_meta(d["domain"], base, identity, 64)[1]["splits"]["train"][
          "tokens"]
      if vocab == "byte":
        assert ratio < 1.0      # one token per byte, plus EOS
      else:
        assert ratio > 1.0      # a SentencePiece token often spans several bytes
  name = corpus_lib.register_mixture("byod_mix", corpus, [0.5, 0.25, 0.25])
  ds = seqio.get_mixture_or_task(name).get_dataset({"targets": 32}, split="validation",
                                                 shuffle=False)
  assert next(ds.as_numpy_iterator())["targets"].shape == (32,)


STAGE = ["--gin_file=gin/models/tiny.gin", "--gin.get_corpus.name='local'",
         "--gin.LocalCorpusConfig.name='byod'", "--gin.TrainConfig.num_steps=12",
         "--gin.TrainConfig.global_batch_size=12", "--gin.TrainConfig.seq_len=64",
         "--gin.TrainConfig.log_every=4", "--gin.TrainConfig.eval_examples_per_domain=8"]


def test_three_stages_end_to_end(prepared, tmp_path):
  _, data, _ = prepared
  base = STAGE + [f"--gin.LocalCorpusConfig.data_dir='{data}'"]
  ref = run_cli(base + ["--gin.run.stage='reference'"], workdir=tmp_path / "ref")
  assert ref.returncode == 0, ref.stderr[-3000:]
  prx = run_cli(base + ["--gin.run.stage='proxy'",
                        f"--gin.train_proxy.reference_dir='{tmp_path / 'ref'}'"],
                workdir=tmp_path / "proxy")
  assert prx.returncode == 0, prx.stderr[-3000:]
  w = json.loads((tmp_path / "proxy" / "average_domain_weights.json").read_text())
  assert list(w) == ["wiki", "code", "books"] and abs(sum(w.values()) - 1) < 1e-5
  main = run_cli(base + ["--gin.run.stage='main'",
                         f"--gin.train_main_model.weights='{tmp_path / 'proxy'}'"],
                 workdir=tmp_path / "main")
  assert main.returncode == 0, main.stderr[-3000:]
  used = json.loads((tmp_path / "main" / "main_weights.json").read_text())
  assert used == pytest.approx(w, rel=1e-6)
  info = json.loads((tmp_path / "main" / "run_info.json").read_text())
  assert info["tokenizer"]["class"] == "ByteVocabulary"
  # The weights exported for Grain read the packed shards and mix the domains.
  from doremi_jax import export_mixture as ex
  source, weights = ex.find_weights(str(tmp_path / "main"))
  info, run_path = ex.find_info(str(tmp_path / "main"))
  packed = ex.packed_files(info, run_path)
  assert sorted(packed) == ["books", "code", "wiki"]
  text = ex.render("grain", weights, {}, None, source, info, {}, packed, "m")
  scope = {}
  exec(compile(text, "grain_mix.py", "exec"), scope)   # pylint: disable=exec-used
  mixed = scope["mixture"](seed=0)
  rows = [mixed[i] for i in range(30)]
  assert all(r["targets"].shape == r["segment_ids"].shape == (64,) for r in rows)
  assert all(r["segment_ids"][0] == 1 and (r["targets"][r["segment_ids"] == 0] == 0).all()
             for r in rows)


def test_sentencepiece_reference_rejects_byte_proxy(prepared, tmp_path):
  _, data, _ = prepared
  from doremi_jax import tokenizer
  spm_model = tokenizer.train("byod", str(data), 300, 100_000, str(tmp_path / "spm"))
  base = STAGE + [f"--gin.LocalCorpusConfig.data_dir='{data}'"]
  ref = run_cli(base + ["--gin.run.stage='reference'",
                        f"--gin.LocalCorpusConfig.vocabulary='{spm_model}'"],
                workdir=tmp_path / "ref")
  # Packed for the byte vocabulary only: refused, nothing written.
  assert ref.returncode == 2, ref.stderr[-3000:]
  assert ("domain 'wiki' is not packed for a SentencePiece model" in ref.stderr and
          "prepared: the byte vocabulary at length 64" in ref.stderr), ref.stderr[-2000:]
  assert not (tmp_path / "ref").exists() or not any((tmp_path / "ref").iterdir())
  root = data.parent
  r = _prepare(["--corpus=byod", f"--data_dir={data}", "--seq_len=64",
                f"--vocabulary={spm_model}", f"--domain=wiki={root}/wiki/*.jsonl.gz",
                f"--domain=code={root}/code", f"--domain=books={root}/books/*.txt"])
  assert r.returncode == 0, r.stderr[-3000:]
  ref = run_cli(base + ["--gin.run.stage='reference'",
                        f"--gin.LocalCorpusConfig.vocabulary='{spm_model}'"],
                workdir=tmp_path / "ref")
  assert ref.returncode == 0, ref.stderr[-3000:]
  info = json.loads((tmp_path / "ref" / "run_info.json").read_text())
  assert info["tokenizer"]["class"] == "SentencePieceVocabulary"
  assert len(info["tokenizer"]["sentencepiece_sha256"]) == 64
  prx = run_cli(base + ["--gin.run.stage='proxy'",
                        f"--gin.train_proxy.reference_dir='{tmp_path / 'ref'}'"],
                workdir=tmp_path / "proxy")
  assert prx.returncode == 2 and "must share the tokenizer" in prx.stderr, prx.stderr[-2000:]


def test_prepare_errors_name_the_file_or_domain(prepared, tmp_path):
  root, data, _ = prepared
  manifest = (data / "doremi_corpora" / "byod.json").read_text()
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": broken\n')
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "e.txt").write_text("   \n")
  cases = [
      (f"--domain=wiki={bad}", f"{bad}:2 is not valid JSON"),
      (f"--domain=empty={empty}", "domain 'empty'"),
      (f"--domain=gone={tmp_path}/nothing/*.jsonl", "no files match"),
  ]
  for domain, message in cases:
    r = _prepare(["--corpus=byod", f"--data_dir={data}", domain])
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr, r.stderr[-2000:]
  assert (data / "doremi_corpora" / "byod.json").read_text() == manifest


def test_unknown_or_unprepared_local_domain(prepared, tmp_path):
  _, data, _ = prepared
  base = STAGE + [f"--gin.LocalCorpusConfig.data_dir='{data}'", "--gin.run.stage='reference'"]
  unknown, unprepared = run_cli_many([
      (base + ["--gin.LocalCorpusConfig.domains=('wiki', 'news')"], tmp_path / "r1"),
      (base + ["--gin.LocalCorpusConfig.domains=('wiki', 'news=tfds:my_news:1.0.0')"],
       tmp_path / "r2")])
  assert unknown.returncode == 2, unknown.stderr
  assert "'news' is not in the prepared corpus" in unknown.stderr, unknown.stderr
  # never a silent path: exit 2 with the prepare command that makes it trainable
  assert unprepared.returncode == 2 and "Traceback" not in unprepared.stderr, unprepared.stderr
  assert ("error: LocalCorpusConfig.domains entry 'news=tfds:my_news:1.0.0': tfds domains are "
          "read only once they are prepared") in unprepared.stderr, unprepared.stderr
  assert (f"python -m doremi_jax.prepare --corpus byod --data_dir {data} --domain "
          "news=tfds:my_news:1.0.0 --text_field text") in unprepared.stderr, unprepared.stderr


def _records(root):
  """A small TFDS dataset (train and validation splits, text feature
  'content') in root/tfds and TFRecord files of tf.train.Example with the
  same feature; {source: {split: documents}}."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  rnd = random.Random(1)
  docs = {kind: {s: [f"{kind} {s} {i}: " + " ".join(rnd.choice(WORDS) for _ in range(i % 23))
                     for i in range(n)] for s, n in (("train", 60), ("validation", 12))}
          for kind in ("news", "forum")}
  tfds.dataset_builders.store_as_tfds_dataset(
      name="tiny_news", version="1.0.0",
      features=tfds.features.FeaturesDict({"content": tfds.features.Text()}),
      split_datasets={s: tf.data.Dataset.from_tensor_slices({"content": d})
                      for s, d in docs["news"].items()},
      data_dir=str(root / "tfds"), disable_shuffling=True)
  for s, split_docs in docs["forum"].items():
    with tf.io.TFRecordWriter(str(root / f"forum-{s}.tfrecord")) as w:
      for d in split_docs:
        w.write(tf.train.Example(features=tf.train.Features(feature={"content": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[d.encode()]))})).SerializeToString())
  return docs


def test_prepare_takes_tfds_and_tfrecord_domains(tmp_path):
  """`prepare --domain NAME=tfds:...` and `NAME=tfrecord:TRAIN|VAL` write
  prepared domains like text files do: the splits given, packed rows that
  are exactly the documents packed in order with seqio's token ids, sizes
  from the packing; a corpus lists them by name."""
  import seqio
  from doremi_jax.data import loader as loader_lib
  from doremi_jax.data import local_tasks, packing
  docs = _records(tmp_path)
  data = tmp_path / "data"
  r = _prepare(["--corpus=recs", f"--data_dir={data}", f"--tfds_data_dir={tmp_path / 'tfds'}",
                "--text_field=content", "--seq_len=32", "--domain=news=tfds:tiny_news:1.0.0",
                f"--domain=forum=tfrecord:{tmp_path}/forum-train*|{tmp_path}/forum-val*"])
  assert r.returncode == 0, r.stderr[-3000:]
  m = {d["domain"]: d for d in json.loads((data / "doremi_corpora" / "recs.json").read_text())[
      "domains"]}
  assert m["news"]["pattern"] == "tfds:tiny_news:1.0.0"
  corpus = local_tasks.local_corpus(local_tasks.LocalCorpusConfig(name="recs",
                                                                  data_dir=str(data)))
  assert corpus.domains == ("news", "forum") and corpus.vocabulary.vocab_size == 259
  byte = seqio.ByteVocabulary()
  for i, (name, src) in enumerate(zip(corpus.domains, loader_lib.open_sources(corpus, "train",
                                                                              32))):
    assert m[name]["documents"] == 72 and m[name]["validation_documents"] == 12
    want = [np.asarray(list(byte.encode(d)) + [byte.eos_id], np.int32)
            for d in docs[name]["train"]]
    rows = list(packing.pack_documents(want, 32))    # one shard: packed in input order
    t, g = src.read(np.arange(len(src)))
    np.testing.assert_array_equal(t, np.stack([x[0] for x in rows]))
    np.testing.assert_array_equal(g, np.stack([x[1] for x in rows]))
    assert corpus.train_tokens[i] == sum(len(w) for w in want)
  # the validation documents, halved by hash into tune and test, each whole once
  for i, name in enumerate(corpus.domains):
    held = {s: _segments(loader_lib.open_sources(corpus, s, 32)[i]) for s in ("tune", "test")}
    assert held["tune"] and held["test"] and not set(held["tune"]) & set(held["test"])
    want = collections.Counter(p for d in docs[name]["validation"]
                               for p in _pieces(list(byte.encode(d)) + [byte.eos_id], 32))
    assert held["tune"] + held["test"] == want
  # One TFRecord glob is split by hash, like text files (in process, as Beam
  # workers would read it).
  from doremi_jax.data import pack_prepare
  units = local_prepare.expand(f"tfrecord:{tmp_path}/forum-*.tfrecord", "mixed")
  assert [u.split for u in units] == [None, None]
  got = {}
  for split, _, _, _, doc in pack_prepare.documents(units, "content", "file", "mixed", 0.5):
    got.setdefault(split, []).append(doc)
  held_out = got["tune"] + got["test"]   # the validation documents, halved by hash
  assert sorted(got["train"] + held_out) == sorted(
      docs["forum"]["train"] + docs["forum"]["validation"])
  assert 10 < len(held_out) < 62


def test_prepare_refuses_unreadable_records(tmp_path):
  _records(tmp_path)
  data = tmp_path / "data"
  cases = [
      (["--text_field=body", "--domain=news=tfds:tiny_news:1.0.0"],
       "TFDS dataset 'tiny_news:1.0.0' has no feature 'body'"),
      (["--text_field=content", "--domain=x=tfds:no_such_dataset:1.0.0"],
       "TFDS dataset 'no_such_dataset:1.0.0' is not prepared in"),
      (["--text_field=body", f"--domain=forum=tfrecord:{tmp_path}/forum-*"],
       "has no bytes feature 'body'; set --text_field"),
      (["--domain=forum=tfrecord:/nowhere/*.tfrecord"], "no TFRecord files match"),
  ]
  for args, message in cases:
    r = _prepare(["--corpus=recs", f"--data_dir={data}", f"--tfds_data_dir={tmp_path / 'tfds'}",
                  "--seq_len=32", *args])
    assert r.returncode == 2 and message in r.stderr, (args, r.stderr[-2000:])
    assert "Traceback" not in r.stderr


def _pieces(tokens, seq_len):
  return [tuple(tokens[i:i + seq_len]) for i in range(0, len(tokens), seq_len)]


def _segments(src):
  """Counter of the documents (token tuples) in a row source's rows."""
  import collections
  t, g = src.read(np.arange(len(src)))
  return collections.Counter(tuple(row[seg == j]) for row, seg in zip(t, g)
                             for j in range(1, seg.max() + 1))


def test_packed_rows_are_the_documents_tokenized_on_the_fly(prepared):
  """Every packed row holds whole documents (or L-token pieces of longer
  ones) tokenized exactly as seqio's Task tokenizes the same text."""
  from doremi_jax.data import loader as loader_lib
  _, data, _ = prepared
  corpus = _corpus(data)
  m = json.loads((data / "doremi_corpora" / "byod.json").read_text())
  for split, packed_splits in (("train", ("train",)), ("validation", ("tune", "test"))):
    sources = [loader_lib.open_sources(corpus, s, 64) for s in packed_splits]
    for i, d in enumerate(m["domains"]):
      got = sum((_segments(s[i]) for s in sources), collections.Counter())
      vocab = corpus.vocabulary.seqio_vocabulary()   # seqio's own ids
      want = collections.Counter(
          p for ex in tfds_docs(local_prepare.domain_dir(str(data), d), split)
          for p in _pieces(list(vocab.encode(ex["text"].decode())) + [vocab.eos_id], 64))
      assert got == want, d["domain"]


def test_missing_or_truncated_shards_and_other_lengths_are_refused(prepared, tmp_path):
  import shutil
  from doremi_jax.config import ConfigError
  from doremi_jax.data import loader as loader_lib
  _, data, _ = prepared
  copy = tmp_path / "data"
  shutil.copytree(data, copy)
  corpus = _corpus(copy)
  with pytest.raises(ConfigError, match="not packed for the byte vocabulary at sequence "
                                        "length 32 .prepared: the byte vocabulary at length 64"):
    loader_lib.open_sources(corpus, "train", 32)
  shard = sorted((copy).glob("**/packed/byte_L64/train.array_record-*"))[0]
  with open(shard, "r+b") as f:
    f.truncate(shard.stat().st_size // 2)
  with pytest.raises(ConfigError, match="truncated or replaced"):
    loader_lib.open_sources(corpus, "train", 64)
  shard.unlink()
  with pytest.raises(ConfigError, match="is missing"):
    loader_lib.open_sources(corpus, "train", 64)
  # Through the command line: exit 2, and the run directory is left as it was.
  work = tmp_path / "run"
  work.mkdir()
  (work / "notes.txt").write_text("keep")
  r = run_cli(STAGE + [f"--gin.LocalCorpusConfig.data_dir='{copy}'",
                       "--gin.run.stage='reference'"], workdir=work)
  assert r.returncode == 2 and "error: domain" in r.stderr and "is missing" in r.stderr, \
      r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_beam_preparation_equals_the_local_one(prepared, tmp_path):
  """The Beam pipeline (DirectRunner) writes the local path's files, byte
  for byte, for several shards."""
  from doremi_jax.data import beam_prepare, local_tasks, pack_prepare
  root, _, _ = prepared
  files = local_prepare.expand(f"{root}/wiki/*.jsonl.gz", "wiki") + local_prepare.expand(
      f"{root}/books/*.txt", "books")
  vocab = local_tasks.make_vocabulary("byte")
  sizes = {"train": 1, "validation": 1}
  args = ("mixed", files, None, "byte", vocab, 48, "text", "file", 0.1, 3, sizes)
  outs = {}
  for name, fn, extra in (("local", pack_prepare.pack_domain, {}),
                          ("beam", beam_prepare.pack_domain,
                           {"beam_options": "--runner=DirectRunner"})):
    base = tmp_path / name
    got = fn(*args[:2], str(base), *args[3:], **extra)
    d = base / "packed" / "byte_L48"
    outs[name] = (got, {p.name: p.read_bytes() for p in sorted(d.iterdir())})
  assert outs["beam"][0] == outs["local"][0]
  assert outs["beam"][1].keys() == outs["local"][1].keys()
  assert len([n for n in outs["local"][1] if n.startswith("train.")]) == 3
  for name, content in outs["local"][1].items():
    assert outs["beam"][1][name] == content, name


def test_prepare_with_beam_writes_what_the_local_prepare_writes(prepared, tmp_path):
  """`prepare --beam_options=--runner=DirectRunner`: the text (TFDS through
  Beam) holds the same documents per split, and the packed shards are the
  same bytes, as the local preparation of the same files."""
  root, data, _ = prepared
  beam_data = tmp_path / "data"
  r = _prepare(["--corpus=byod", f"--data_dir={beam_data}", "--seq_len=64",
                "--beam_options=--runner=DirectRunner", f"--domain=wiki={root}/wiki/*.jsonl.gz",
                f"--domain=books={root}/books/*.txt"])
  assert r.returncode == 0, r.stderr[-3000:]
  local = {d["domain"]: d for d in json.loads((data / "doremi_corpora" / "byod.json")
                                              .read_text())["domains"]}
  for d in json.loads((beam_data / "doremi_corpora" / "byod.json").read_text())["domains"]:
    mine, theirs = local_prepare.domain_dir(str(beam_data), d), local_prepare.domain_dir(
        str(data), local[d["domain"]])
    for split in ("train", "validation"):
      assert sorted(x["text"] for x in tfds_docs(mine, split)) == sorted(
          x["text"] for x in tfds_docs(theirs, split))
    packed = os.path.join("packed", "byte_L64")
    names = sorted(os.listdir(os.path.join(theirs, packed)))
    assert sorted(os.listdir(os.path.join(mine, packed))) == names
    for name in names:
      with open(os.path.join(mine, packed, name), "rb") as a, \
          open(os.path.join(theirs, packed, name), "rb") as b:
        assert a.read() == b.read(), (d["domain"], name)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name=""), "LocalCorpusConfig.name must be a non-empty string, got ''."),
    (dict(name="!!!"), "'!!!' has no usable characters"),
    (dict(data_dir=""), "LocalCorpusConfig.data_dir must be a non-empty string, got ''."),
    (dict(vocabulary=""), "LocalCorpusConfig.vocabulary must be a non-empty string"),
    (dict(text_feature=None), "LocalCorpusConfig.text_feature must be a non-empty string, "
     "got None."),
    (dict(domains="wiki"), "LocalCorpusConfig.domains must be a tuple of strings"),
    (dict(domains=("wiki", "code", "wiki")), "names \\['wiki'\\] more than once"),
    (dict(domains=("Wiki-EN", "wiki_en")), "names \\['wiki_en'\\] more than once"),
    (dict(domains=("=tfds:x",)), "entry '=tfds:x' has no domain name"),
    (dict(domains=("x=hdfs:/a/*",)), "entry 'x=hdfs:/a/\\*': use 'NAME', a domain prepared by"),
    (dict(domains=("x=tfrecord:",)), "entry 'x=tfrecord:': use 'NAME'"),
    # never a silent path: the command that makes the entry trainable
    (dict(name="byod", data_dir="d", domains=("wiki", "news=tfds:my_news/en:1.0.0")),
     "entry 'news=tfds:my_news/en:1.0.0': tfds domains are read only once they are prepared "
     ".tokenized and packed.. Run `python -m doremi_jax.prepare --corpus byod --data_dir d "
     "--domain news=tfds:my_news/en:1.0.0 --text_field text --vocabulary byte --seq_len "
     "SEQ_LEN` .SEQ_LEN: the runs' TrainConfig.seq_len., then list the domain as 'news'."),
    (dict(text_feature="body", domains=("f=tfrecord:/d/train-*|/d/val-*",)),
     "tfrecord domains are read only once.*--domain 'f=tfrecord:/d/train-\\*\\|/d/val-\\*' "
     "--text_field body"),
])
def test_local_config_rejects_what_cannot_work(kwargs, message):
  from doremi_jax.config import ConfigError
  from doremi_jax.data import local_tasks
  with pytest.raises(ConfigError, match=message):
    local_tasks.LocalCorpusConfig(**kwargs)


def test_local_corpus_checks_data_dir_and_vocabulary(tmp_path):
  import gin
  from doremi_jax.config import ConfigError
  from doremi_jax.data import local_prepare, local_tasks, registry
  cfg = lambda **kw: local_tasks.LocalCorpusConfig(**{"name": "byod", **kw})
  assert cfg(domains=["a"]).domains == ("a",)
  with pytest.raises(ConfigError, match="LocalCorpusConfig.data_dir '.*missing' does not exist"):
    local_tasks.local_corpus(cfg(data_dir=str(tmp_path / "missing")))
  with pytest.raises(ConfigError, match="tfrecord domains are read only once they are prepared"):
    cfg(data_dir=str(tmp_path / "missing"), domains=(f"x=tfrecord:{tmp_path}/*.tfrecord",))
  with pytest.raises(ConfigError, match="SentencePiece model '.*nope.model' does not exist"):
    local_tasks.local_corpus(cfg(data_dir=str(tmp_path), vocabulary=str(tmp_path / "nope.model")))
  with pytest.raises(ConfigError, match="SentencePiece model .* does not exist"):
    local_tasks.local_corpus(cfg(data_dir=str(tmp_path), vocabulary=str(tmp_path)))
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(ConfigError, match="garbage.model' is not a SentencePiece model"):
    local_tasks.local_corpus(cfg(data_dir=str(tmp_path), vocabulary=str(garbage)))
  with pytest.raises(ConfigError, match="local corpus 'byod': no domains"):
    local_tasks.local_corpus(cfg(data_dir=str(tmp_path)))
  assert local_prepare.sanitize("My Corpus!") == "my_corpus"
  assert local_prepare.manifest_path(str(tmp_path), "My Corpus!") == str(
      tmp_path / "doremi_corpora" / "my_corpus.json")
  # through gin, as a run reads it
  gin.bind_parameter("get_corpus.name", "local")
  gin.bind_parameter("LocalCorpusConfig.data_dir", str(tmp_path / "missing"))
  with pytest.raises(ConfigError, match="LocalCorpusConfig.data_dir"):
    registry.get_corpus()
  gin.bind_parameter("LocalCorpusConfig.data_dir", str(tmp_path))
  gin.bind_parameter("LocalCorpusConfig.name", "")
  with pytest.raises(ConfigError, match="LocalCorpusConfig.name must be a non-empty string"):
    registry.get_corpus()
