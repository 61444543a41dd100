"""seqio interoperability (imports seqio, hence TensorFlow): our TF-free
vocabularies give seqio's ids, and the corpus's seqio Tasks and Mixtures
hold its data with the rates training samples with."""

import numpy as np
import pytest
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import synthetic
from doremi_jax.data import synthetic_tasks
from doremi_jax.data import weights as weights_lib
from doremi_jax import export_mixture as ex


# The export's test mixture (as in tests/unit/export_test.py)
WEIGHTS = {"noise": 0.05, "repeat": 0.00001, "markov": 0.3, "arithmetic": 0.25,
           "sort": 0.39999}
INFO = {"stage": "main", "corpus": "synthetic_ab12cd34", "domains": list(WEIGHTS),
        "train_tokens": [1000, 2000, 3000, 4000, 5000], "num_steps": 10,
        "tokens_per_step": 500}


@pytest.fixture(scope="module")
def corpus():
  return synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=64))


def _sentencepiece_model(tmp_path):
  import sentencepiece as spm
  text = tmp_path / "text.txt"
  text.write_text("\n".join(f"the cat {i} sat on the mat, naïve café {i * 7}" for i in range(300)))
  spm.SentencePieceTrainer.train(
      input=str(text), model_prefix=str(tmp_path / "m"), vocab_size=320, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, hard_vocab_limit=False,
      minloglevel=2)
  return str(tmp_path / "m.model")


def test_vocabularies_give_seqio_ids_and_run_info(corpus, tmp_path):
  """Our TF-free vocabularies encode, decode and describe themselves as the
  seqio vocabularies of the same name do (run_info stays comparable)."""
  import seqio
  from doremi_jax import rundir
  from doremi_jax.data import vocab as vocab_lib
  spm_file = _sentencepiece_model(tmp_path)
  cases = [(vocab_lib.ByteVocabulary(), seqio.ByteVocabulary(),
            ["naïve café ☕ 42", "", "a\nb"]),
           (corpus.vocabulary, corpus.vocabulary.seqio_vocabulary(),
            ["1 2 3 + 4 5 6 = 9 7 5 0 ;", "a b | </s> t7"]),
           (vocab_lib.SentencePieceVocabulary(spm_file), seqio.SentencePieceVocabulary(spm_file),
            ["the cat 12 sat", "naïve café ☕ zq", ""])]
  for ours, theirs, texts in cases:
    assert rundir.describe_vocabulary(ours) == rundir.describe_vocabulary(theirs)
    assert (ours.vocab_size, ours.eos_id, ours.pad_id, ours.unk_id) == (
        theirs.vocab_size, theirs.eos_id, theirs.pad_id, theirs.unk_id)
    for t in texts:
      ids = list(theirs.encode(t))
      assert ours.encode(t) == ids and ours.encode(t.encode()) == ids
      past = [theirs.vocab_size + 3] if theirs.unk_id is not None else []   # read as UNK
      for probe in (ids, ids + [1, 5, 6], [0] + ids + past):
        assert ours.decode(probe) == theirs.decode(probe), (type(ours).__name__, probe)
    assert isinstance(ours.seqio_vocabulary(), seqio.Vocabulary)
    assert ours.seqio_vocabulary() is ours.seqio_vocabulary()
  assert rundir.describe_vocabulary(cases[2][0])["sentencepiece_model_file"] == spm_file
  assert [rundir.describe_vocabulary(c[0])["class"] for c in cases] == [
      "ByteVocabulary", "SyntheticVocabulary", "SentencePieceVocabulary"]


def test_seqio_tasks_and_mixture(corpus):
  import seqio
  assert len(corpus.task_names) == 5
  weights = [1, 0, 1, 0, 2]
  name = corpus_lib.register_mixture("test_mix", corpus, weights)   # and the Tasks
  mix = seqio.get_mixture_or_task(name)
  got = [mix.get_rate(seqio.get_mixture_or_task(t)) for t in corpus.task_names]
  # the rates training samples with are exactly what seqio's Mixture reports
  want = corpus_lib.mixture_rates(weights)
  assert want.dtype == np.float64 and want.tobytes() == np.array(got, np.float64).tobytes()
  w = weights_lib.resolve_weights("proportional", corpus)
  corpus_lib.register_mixture("test_mix", corpus, w)
  mix = seqio.get_mixture_or_task("test_mix")
  assert corpus_lib.mixture_rates(w).tobytes() == np.array(
      [mix.get_rate(seqio.get_mixture_or_task(t)) for t in corpus.task_names]).tobytes()
  ds = mix.get_dataset({"targets": 64}, split="validation", shuffle=False)
  ex = next(ds.as_numpy_iterator())
  assert ex["targets"].shape == (64,)
  # the Tasks hold the corpus's own sequences
  task = seqio.get_mixture_or_task(corpus.task_names[2])
  first = next(task.get_dataset({"targets": 64}, split="validation",
                                shuffle=False).as_numpy_iterator())["targets"]
  np.testing.assert_array_equal(first, synthetic.generate("markov", 512, 64, 0, "validation")[0])
  # in a process that has imported seqio, building a corpus registers its Tasks
  fresh = synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=8))
  assert set(fresh.task_names) <= set(seqio.TaskRegistry.names())


def test_seqio_module_registers_the_mixture():
  import seqio
  from doremi_jax.data import synthetic, synthetic_tasks
  from doremi_jax.data import corpus as corpus_lib
  corpus = synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=32))
  assert corpus_lib.register_tasks(corpus)   # what a stage's register_mixture does
  info = dict(INFO, corpus=corpus.name)
  text = ex.render("seqio", WEIGHTS, {}, None, "w.json", info, {}, {}, "exported_mix")
  scope = {}
  exec(compile(text, "exported.py", "exec"), scope)   # pylint: disable=exec-used
  assert scope["TASKS"] == dict(zip(corpus.domains, corpus.task_names))
  mix = scope["register"]()
  rates = [mix.get_rate(seqio.get_mixture_or_task(t)) for t in corpus.task_names]
  np.testing.assert_allclose(rates, [WEIGHTS[d] for d in corpus.domains])
