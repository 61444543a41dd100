"""The lm-evaluation-harness model `doremi_jax` in process: a 6-step
reference run scored by lm-eval on local YAML tasks (multiple choice,
loglikelihood, loglikelihood_rolling) offline, every metric equal to what
our own scoring computes on the same requests; the model's arguments and
its generation requests' grouping."""

import json
import math
import sys
import textwrap
import types

import numpy as np
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.tasks import encode, requests, scoring, suite, trained

from helpers import tiny_reference_run

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install "
                              "lm_eval, the `eval` extra)")
from doremi_jax.tasks import lm_eval_model  # noqa: E402

SEQ_LEN = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A 6-step reference run on the synthetic corpus (SyntheticVocabulary:
  whitespace-separated token names such as '1 2 + 3 4 =')."""
  wd = tmp_path_factory.mktemp("lm_eval") / "run"
  return tiny_reference_run(wd, SEQ_LEN)


@pytest.fixture(scope="module")
def run(run_dir):
  return trained.load(run_dir)


def _digits(n: int) -> str:
  return " ".join(str(n))


def choice_docs(rng, n=12):
  """Sums with three candidate answers of different lengths."""
  docs = []
  for _ in range(n):
    a, b = (int(x) for x in rng.integers(1, 99, 2))
    wrong = [int(x) for x in rng.choice([a + b + 1, a + b + 10, a + b + 100, abs(a - b)], 2,
                                        replace=False)]
    choices = [_digits(c) for c in [a + b] + wrong]
    order = rng.permutation(3)
    docs.append({"context": f"{_digits(a)} + {_digits(b)} =",
                 "choices": [choices[i] for i in order],
                 "gold": int(np.flatnonzero(order == 0)[0])})
  return docs


def greedy_docs(run, rng, n=8):
  """Contexts and a one-token target: for half of them the model's argmax
  next token (found by scoring every token), for the rest a random one."""
  names = run.vocabulary.names
  docs = []
  for i in range(n):
    context = " ".join(names[int(t)] for t in rng.integers(2, 40, rng.integers(1, 6)))
    ids = list(range(2, len(names)))
    ll = scoring.loglikelihoods(run.model, run.params,
                                [encode.encode_pair(run.vocabulary, context, " " + names[t])
                                 for t in ids], SEQ_LEN)
    target = names[ids[int(np.argmax(ll))]] if i % 2 == 0 else names[int(rng.integers(2, 40))]
    docs.append({"context": context, "target": " " + target})
  return docs


def rolling_docs(rng):
  """Texts from 1 to 90 tokens (up to three rows and a bit)."""
  return [{"text": " ".join(str(int(d)) for d in rng.integers(0, 10, n))}
          for n in (1, 7, 31, 32, 33, 64, 90)]


def _jsonl(path, docs):
  path.write_text("".join(json.dumps(d) + "\n" for d in docs))
  return str(path)


def _task_yaml(name, data, cache, body):
  return textwrap.dedent(f"""\
      task: {name}
      dataset_path: json
      dataset_kwargs:
        data_files:
          test: {data}
        cache_dir: {cache}
      test_split: test
      """) + textwrap.dedent(body)


def write_tasks(root, docs) -> str:
  """Local lm-eval tasks over JSONL files; returns the include path."""
  tasks, cache = root / "tasks", root / "hf_cache"
  tasks.mkdir()
  bodies = {
      "dj_choice": """\
          output_type: multiple_choice
          doc_to_text: "{{context}}"
          doc_to_choice: "{{choices}}"
          doc_to_target: "{{gold}}"
          metric_list:
            - metric: acc
            - metric: acc_norm
          """,
      "dj_greedy": """\
          output_type: loglikelihood
          doc_to_text: "{{context}}"
          doc_to_target: "{{target}}"
          metric_list:
            - metric: acc
            - metric: perplexity
          """,
      "dj_rolling": """\
          output_type: loglikelihood_rolling
          doc_to_text: ""
          doc_to_target: "{{text}}"
          metric_list:
            - metric: word_perplexity
            - metric: byte_perplexity
            - metric: bits_per_byte
          """,
  }
  for name, body in bodies.items():
    data = _jsonl(root / f"{name}.jsonl", docs[name])
    (tasks / f"{name}.yaml").write_text(_task_yaml(name, data, cache, body))
  return str(tasks)


def ours(run, docs) -> dict:
  """Every metric the tasks report, from our own scoring of the same
  requests (lm-eval's acc_norm divides by the choice's characters, without
  the target delimiter: our acc_per_char)."""
  vocab = run.vocabulary
  choice = docs["dj_choice"]
  pairs = [encode.encode_pair(vocab, d["context"], " " + c) for d in choice for c in d["choices"]]
  ll = scoring.loglikelihoods(run.model, run.params, pairs, SEQ_LEN)
  per_q, at = [], 0
  for d in choice:
    per_q.append(ll[at:at + len(d["choices"])])
    at += len(d["choices"])
  m = scoring.choice_metrics(per_q, [d["gold"] for d in choice],
                             [[len(c) for c in d["choices"]] for d in choice],
                             [[len(vocab.encode(c)) for c in d["choices"]] for d in choice],
                             [len(d["choices"][d["gold"]].encode()) for d in choice])
  greedy = docs["dj_greedy"]
  gl, gg = scoring.loglikelihoods(run.model, run.params,
                                  [encode.encode_pair(vocab, d["context"], d["target"])
                                   for d in greedy], SEQ_LEN, greedy=True)
  texts = [d["text"] for d in docs["dj_rolling"]]
  rl = scoring.rolling_loglikelihoods(run.model, run.params, [vocab.encode(t) for t in texts],
                                      SEQ_LEN).sum()
  words, nbytes = sum(len(t.split()) for t in texts), sum(len(t.encode()) for t in texts)
  return {"dj_choice": {"acc": m["acc"], "acc_norm": m["acc_per_char"],
                        "per_choice": {d["context"]: q.tolist() for d, q in zip(choice, per_q)}},
          "dj_greedy": {"acc": float(np.mean(gg)), "perplexity": math.exp(-np.mean(gl)),
                        "greedy_count": int(gg.sum())},
          "dj_rolling": {"word_perplexity": math.exp(-rl / words),
                         "byte_perplexity": math.exp(-rl / nbytes),
                         "bits_per_byte": -rl / nbytes / math.log(2)}}


@pytest.fixture
def task_manager_for(monkeypatch):
  """TaskManager(include_path=...), with Hugging Face datasets offline (the
  environment, and datasets' own flag, read when it was imported)."""
  import datasets
  from lm_eval.tasks import TaskManager
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
  return lambda include: TaskManager(include_path=include)


def test_lm_eval_scores_equal_ours(run_dir, run, tmp_path, task_manager_for):
  rng = np.random.default_rng(0)
  docs = {"dj_choice": choice_docs(rng), "dj_greedy": greedy_docs(run, rng),
          "dj_rolling": rolling_docs(rng)}
  want = ours(run, docs)
  assert 0 < want["dj_greedy"].pop("greedy_count") < len(docs["dj_greedy"])
  per_choice = want["dj_choice"].pop("per_choice")
  out = lm_eval.simple_evaluate(
      model="doremi_jax", model_args={"run_dir": run_dir, "batch_size": 4},
      tasks=list(docs), task_manager=task_manager_for(write_tasks(tmp_path, docs)),
      bootstrap_iters=0, log_samples=True)
  samples, results = out["samples"]["dj_choice"], out["results"]
  assert len(samples) == len(per_choice)
  for sample in samples:           # every choice's log-likelihood, not only the argmax
    np.testing.assert_allclose([r[0] for r in sample["filtered_resps"]],
                               per_choice[sample["doc"]["context"]], rtol=1e-6)
  for task, metrics in want.items():
    for metric, value in metrics.items():
      assert results[task][f"{metric},none"] == pytest.approx(value, rel=1e-6, abs=1e-9), \
          (task, metric)
  # the same questions as one of our request files, through the evaluator
  # a stage runs (its choices carry the delimiter, as OLMo's continuations do)
  task = requests.from_items("dj_choice", [
      {"context": d["context"], "choices": [" " + c for c in d["choices"]], "gold": d["gold"]}
      for d in docs["dj_choice"]], "test")
  mine = suite.TaskSuite((suite.prepare(task, run.vocabulary),), run.vocabulary, SEQ_LEN, 4,
                         "test")(run.model, run.params)["dj_choice"]
  assert results["dj_choice"]["acc,none"] == pytest.approx(mine["acc"])


def test_model_arguments(run_dir):
  from lm_eval.api.registry import get_model, model_registry
  cls = get_model("doremi_jax")
  assert cls is lm_eval_model.DoremiJaxLM
  assert "hf" in model_registry and "dummy" in model_registry   # lm-eval's own still there
  # lm-eval's CLI passes its own batch_size (default 1); --model_args wins
  lm = cls.create_from_arg_string(f"run_dir={run_dir},batch_size=3,stride=5",
                                  {"batch_size": 1, "max_batch_size": None, "device": "cpu"})
  assert (lm.batch_rows, lm.max_length, lm.stride, lm.run.step) == (3, SEQ_LEN, 5, 6)
  assert cls.create_from_arg_string(f"run_dir={run_dir}", {"batch_size": "auto"}).batch_rows == 8
  assert cls.create_from_arg_obj({"run_dir": run_dir, "max_length": 16}).max_length == 16
  bad = [("", "needs --model_args run_dir"), (",bacth_size=2", "bacth_size: not an argument"),
         (",batch_size=0", "batch_size must be a positive integer"),
         (",max_length=100000", "exceeds the model's ModelConfig.max_len"),
         (",step=-1", "non-negative integer"), (",stride=64", "exceeds max_length")]
  for args, message in bad:
    arg_string = (f"run_dir={run_dir}" if args else "") + args
    with pytest.raises(ConfigError, match=message):
      cls.create_from_arg_string(arg_string)


class _Request:
  def __init__(self, *args):
    self.args = args


def test_generation_requests_keep_their_own_settings(run, monkeypatch):
  """generate_until hands `decode.generate_until` every request with its
  own stop strings and token limit, and the answers in order (a stand-in
  decoder; the real one is tested below)."""
  calls = []

  def fake_generate_until(model, params, vocabulary, contexts, until, max_gen_toks, *,
                          max_len, batch_size):
    calls.append((list(contexts), until, max_gen_toks, max_len, batch_size))
    return [f"{c}|{','.join(u)}|{n}" for c, u, n in zip(contexts, until, max_gen_toks)]

  fake = types.ModuleType("doremi_jax.tasks.decode")
  fake.generate_until = fake_generate_until
  import doremi_jax.tasks
  monkeypatch.setitem(sys.modules, "doremi_jax.tasks.decode", fake)
  monkeypatch.setattr(doremi_jax.tasks, "decode", fake, raising=False)
  lm = lm_eval_model.DoremiJaxLM.create_from_arg_obj({"run_dir": run.run_dir, "batch_size": 2})
  requests = [_Request("a", {"until": [";"], "max_gen_toks": 4}),
              _Request("b", {"until": ";", "max_gen_toks": 4, "do_sample": False}),
              _Request("c", {"until": ["|"]}),
              _Request("d", {"until": [";"], "max_gen_toks": 4, "temperature": 0.0})]
  assert lm.generate_until(requests) == ["a|;|4", "b|;|4", "c|||256", "d|;|4"]
  assert calls == [(["a", "b", "c", "d"], [[";"], [";"], ["|"], [";"]], [4, 4, 256, 4],
                    SEQ_LEN, 2)]
  with pytest.raises(ConfigError, match="max_gen_toks"):
    lm.generate_until([_Request("e", {"until": [";"], "max_gen_toks": 0})])


def test_generate_until_through_lm_eval(run_dir, run, tmp_path, task_manager_for):
  """A generative task through lm-eval: every response is what our decoder
  gives for that context."""
  from doremi_jax.tasks import decode
  rng = np.random.default_rng(1)
  docs = [{"context": f"{_digits(a)} + {_digits(b)} =", "target": " " + _digits(a + b)}
          for a, b in rng.integers(1, 99, (5, 2)).tolist()]
  (tmp_path / "tasks").mkdir()
  body = """\
      output_type: generate_until
      doc_to_text: "{{context}}"
      doc_to_target: "{{target}}"
      generation_kwargs:
        until: [";"]
        max_gen_toks: 4
      metric_list:
        - metric: exact_match
      """
  (tmp_path / "tasks" / "dj_gen.yaml").write_text(
      _task_yaml("dj_gen", _jsonl(tmp_path / "gen.jsonl", docs), tmp_path / "hf_cache", body))
  out = lm_eval.simple_evaluate(
      model="doremi_jax", model_args={"run_dir": run_dir}, tasks=["dj_gen"],
      task_manager=task_manager_for(str(tmp_path / "tasks")), bootstrap_iters=0,
      log_samples=True)
  got = {s["doc"]["context"]: s["resps"][0][0] for s in out["samples"]["dj_gen"]}
  contexts = [d["context"] for d in docs]
  want = decode.generate_until(run.model, run.params, run.vocabulary, contexts,
                               [[";"]] * len(contexts), 4,
                               max_len=SEQ_LEN, batch_size=8)
  assert [got[c] for c in contexts] == list(want)
