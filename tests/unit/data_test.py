import ast
import dataclasses
import json
import math

import gin
import numpy as np
import pytest

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import registry
from doremi_jax.data import synthetic
from doremi_jax.data import synthetic_tasks
from doremi_jax.data import weights as weights_lib


@pytest.fixture(scope="module")
def corpus():
  return synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=64))


def test_synthetic_deterministic_and_split_disjoint():
  a = synthetic.generate("markov", 16, 64, 0, "train")
  b = synthetic.generate("markov", 16, 64, 0, "train")
  c = synthetic.generate("markov", 16, 64, 0, "validation")
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, synthetic.generate("markov", 16, 64, 1, "train"))


def test_synthetic_structure():
  names = synthetic.token_names()
  text = " ".join(names[i] for i in synthetic.generate("arithmetic", 1, 26, 0, "train")[0])
  problems = [p.strip() for p in text.split(";") if p.strip()]
  for p in problems[:2]:
    a, rest = p.split("+")
    b, c = rest.split("=")
    a, b = int(a.replace(" ", "")), int(b.replace(" ", ""))
    assert int(c.replace(" ", "")[::-1]) == a + b
  s = synthetic.generate("sort", 4, 18, 0, "train")
  np.testing.assert_array_equal(np.sort(s[:, :8], axis=1), s[:, 9:17])
  r = synthetic.generate("repeat", 4, 32, 0, "train")
  np.testing.assert_array_equal(r[:, :4], r[:, 4:8])


