"""Downstream tasks: our request format, the built-in tasks of the synthetic
corpus (checked against the corpus's own generator, independently), the
split of a task's items, the suite's choice metrics against a plain forward
pass, and the study's task statistics."""

import gzip
import json
import math

import jax
import numpy as np
import pytest

from doremi_jax.analysis import compare, stats, task_stats
from doremi_jax.config import ConfigError
from doremi_jax.data import packing, synthetic
from doremi_jax.data.synthetic_tasks import split_sequences, synthetic_corpus
from doremi_jax.data.vocab import ByteVocabulary, SyntheticVocabulary
from doremi_jax.stages.study import check_primary
from doremi_jax.swarm import fit
from doremi_jax.tasks import builtin, registry, requests, suite

CHOICE = {"context": "2+2=", "choices": [" 4", " 5"], "gold": 0}
GEN = {"context": "2+2=", "target": " 4", "stop": [";"], "max_tokens": 3}


@pytest.fixture(scope="module")
def corpus():
  return synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=64))


def test_request_file_round_trip_and_gzip(tmp_path):
  path = requests.write_file(str(tmp_path / "qa.jsonl"), [CHOICE, dict(CHOICE, gold=1)])
  task = requests.load_file(path)
  assert (task.name, task.kind, len(task.items)) == ("qa", requests.CHOICE, 2)
  gz = tmp_path / "gen.jsonl.gz"
  gz.write_bytes(gzip.compress((json.dumps(GEN) + "\n\n").encode()))
  task = requests.load_file(str(gz))
  assert (task.name, task.kind, task.items) == ("gen", requests.GENERATE, (GEN,))
  assert requests.load_file(path, name="x").name == "x"


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "choices": [" b"], "gold": 0}', "at least two"),
    ('{"context": "a", "choices": [" b", " c"], "gold": 2}', "index of the correct"),
    ('{"context": "a", "choices": [" b", " c"], "gold": true}', "index of the correct"),
    ('{"context": "a", "target": ""}', "non-empty"),
    ('{"context": "a", "target": "b", "stop": "x"}', "'stop' must be a list"),
    ('{"context": "a", "target": "b", "max_tokens": 0}', "max_tokens"),
    ('{"context": "a", "target": "b", "colour": 1}', "unknown field"),
    ('{"question": "a"}', "needs the fields"),
    ('[1, 2]', "JSON object"),
    ('{"context": "a", "target": "b"', "line 2: not valid JSON"),
    ('{"text": 3}', "must be a string"),
])
def test_a_malformed_request_file_is_refused_naming_it(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(GEN) + "\n" + line + "\n")
  with pytest.raises(ConfigError, match=message) as e:
    requests.load_file(str(path))
  assert "bad.jsonl" in str(e.value)


def test_mixed_kinds_missing_and_corrupt_files_are_refused(tmp_path):
  mixed = tmp_path / "mixed.jsonl"
  mixed.write_text(json.dumps(GEN) + "\n" + json.dumps(CHOICE) + "\n")
  with pytest.raises(ConfigError, match="mixes request kinds"):
    requests.load_file(str(mixed))
  with pytest.raises(ConfigError, match="does not exist"):
    requests.load_file(str(tmp_path / "none.jsonl"))
  corrupt = tmp_path / "c.jsonl.gz"
  corrupt.write_bytes(b"not gzip at all")
  with pytest.raises(ConfigError, match="c.jsonl.gz.*cannot be read"):
    requests.load_file(str(corrupt))
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(ConfigError, match="holds no requests"):
    requests.load_file(str(tmp_path / "empty.jsonl"))


def _ids(text):
  return SyntheticVocabulary().encode(text)


