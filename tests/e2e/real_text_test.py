"""bench/real_text.py builds a real-text corpus (through TFDS) that
gin/study_realtext.gin reads with both vocabularies."""

import os
import subprocess
import sys
import gin
import numpy as np
from doremi_jax.data.registry import get_corpus
from doremi_jax.stages import study
from helpers import REPO, configure


def _parse(gin_file, *bindings):
  configure(bindings, [gin_file])


def _arms(workdir):
  """The config's arms, made and checked as the study makes them."""
  return study.make_arms(gin.query_parameter("train_study.arms"), str(workdir))


def test_real_text_script_builds_a_corpus_the_study_config_reads(tmp_path):
  out = tmp_path / "realtext"
  env = dict(os.environ, XLA_FLAGS="")
  r = subprocess.run([sys.executable, "bench/real_text.py", "--out", str(out), "--max_bytes",
                      "60000", "--hex_bytes", "30000", "--max_doc_chars", "1500",
                      "--spm_vocab", "1000", "--validation_fraction", "0.25"],
                     cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  domains = ("python", "man_en", "man_intl", "changelog", "license", "hex")
  ratios = {}
  for vocab in ("byte", str(out / "spm_1000.model")):
    _parse("gin/study_realtext.gin", f"LocalCorpusConfig.data_dir = '{out}'",
           f"LocalCorpusConfig.vocabulary = '{vocab}'")
    corpus = get_corpus()
    assert corpus.domains == domains
    ratios[vocab] = np.array(corpus.bytes_per_token)
    for arm in _arms(tmp_path / "study"):
      if arm.static:
        assert abs(arm.rates(1).sum() - 1) < 1e-12
  # a vocabulary smaller than the sample's characters: a clear error, exit 2
  r = subprocess.run([sys.executable, "-m", "doremi_jax.tokenizer", "--corpus=realtext",
                      f"--data_dir={out}", "--vocab_size=100", f"--output={tmp_path / 'x'}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "error: SentencePiece could not train on this sample" in r.stderr
  assert np.all(ratios["byte"] < 1.0)                       # a token per byte, plus EOS
  assert np.all(ratios[str(out / "spm_1000.model")] > ratios["byte"])