def test_entropy_floors_match_empirical_estimates():
  # noise: empirical entropy of the uniform distribution over 126 ids.
  assert synthetic.entropy_floor("noise", 64) == pytest.approx(math.log(126))
  # markov: plug-in conditional entropy from a large sample ≈ exact value.
  x = synthetic.generate("markov", 4000, 64, 0, "train") - synthetic.MARKOV_LO
  counts = np.zeros((64, 64))
  np.add.at(counts, (x[:, :-1].ravel(), x[:, 1:].ravel()), 1)
  p = counts / counts.sum(1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    h_rows = -np.nansum(np.where(p > 0, p * np.log(p), 0), axis=1)
  h_rate = (counts.sum(1) / counts.sum() * h_rows).sum()
  _, probs, pi = synthetic.markov_chain(0)
  exact_rate = -(pi[:, None] * probs * np.log(probs)).sum()
  assert h_rate == pytest.approx(exact_rate, rel=0.02)
  assert 0 < synthetic.entropy_floor("repeat", 64) < synthetic.entropy_floor("markov", 64) \
      < synthetic.entropy_floor("noise", 64)


def test_vocabulary_roundtrip(corpus):
  v = corpus.vocabulary
  ids = v.encode("1 2 3 + 4 5 6 = 9 7 5 0 ;")
  assert v.decode(ids) == "1 2 3 + 4 5 6 = 9 7 5 0 ;"
  assert v.vocab_size == 128 and v.eos_id == 1 and v.pad_id == 0
  with pytest.raises(ValueError, match="not a token of the synthetic vocabulary"):
    v.encode("a b nope")


def test_resolve_weights(corpus):
  np.testing.assert_allclose(weights_lib.resolve_weights("uniform", corpus), 0.2)
  prop = weights_lib.resolve_weights("proportional", corpus)
  np.testing.assert_allclose(prop, np.array(corpus.train_tokens) / sum(corpus.train_tokens))
  w = weights_lib.resolve_weights({"noise": 1, "repeat": 1, "markov": 2, "arithmetic": 0,
                                   "sort": 0}, corpus)
  np.testing.assert_allclose(w, [0.25, 0.25, 0.5, 0, 0])
  full = {d: 1.0 for d in corpus.domains}
  with pytest.raises(ConfigError, match="unknown domains \\['wiki'\\]"):
    weights_lib.resolve_weights({**full, "wiki": 1.0}, corpus)
  with pytest.raises(ConfigError, match="missing domains \\['sort'\\]"):
    weights_lib.resolve_weights({d: 1.0 for d in corpus.domains[:-1]}, corpus)
  with pytest.raises(ConfigError, match="non-negative.*markov"):
    weights_lib.resolve_weights({**full, "markov": -0.5}, corpus)
  with pytest.raises(ConfigError, match="NaN"):
    weights_lib.resolve_weights({**full, "markov": float("nan")}, corpus)
  with pytest.raises(ConfigError, match="all weights are zero"):
    weights_lib.resolve_weights([0, 0, 0, 0, 0], corpus)
  with pytest.raises(ConfigError, match="got 3 weights for 5 domains"):
    weights_lib.resolve_weights([1, 2, 3], corpus)


def _pile_corpus():
  domains = tuple(weights_lib.PILE_BASELINE)
  return corpus_lib.Corpus(name="pile", domains=domains, task_names=domains, vocabulary=None,
                           train_tokens=(1,) * len(domains))


def test_resolve_weights_presets_files_and_run_dirs(corpus, tmp_path):
  pile = _pile_corpus()
  for name, table in weights_lib.PRESETS.items():
    w = weights_lib.resolve_weights(name, pile, "w")
    assert w.dtype == np.float64 and w.shape == (22,)
    expected = np.array([table[d] for d in pile.domains])
    np.testing.assert_allclose(w, expected / expected.sum())
  with pytest.raises(ConfigError, match="unknown domains.*Pile-CC"):
    weights_lib.resolve_weights("pile_baseline", corpus)
  # a {domain: weight} JSON file, keys in any order
  table = {"sort": 4, "noise": 0, "repeat": 1, "markov": 2, "arithmetic": 3}
  path = tmp_path / "w.json"
  path.write_text(json.dumps(table))
  np.testing.assert_allclose(weights_lib.resolve_weights(str(path), corpus, "w"),
                             [0, 0.1, 0.2, 0.3, 0.4])
  # a Step 2 run directory: its average_domain_weights.json
  run = tmp_path / "proxy_run"
  run.mkdir()
  (run / "average_domain_weights.json").write_text(json.dumps({d: 1.0 for d in corpus.domains}))
  np.testing.assert_allclose(weights_lib.resolve_weights(str(run), corpus, "w"), 0.2)
  presets = "\\(uniform, proportional, pile_baseline, pile_doremi_280m\\)"
  with pytest.raises(ConfigError, match=f"my.weights: .*neither a preset {presets}.*does not exist"):
    weights_lib.resolve_weights(str(tmp_path / "nope.json"), corpus, "my.weights")
  with pytest.raises(ConfigError, match="does not exist"):
    weights_lib.resolve_weights(str(tmp_path), corpus, "w")  # a directory without the file
  with pytest.raises(ConfigError, match="neither a preset"):
    weights_lib.resolve_weights("pile_basline", corpus, "w")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ConfigError, match="not valid JSON"):
    weights_lib.resolve_weights(str(bad), corpus, "w")
  bad.write_text("[1, 2, 3, 4, 5]")
  with pytest.raises(ConfigError, match="must hold a JSON object"):
    weights_lib.resolve_weights(str(bad), corpus, "w")
  bad.write_text(json.dumps({**table, "sort": "lots"}))
  with pytest.raises(ConfigError, match="cannot read .* as weights"):
    weights_lib.resolve_weights(str(bad), corpus, "w")


def test_as_dict(corpus):
  w = weights_lib.resolve_weights("proportional", corpus)
  d = weights_lib.as_dict(corpus.domains, w)
  assert list(d) == list(corpus.domains) and all(type(x) is float for x in d.values())
  np.testing.assert_allclose(weights_lib.resolve_weights(d, corpus), w)
  with pytest.raises(ValueError, match="3 weights for 5 domains"):
    weights_lib.as_dict(corpus.domains, [1, 2, 3])


