"""`python -m doremi_jax.lm_eval ...` from a shell: lm-eval's own command line
with our model, on a local multiple-choice task, offline; its results file
holds the accuracy our own scoring gives. The plain `lm_eval` command does
not know the model (lm-eval reads no entry points: why the wrapper exists),
and a bad run directory ends with `error: ...` and exit status 2."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, tiny_reference_run

pytest.importorskip("lm_eval", reason="lm-eval is not installed (the `eval` extra)")

SEQ_LEN = 32
DOCS = [{"context": "1 2 + 3 4 =", "choices": ["4 6", "5 7", "1 0 0"], "gold": 0},
        {"context": "5 + 5 =", "choices": ["1 0", "9", "2 5"], "gold": 0},
        {"context": "7 1 + 2 =", "choices": ["8 1", "7 3", "9"], "gold": 1},
        {"context": "a b c | c b", "choices": ["a", "b", "c"], "gold": 0}]


def _env():
  return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1",
              HF_HUB_OFFLINE="1")


def _lm_eval(args, module="doremi_jax.lm_eval"):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory):
  """(run directory of a 6-step reference run, include path of one local
  multiple-choice task)."""
  root = tmp_path_factory.mktemp("lm_eval_cli")
  tiny_reference_run(root / "run", SEQ_LEN)
  (root / "tasks").mkdir()
  data = root / "choice.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
  (root / "tasks" / "dj_cli_choice.yaml").write_text(textwrap.dedent(f"""\
      task: dj_cli_choice
      dataset_path: json
      dataset_kwargs:
        data_files:
          test: {data}
        cache_dir: {root / 'hf_cache'}
      test_split: test
      output_type: multiple_choice
      doc_to_text: "{{{{context}}}}"
      doc_to_choice: "{{{{choices}}}}"
      doc_to_target: "{{{{gold}}}}"
      metric_list:
        - metric: acc
        - metric: acc_norm
      """))
  return str(root / "run"), str(root / "tasks")


def _ours(run_dir) -> dict:
  from doremi_jax.tasks import encode, scoring, trained
  run = trained.load(run_dir)
  pairs = [encode.encode_pair(run.vocabulary, d["context"], " " + c)
           for d in DOCS for c in d["choices"]]
  ll = scoring.loglikelihoods(run.model, run.params, pairs, SEQ_LEN).reshape(len(DOCS), 3)
  m = scoring.choice_metrics(ll, [d["gold"] for d in DOCS],
                             [[len(c) for c in d["choices"]] for d in DOCS],
                             [[1] * 3 for _ in DOCS], [1] * len(DOCS))
  return {"acc,none": m["acc"], "acc_norm,none": m["acc_per_char"]}


def test_lm_eval_command_with_our_model(setup_dirs, tmp_path):
  run_dir, include = setup_dirs
  out = tmp_path / "out"
  r = _lm_eval(["--model", "doremi_jax", "--model_args", f"run_dir={run_dir},batch_size=4",
                "--tasks", "dj_cli_choice", "--include_path", include,
                "--output_path", str(out)])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "dj_cli_choice" in r.stdout and "acc_norm" in r.stdout   # lm-eval's table
  files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs
           if f.startswith("results") and f.endswith(".json")]
  assert len(files) == 1, files
  with open(files[0]) as f:
    results = json.load(f)["results"]["dj_cli_choice"]
  for key, value in _ours(run_dir).items():
    assert results[key] == pytest.approx(value, abs=1e-12), key


def test_plain_lm_eval_does_not_know_our_model_and_bad_arguments_fail_cleanly(setup_dirs):
  _, include = setup_dirs
  plain = _lm_eval(["--model", "doremi_jax", "--model_args", "run_dir=/nowhere",
                    "--tasks", "dj_cli_choice", "--include_path", include], module="lm_eval")
  assert plain.returncode != 0
  assert "no model for this name found" in plain.stderr, plain.stderr[-3000:]
  bad = _lm_eval(["--model", "doremi_jax", "--model_args", "run_dir=/nowhere",
                  "--tasks", "dj_cli_choice", "--include_path", include])
  assert bad.returncode == 2, bad.stderr[-3000:]
  assert "error: '/nowhere' is not a run directory" in bad.stderr
  assert "Traceback" not in bad.stderr
