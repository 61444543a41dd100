r"""Train a SentencePiece tokenizer on a sample balanced across domains.

  python -m doremi_jax.tokenizer --corpus mycorpus --data_dir data \
      --vocab_size 32000 --chars_per_domain 20000000 --output data/spm32k

writes `data/spm32k.model`, which `prepare --vocabulary` and
`LocalCorpusConfig.vocabulary` load (`data.vocab.SentencePieceVocabulary`,
seqio's ids). Every domain contributes the same
number of characters (or all it has, if fewer), so a large domain does not
dominate the vocabulary. Ids follow seqio: pad 0, EOS 1, UNK 2, no BOS.
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import flags

from doremi_jax.cli import load_tensorflow_quietly, run_tool
from doremi_jax.config import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus", "local", "Corpus name (as given to doremi_jax.prepare).")
flags.DEFINE_string("data_dir", "data", "TFDS data dir the corpus was prepared into.")
flags.DEFINE_integer("vocab_size", 32000, "Vocabulary size.")
flags.DEFINE_integer("chars_per_domain", 5_000_000, "Characters sampled from each domain.")
flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe", "char", "word"],
                  "SentencePiece model type.")
flags.DEFINE_string("output", None, "Output prefix; writes OUTPUT.model and OUTPUT.vocab.")


def balanced_sample(corpus: str, data_dir: str, chars_per_domain: int) -> dict:
  """{domain: [documents]} from each domain's train split, in file order."""
  import tensorflow as tf
  from doremi_jax.data import local_prepare
  mpath = local_prepare.manifest_path(data_dir, corpus)
  if not os.path.exists(mpath):
    raise ConfigError(f"no prepared corpus {corpus!r} in {data_dir!r} ({mpath} is missing); "
                      "run `python -m doremi_jax.prepare` first.")
  with open(mpath) as f:
    domains = json.load(f)["domains"]
  out = {}
  for d in domains:
    files = tf.io.gfile.glob(os.path.join(local_prepare.domain_dir(data_dir, d), f"{local_prepare.BUILDER_NAME}-train.tfrecord*"))
    ds = tf.data.TFRecordDataset(sorted(files)).map(
        lambda r: tf.io.parse_single_example(r, {"text": tf.io.FixedLenFeature([], tf.string)}))
    docs, n = [], 0
    for ex in ds.as_numpy_iterator():
      text = ex["text"].decode("utf-8", errors="replace")
      docs.append(text[:chars_per_domain - n])
      n += len(docs[-1])
      if n >= chars_per_domain:
        break
    out[d["domain"]] = docs
  return out


def train(corpus, data_dir, vocab_size, chars_per_domain, output, model_type="unigram") -> str:
  import sentencepiece as spm
  sample = balanced_sample(corpus, data_dir, chars_per_domain)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
    for docs in sample.values():
      for doc in docs:
        for line in doc.splitlines():
          if line.strip():
            f.write(line + "\n")
    path = f.name
  try:
    spm.SentencePieceTrainer.train(
        input=path, model_prefix=output, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.9995,
        byte_fallback=True, hard_vocab_limit=False, num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:   # SentencePiece reports bad settings as RuntimeError
    raise ConfigError(f"SentencePiece could not train on this sample: "
                      f"{str(e).split('] ')[-1]} (change --vocab_size)") from e
  finally:
    os.unlink(path)
  for d, docs in sample.items():
    print(f"[tokenizer] {d}: {sum(len(x) for x in docs)} characters from {len(docs)} documents")
  print(f"[tokenizer] wrote {output}.model", flush=True)
  return output + ".model"


def main(argv):
  del argv
  load_tensorflow_quietly()
  from doremi_jax.config import ConfigError, check_number
  if not FLAGS.output:
    raise ConfigError("--output is required (an output path prefix).")
  check_number("--vocab_size", FLAGS.vocab_size, integer=True, low=3)
  check_number("--chars_per_domain", FLAGS.chars_per_domain, integer=True, low=0, low_open=True)
  train(FLAGS.corpus, FLAGS.data_dir, FLAGS.vocab_size, FLAGS.chars_per_domain, FLAGS.output,
        FLAGS.model_type)


if __name__ == "__main__":
  run_tool(main)