def test_stratified_assignment_exact_counts():
  a = loader_lib.StratifiedAssignment(5, seed=0)
  for step in range(20):
    ids = a(step, 23)
    counts = np.bincount(ids, minlength=5)
    assert counts.min() == 4 and counts.max() == 5 and counts.sum() == 23
  # the remainder rotates: over 5 steps every domain gets the same total.
  total = sum(np.bincount(a(s, 23), minlength=5) for s in range(5))
  assert len(set(total.tolist())) == 1
  with pytest.raises(ConfigError, match="smaller than the number of domains"):
    a(0, 4)


@pytest.mark.parametrize("k,batch", [(5, 64), (5, 23), (6, 30), (7, 8), (3, 3), (4, 10)])
def test_stratified_rows_are_equal_over_any_k_consecutive_steps(k, batch):
  """Stratified batches equalise rows per domain: exactly in every batch
  when k divides the batch; otherwise a batch is equal to one row (64 rows,
  5 domains: 13/13/13/13/12) and any k consecutive steps, from any step,
  give every domain exactly `batch` rows."""
  a = loader_lib.StratifiedAssignment(k, seed=3)
  per_step = [np.bincount(a(s, batch), minlength=k) for s in range(40)]
  for s in range(40 - k + 1):
    np.testing.assert_array_equal(sum(per_step[s:s + k]), np.full(k, batch), err_msg=str(s))
  for counts in per_step:
    assert counts.max() - counts.min() == (0 if batch % k == 0 else 1)
  if (k, batch) == (5, 64):
    assert sorted(per_step[0].tolist()) == [12, 13, 13, 13, 13]


def test_mixture_assignment_frequencies():
  rates = np.array([0.5, 0.1, 0.2, 0.2, 0.0])
  a = loader_lib.MixtureAssignment(rates, seed=3)
  ids = np.concatenate([a(s, 64) for s in range(200)])
  freq = np.bincount(ids, minlength=5) / len(ids)
  np.testing.assert_allclose(freq, rates, atol=0.02)
  np.testing.assert_array_equal(a(7, 64), loader_lib.MixtureAssignment(rates, 3)(7, 64))


def _take(loader, n):
  out = [loader.next() for _ in range(n)]
  loader.close()
  return out