def test_arithmetic_items_ask_for_the_sum_least_significant_digit_first(corpus):
  task = builtin.load(corpus, "arithmetic_sum", packing.TEST)
  assert len(task.items) == len(split_sequences(corpus.source_config, "arithmetic", "test"))
  blocks = set()
  for item in task.items:
    ctx = _ids(item["context"])
    a_b = [i - synthetic.DIGIT_LO for i in ctx[-8:]]
    assert ctx[-5] == synthetic.PLUS and ctx[-1] == synthetic.EQUALS
    a, b = a_b[0] * 100 + a_b[1] * 10 + a_b[2], a_b[4] * 100 + a_b[5] * 10 + a_b[6]
    digits = [(a + b) // 10 ** k % 10 for k in range(4)]
    assert item["target"] == " " + " ".join(map(str, digits))
    assert item["stop"] == [";"]
    blocks.add(len(ctx) // builtin.ARITHMETIC_BLOCK)
  assert len(blocks) > 1   # the asked-about block varies


def test_sort_markov_and_repeat_items(corpus):
  for item in builtin.load(corpus, "sort_symbols", packing.TEST).items:
    ctx, target = _ids(item["context"]), _ids(item["target"])
    assert ctx[-1] == synthetic.BAR
    assert target == sorted(ctx[-1 - synthetic.SORT_LEN:-1])
  succ = synthetic.markov_chain(corpus.source_config.seed)[0]
  seqs = split_sequences(corpus.source_config, "markov", "test")
  for item, seq in zip(builtin.load(corpus, "markov_next", packing.TEST).items, seqs):
    ctx = _ids(item["context"])
    assert ctx == list(seq[:len(ctx)])
    choices = [_ids(c)[0] for c in item["choices"]]
    assert sorted(choices) == sorted(s + synthetic.MARKOV_LO for s in succ[ctx[-1] - 34])
    assert choices[item["gold"]] == seq[len(ctx)]
  cycles = synthetic.repeat_cycles(corpus.source_config.seed)
  for item in builtin.load(corpus, "repeat_cycle", packing.TEST).items:
    ctx, target = _ids(item["context"]), _ids(item["target"])
    row = next(c for c in cycles if ctx[0] in c).tolist()
    at = row.index(ctx[-1])
    assert target == [row[(at + 1 + j) % 4] for j in range(4)]


def test_markov_ceiling_is_the_chains_best_guess_rate(corpus):
  _, probs, pi = synthetic.markov_chain(corpus.source_config.seed)
  assert builtin.markov_ceiling(corpus.source_config) == pytest.approx(
      sum(pi[s] * max(probs[s]) for s in range(len(pi))))


def test_builtin_tasks_need_their_corpus_and_domain(corpus):
  import dataclasses
  with pytest.raises(ConfigError, match="built-in synthetic corpus"):
    builtin.load(dataclasses.replace(corpus, source_config=None), "markov_next", "test")
  small = synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=64,
                                                           domains=("noise", "markov")))
  with pytest.raises(ConfigError, match="'arithmetic' domain"):
    builtin.load(small, "arithmetic_sum", "test")


def test_tune_and_test_halves_of_a_task_are_disjoint_and_cover_it(tmp_path, corpus):
  items = [dict(CHOICE, id=str(i)) for i in range(200)]
  path = requests.write_file(str(tmp_path / "qa.jsonl"), items)
  tune = registry.load(path, corpus, packing.TUNE)
  test = registry.load(path, corpus, packing.TEST)
  ids = lambda t: {i["id"] for i in t.items}
  assert not ids(tune) & ids(test) and len(ids(tune) | ids(test)) == 200
  assert 60 < len(test.items) < 140
  assert len(registry.load(path, corpus, packing.TEST, limit=5).items) == 5
  a = builtin.load(corpus, "markov_next", packing.TUNE).items
  b = builtin.load(corpus, "markov_next", packing.TEST).items
  assert [i["context"] for i in a] != [i["context"] for i in b]
  with pytest.raises(ConfigError, match="twice"):
    registry.load_all([path, path], corpus, packing.TEST)
  assert registry.task_name("dir/qa.jsonl.gz") == "qa"
  assert registry.swarm_target("sciq") == "sciq/bpb"


def _plain_loglik(model, params, context, continuation):
  """The continuation's log-likelihood by one plain forward pass (padded to
  32 positions after the sequence, which a causal model's earlier
  positions never see, so one compile serves every request)."""
  seq = list(context) + list(continuation)
  inputs = np.zeros((1, 32), np.int32)
  inputs[0, :len(seq)] = [0] + seq[:-1]
  logits = jax.jit(model.apply)({"params": params}, inputs)[0, :len(seq)]
  logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
  return sum(logp[len(context) + j, t] for j, t in enumerate(continuation))


def test_suite_choice_metrics_equal_a_plain_forward_pass(tiny_model):
  model, params = tiny_model
  vocab = ByteVocabulary()          # 259 ids; map into the tiny model's 64
  vocab_ids = lambda s: [3 + (b % 60) for b in s.encode()]
  items = [{"context": "ab" * k, "choices": [" x", " yy", " zzz"], "gold": k % 3}
           for k in range(1, 6)]
  task = requests.from_items("t", items, "test")

  class Small:
    encode = staticmethod(vocab_ids)
  prepared = suite.prepare(task, Small())
  got = suite.TaskSuite((prepared,), Small(), 32, 4, "test")(model, params)["t"]
  ll = [[_plain_loglik(model, params, vocab_ids(it["context"]), vocab_ids(c))
         for c in it["choices"]] for it in items]
  acc = np.mean([np.argmax(x) == it["gold"] for x, it in zip(ll, items)])
  norm = np.mean([np.argmax(np.array(x) / [2, 3, 4]) == it["gold"] for x, it in zip(ll, items)])
  prob = np.mean([math.exp(x[it["gold"]]) / sum(math.exp(v) for v in x)
                  for x, it in zip(ll, items)])
  bpb = np.mean([-x[it["gold"]] / math.log(2) / len(it["choices"][it["gold"]])
                 for x, it in zip(ll, items)])
  assert got["acc"] == pytest.approx(acc) and got["acc_per_char"] == pytest.approx(norm)
  assert got["prob_correct"] == pytest.approx(prob, rel=1e-5)
  assert got["bpb"] == pytest.approx(bpb, rel=1e-5)
  assert (got["kind"], got["primary"], got["questions"]) == ("choice", "bpb", 5)
  del vocab


