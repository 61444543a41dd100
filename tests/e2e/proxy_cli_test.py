"""Stage `proxy` end to end: DoReMi finds the built-in corpus's structure,
kill-and-resume gives identical weights, bad input fails clearly."""

import json

import numpy as np
import pytest

from helpers import run_cli, run_cli_many, run_cli_until, weights_log_rows



def _proxy_args(reference_dir, *extra):
  return ["--gin_file=gin/proxy.gin", f"--gin.train_proxy.reference_dir='{reference_dir}'",
          *extra]


SHORT = ("--gin.TrainConfig.num_steps=40", "--gin.TrainConfig.checkpoint_every=10",
         "--gin.TrainConfig.global_batch_size=10", "--gin.TrainConfig.seq_len=64",
         "--gin.TrainConfig.log_every=5", "--gin.TrainConfig.eval_examples_per_domain=16")


@pytest.fixture(scope="module")
def reference_dir(quickstart_run):
  wd, _, r = quickstart_run
  assert r.returncode == 0, r.stderr[-3000:]
  return wd / "round_1" / "reference"


def test_doremi_weights_on_builtin_corpus(quickstart_run):
  """Step 2 of the quickstart: DoReMi's weights and the DataFlex-style log."""
  wd, _, r = quickstart_run
  assert r.returncode == 0, r.stderr[-3000:]
  wd = wd / "round_1" / "proxy"
  w = json.loads((wd / "average_domain_weights.json").read_text())
  assert list(w) == ["noise", "repeat", "markov", "arithmetic", "sort"]
  assert abs(sum(w.values()) - 1) < 1e-5
  assert w["noise"] < 0.05, w
  lines = [json.loads(l) for l in (wd / "doremi_weights.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == list(range(1, 201))   # every step, not one in log_every
  for l in lines:
    assert set(l) == {"step", "timestamp", "domain_names", "domain_weights",
                      "perdomain_scores", "average_weights"}
    assert abs(sum(l["domain_weights"]) - 1) < 1e-5
  np.testing.assert_allclose(lines[-1]["average_weights"], list(w.values()), rtol=1e-6)
  ev = json.loads((wd / "eval.json").read_text())
  assert "excess_over_reference" in ev["per_domain"]["sort"]
  info = json.loads((wd / "run_info.json").read_text())
  assert info["tokenizer"]["class"] == "SyntheticVocabulary"
  assert info["dro"]["step_size"] == 1.0 and info["dro"]["smoothing"] == 1e-3
  assert info["reference_dir"] == str(wd.parent / "reference")


def test_proxy_kill_and_resume_gives_identical_weights(reference_dir, tmp_path):
  args = _proxy_args(reference_dir, *SHORT)
  full = run_cli(args, workdir=tmp_path / "full")
  assert full.returncode == 0, full.stderr[-3000:]
  wd = tmp_path / "killed"
  run_cli_until(args, wd, wd / "checkpoints" / "20", timeout=300)
  assert not (wd / "average_domain_weights.json").exists()
  resumed = run_cli(args, workdir=wd)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stdout
  assert (wd / "average_domain_weights.json").read_bytes() == \
      (tmp_path / "full" / "average_domain_weights.json").read_bytes()
  # the weights log holds every step once, as the uninterrupted run's
  assert weights_log_rows(wd) == weights_log_rows(tmp_path / "full")


BAD = [
    (["--gin.train_proxy.reference_dir='/nonexistent/ref'"], "does not exist"),
    (["--gin.train_proxy.initial_weights=[0.5, 0.5]"], "got 2 weights for 5 domains"),
    (["--gin.train_proxy.initial_weights=[0.5, 0.5, -0.1, 0.05, 0.05]"], "non-negative"),
    (["--gin.TrainConfig.global_batch_size=4"], "smaller than the number of domains (5)"),
    (["--gin.SyntheticCorpusConfig.domains=('noise', 'repeat', 'markov')"],
     "was trained on domains"),
    (["--gin.train_proxy.step_size=-1.0"], "step_size must be a positive"),
]


def test_proxy_bad_input(reference_dir, tmp_path):
  fake = tmp_path / "ref_without_checkpoints"
  fake.mkdir()
  (fake / "run_info.json").write_text((reference_dir / "run_info.json").read_text())
  cases = BAD + [([f"--gin.train_proxy.reference_dir='{fake}'"], "no checkpoint directory")]
  jobs = []
  for i, (extra, _) in enumerate(cases):
    wd = tmp_path / f"run{i}"
    wd.mkdir()
    (wd / "notes.txt").write_text("keep me")
    jobs.append((_proxy_args(reference_dir, *SHORT, *extra), wd))
  for (extra, message), (_, wd), r in zip(cases, jobs, run_cli_many(jobs)):
    assert r.returncode == 2, (extra, r.returncode, r.stderr[-2000:])
    assert message in r.stderr, (extra, r.stderr[-2000:])
    assert [p.name for p in wd.iterdir()] == ["notes.txt"]