@pytest.mark.parametrize("nproc", [1, 2])
def test_loader_resume_is_exact(corpus, nproc):
  assign = loader_lib.MixtureAssignment([0.3, 0.1, 0.2, 0.2, 0.2], seed=1)
  for pid in range(nproc):
    mk = lambda start, pos: loader_lib.BatchLoader(
        corpus, assign, 16, 64, seed=5, start_step=start, positions=pos,
        process_index=pid, process_count=nproc)
    full = _take(mk(0, None), 6)
    resumed = _take(mk(3, np.asarray(full[2][1]["positions"])), 3)
    replayed = _take(mk(3, None), 3)
    for (b1, s1), (b2, s2), (b3, _) in zip(full[3:], resumed, replayed):
      for key in ("targets", "segment_ids", "domain_ids"):
        np.testing.assert_array_equal(b1[key], b2[key])
        np.testing.assert_array_equal(b1[key], b3[key])
      assert s1 == s2
    b, _ = full[0]
    assert b["targets"].shape == b["segment_ids"].shape == (16 // nproc, 64)
    # rows really come from the domain they are labelled with
    for row, d in zip(b["targets"], b["domain_ids"]):
      if corpus.domains[d] == "repeat":
        np.testing.assert_array_equal(row[:4], row[4:8])


class _Recording:
  """A row source that records the rows read through it."""

  def __init__(self, source, log):
    self.source, self.log = source, log
    self.seq_len = source.seq_len

  def __len__(self):
    return len(self.source)

  @property
  def bytes_read(self):
    return self.source.bytes_read

  def read(self, rows):
    self.log.extend(np.asarray(rows).tolist())
    return self.source.read(rows)


def _recording(corpus):
  logs = [[] for _ in corpus.domains]
  opens = tuple((lambda split, n, o=o, log=log: _Recording(o(split, n), log))
                for o, log in zip(corpus.packed, logs))
  return dataclasses.replace(corpus, packed=opens), logs


def test_two_hosts_read_disjoint_rows_and_give_the_single_process_batches(corpus):
  """Each of 2 hosts reads only its own rows (disjoint),
  the 2 hosts' slices put together are exactly the 1-process batch, step
  after step, and a position saved by 2 hosts resumes 1 host."""
  assign = loader_lib.StratifiedAssignment(5, seed=0)
  runs = {}
  for pid, nproc in ((0, 1), (0, 2), (1, 2)):
    rec, logs = _recording(corpus)
    loader = loader_lib.BatchLoader(rec, assign, 20, 64, seed=0, process_index=pid,
                                    process_count=nproc)
    runs[pid, nproc] = [loader.next() for _ in range(4)], logs
    loader.close()
  one, two = runs[0, 1][0], [runs[0, 2][0], runs[1, 2][0]]
  for step in range(4):
    for key in ("targets", "segment_ids", "domain_ids"):
      glued = np.concatenate([two[0][step][0][key], two[1][step][0][key]])
      np.testing.assert_array_equal(glued, one[step][0][key])
    assert two[0][step][1] == two[1][step][1]
    assert two[0][step][1]["positions"] == one[step][1]["positions"]
  # The loaders read ahead; the rows of the 4 steps are the first ones logged.
  count = lambda batches, d: sum(int((b["domain_ids"] == d).sum()) for b, _ in batches)
  for d in range(5):   # 4 steps read 16 of a domain's rows: all in one epoch
    mine = [runs[p, 2][1][d][:count(two[p], d)] for p in range(2)]
    assert mine[0] and mine[1] and not set(mine[0]) & set(mine[1])
    assert sorted(mine[0] + mine[1]) == sorted(runs[0, 1][1][d][:count(one, d)])
  resumed = _take(loader_lib.BatchLoader(corpus, assign, 20, 64, seed=0, start_step=2,
                                         positions=np.asarray(two[0][1][1]["positions"])), 2)
  for (a, _), (b, _) in zip(resumed, one[2:]):
    np.testing.assert_array_equal(a["targets"], b["targets"])
  full = loader_lib.eval_batches(corpus, 64, examples_per_domain=10, batch_size=16)
  halves = [loader_lib.eval_batches(corpus, 64, 10, 16, process_index=p, process_count=2)
            for p in range(2)]
  for b, h0, h1 in zip(full, *halves):
    for key in b:
      np.testing.assert_array_equal(b[key], np.concatenate([h0[key], h1[key]]))


def test_eval_batches_cover_each_domain(corpus):
  batches = loader_lib.eval_batches(corpus, 64, examples_per_domain=10, batch_size=16)
  ids = np.concatenate([b["domain_ids"][b["targets"].any(1)] for b in batches])
  np.testing.assert_array_equal(np.bincount(ids), [10] * 5)
  assert all(b["targets"].shape == (16, 64) for b in batches)


def test_stratified_loader_batches_hold_exact_counts(corpus):
  loader = loader_lib.BatchLoader(corpus, loader_lib.StratifiedAssignment(5, seed=0), 23, 64,
                                  seed=0)
  for step in range(12):
    b, _ = loader.next()
    counts = np.bincount(b["domain_ids"], minlength=5)
    expected = loader_lib.StratifiedAssignment(5, 0).counts(step, 23)
    np.testing.assert_array_equal(counts, expected)
    assert counts.min() == 4
  loader.close()


_SIZES = synthetic.SyntheticCorpusConfig.train_examples


@pytest.mark.parametrize("kwargs,message", [
    (dict(seq_len=0), "SyntheticCorpusConfig.seq_len must be a positive integer, got 0."),
    (dict(seq_len=64.0), "seq_len must be a positive integer, got 64.0"),
    (dict(seq_len=True), "seq_len must be a positive integer, got True"),
    (dict(seed=-1), "SyntheticCorpusConfig.seed must be a non-negative integer, got -1."),
    (dict(validation_examples=0), "validation_examples must be a positive integer, got 0."),
    (dict(domains=()), "SyntheticCorpusConfig.domains is empty"),
    (dict(domains="noise"), "domains must be a tuple of domain names"),
    (dict(domains=("noise", "sort", "noise")), "lists \\['noise'\\] more than once"),
    (dict(domains=("noise", "wiki")), "domains has unknown domains \\['wiki'\\]"),
    (dict(train_examples=(("noise", 0),) + _SIZES[1:]),
     "train_examples must give each domain a positive integer number of sequences, "
     "got \\{'noise': 0\\}"),
    (dict(train_examples=(("noise", 8.5),) + _SIZES[1:]), "positive integer number"),
    (dict(train_examples=_SIZES + (("noise", 8),)), "gives \\['noise'\\] more than one size"),
    (dict(train_examples=_SIZES + (("nosie", 8),)),
     "train_examples has unknown domains \\['nosie'\\]"),
    (dict(train_examples="noise"), "must be \\(domain, count\\) pairs"),
    (dict(train_examples=_SIZES[1:]), "train_examples has no size for \\['noise'\\]"),
])
def test_synthetic_config_rejects_what_cannot_work(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    synthetic.SyntheticCorpusConfig(**kwargs)


def test_synthetic_config_normalises_lists_and_mappings():
  cfg = synthetic.SyntheticCorpusConfig(seq_len=16, domains=["sort", "noise"],
                                        train_examples={"noise": 4, "sort": 8})
  assert cfg.domains == ("sort", "noise")
  assert cfg.train_examples == (("noise", 4), ("sort", 8))
  hash(cfg)  # the generated-array cache is keyed by the config
  c = synthetic_tasks.synthetic_corpus(cfg)
  assert c.domains == ("sort", "noise") and c.train_tokens == (8 * 16, 4 * 16)


def test_get_corpus_dispatch_and_config_errors_through_gin():
  assert set(registry.CORPORA) == {"synthetic", "local"}
  gin.bind_parameter("get_corpus.name", "nope")
  with pytest.raises(ConfigError, match="unknown corpus 'nope'; set get_corpus.name to one of "
                     "'synthetic', 'local'"):
    registry.get_corpus()
  gin.bind_parameter("get_corpus.name", "synthetic")
  gin.bind_parameter("SyntheticCorpusConfig.seq_len", 16)
  gin.bind_parameter("SyntheticCorpusConfig.domains", ("markov", "sort"))
  c = registry.get_corpus()
  assert c.domains == ("markov", "sort") and len(c.task_names) == 2
  assert c.entropy_floors[0] == pytest.approx(synthetic.entropy_floor("markov", 16))
  gin.bind_parameter("SyntheticCorpusConfig.seq_len", 0)
  with pytest.raises(ConfigError, match="SyntheticCorpusConfig.seq_len must be a positive"):
    registry.get_corpus()


def test_synthetic_generator_imports_neither_seqio_nor_tensorflow():
  # (import cycles and private names: tests/unit/structure_test.py, package-wide)
  with open(synthetic.__file__) as f:
    tree = ast.parse(f.read())
  names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
           for a in n.names}
  names |= {n.module.split(".")[0] for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module}
  assert not names & {"seqio", "tensorflow", "tensorflow_datasets"}, names


def test_step3_refuses_weights_changed_after_step2_completed(corpus, tmp_path):
  run = tmp_path / "proxy"
  run.mkdir()
  w = {d: 1.0 + i for i, d in enumerate(corpus.domains)}
  files.write_json(run / rundir.AVERAGE_WEIGHTS, w)
  rundir.mark_complete(str(run), "proxy", 10, 1.0, "done")
  want = np.array(list(w.values())) / sum(w.values())
  np.testing.assert_allclose(weights_lib.resolve_weights(str(run), corpus, "w"), want)
  files.write_json(run / rundir.AVERAGE_WEIGHTS, {d: 1.0 for d in corpus.domains})
  with pytest.raises(ConfigError, match="train_main_model.weights: .*average_domain_weights.json "
                     "was changed after its stage completed"):
    weights_lib.resolve_weights(str(run), corpus, "train_main_model.weights")