def test_task_verdicts_follow_the_metrics_direction():
  up = stats.paired_difference([0.6, 0.7, 0.65], [0.5, 0.55, 0.52], higher_is_better=True)
  down = stats.paired_difference([0.6, 0.7, 0.65], [0.5, 0.55, 0.52])
  assert (up["verdict"], down["verdict"]) == ("wins", "loses")
  assert task_stats.higher_is_better("q/acc") and not task_stats.higher_is_better("q/bpb")
  summary = {"uniform_average": 1.0, "worst_case": {"loss": 2.0},
             "tasks": {"q": {"kind": "choice", "primary": "bpb", "acc": 0.5, "bpb": 1.5}}}
  assert task_stats.resolve("q", summary) == "q/bpb"
  assert task_stats.resolve("q/acc", summary) == "q/acc"
  assert task_stats.resolve("q/kind", summary) is None
  assert task_stats.metric_keys(summary) == ["q/acc", "q/bpb"]


def test_task_speedup_counts_steps_to_the_baselines_final_accuracy():
  def run(accs):
    return [dict(step=s, uniform_average=1.0, worst_case={"loss": 1.0},
                 tasks={"q": {"primary": "bpb", "acc": a, "bpb": 1.0}})
            for s, a in zip((0, 10, 20, 30, 40), accs)]
  base = [run([0.2, 0.3, 0.4, 0.5, 0.6]), run([0.2, 0.3, 0.4, 0.5, 0.6])]
  fast = [run([0.2, 0.4, 0.6, 0.7, 0.8]), run([0.2, 0.45, 0.6, 0.7, 0.8])]
  finals = {"b": [r[-1] for r in base], "f": [r[-1] for r in fast]}
  out = task_stats.analyse_metric("q/acc", finals, {"b": base, "f": fast}, "b", 0.95, 1)
  assert out["f"]["speedup"]["per_seed"] == pytest.approx([2.0, 40 / (10 + 10 * 0.15 / 0.15)])
  assert out["f"]["vs_baseline"]["diff"] == pytest.approx(0.2)
  assert out["f"]["higher_is_better"] and "vs_baseline" not in out["b"]


def test_comparison_carries_task_deltas():
  d = {"q": {"primary": "bpb", "bpb": 1.0, "acc": 0.6}}
  b = {"q": {"primary": "bpb", "bpb": 1.5, "acc": 0.5}, "other": {"bpb": 1.0}}
  out = compare.compare_tasks(d, b)
  assert out == {"q": {"primary": "bpb", "bpb": {"doremi": 1.0, "baseline": 1.5, "delta": -0.5},
                       "acc": {"doremi": 0.6, "baseline": 0.5,
                               "delta": pytest.approx(0.1)}}}


def test_study_primary_and_swarm_objective_name_configured_tasks():
  check_primary("uniform_avg", ())
  check_primary("markov_next/acc", ("markov_next",))
  check_primary("qa", ("data/qa.jsonl",))
  for bad, tasks in (("markov_next", ()), ("markov_next/kind", ("markov_next",)),
                     ("qa.jsonl", ("qa.jsonl",))):
    with pytest.raises(ConfigError, match="train_study.primary"):
      check_primary(bad, tasks)
  domains = ("a", "b")
  assert fit.objective_terms(["a", "sciq"], domains, ["sciq/bpb"]) == {"a": 0.5, "sciq/bpb": 0.5}
  with pytest.raises(ConfigError, match="sciq/bpb"):
    fit.objective_terms(["arc"], domains, ["sciq/bpb"])
  ys = fit.targets([[1.0, 2.0], [3.0, 4.0]], domains, {"sciq/bpb": [0.5, 0.7]})
  np.testing.assert_allclose(ys["sciq/bpb"], [0.5, 0.7])


def test_an_unknown_task_name_is_refused_naming_every_kind_of_entry(corpus):
  with pytest.raises(ConfigError) as e:
    registry.load("markov_nxt", corpus, packing.TEST)
  msg = str(e.value)
  assert "markov_nxt" in msg and "markov_next" in msg and ".jsonl" in msg
