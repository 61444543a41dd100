"""Stage `pipeline`: kill in Step 2 and re-run, iterated DoReMi with early
stopping, skipping finished stages, the report on partial run directories."""

import json
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, run_cli, run_cli_until, configure
from doremi_jax import main as main_lib
from doremi_jax.analysis import pipeline_report
from doremi_jax.config import ConfigError

# A small pipeline for in-process runs on the 8 forced CPU devices (8-way
# data parallel): tiny steps, short sequences, scoped steps per stage kind.
SMALL = """
include 'gin/models/tiny.gin'
run.stage = 'pipeline'
get_corpus.name = 'synthetic'
SyntheticCorpusConfig.seq_len = 64
TrainConfig.seq_len = 64
TrainConfig.global_batch_size = 16
TrainConfig.log_every = 5
TrainConfig.checkpoint_every = 10
TrainConfig.eval_examples_per_domain = 16
TrainConfig.eval_batch_size = 16
TrainConfig.tensorboard = False
OptimizerConfig.learning_rate = 3e-3
OptimizerConfig.warmup_steps = 5
reference/TrainConfig.num_steps = 20
proxy/TrainConfig.num_steps = 30
main/TrainConfig.num_steps = 10
"""


def _run_pipeline(tmp_path, workdir, *bindings):
  gin_file = tmp_path / "small.gin"
  gin_file.write_text(SMALL)
  configure(bindings, [str(gin_file)])
  return main_lib.run(workdir=str(workdir))


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory):
  """Iterated DoReMi, 3 rounds, tolerance 0 (never met), no main models."""
  tmp = tmp_path_factory.mktemp("iterated")
  wd = tmp / "run"
  state = _run_pipeline(tmp, wd, "train_pipeline.rounds = 3", "train_pipeline.tolerance = 0.0",
                        "train_pipeline.run_main = False", "train_pipeline.run_baseline = False")
  return tmp, wd, state


def test_iterated_doremi_records_every_round(three_rounds):
  _, wd, state = three_rounds
  assert state == json.loads((wd / "pipeline.json").read_text())
  assert state["status"] == "complete" and state["converged_at_round"] is None
  rounds = state["rounds"]
  assert [r["round"] for r in rounds] == [1, 2, 3]
  assert rounds[0]["reference_weights"] == pytest.approx({d: 0.2 for d in state["domains"]})
  for prev, cur in zip(rounds, rounds[1:]):
    # Round r+1's reference was trained on round r's averaged weights ...
    assert cur["reference_weights"] == prev["weights"]
    recorded = json.loads((wd / f"round_{cur['round']}" / "reference" /
                           "reference_weights.json").read_text())
    assert recorded == pytest.approx(prev["weights"], rel=1e-6)
  for r in rounds:
    w = json.loads((wd / f"round_{r['round']}" / "proxy" /
                    "average_domain_weights.json").read_text())
    assert r["weights"] == w
    assert r["l1_change"] == pytest.approx(
        sum(abs(w[d] - r["reference_weights"][d]) for d in w))
  assert state["final_weights"] == rounds[-1]["weights"]
  # Scoped bindings: each kind of stage got its own number of steps.
  for r in (1, 2, 3):
    assert json.loads((wd / f"round_{r}/reference/complete.json").read_text())["num_steps"] == 20
    assert json.loads((wd / f"round_{r}/proxy/complete.json").read_text())["num_steps"] == 30
  assert not (wd / "main_doremi").exists()
  text = (wd / "report.md").read_text()
  assert "round 3" in text and "not converged within 3 round(s)" in text
  # report.json: what report.md shows, as data
  report = json.loads((wd / "report.json").read_text())
  assert report["pipeline"] == state
  assert [s["name"] for s in report["stages"]] == [f"round_{r}/{k}" for r in (1, 2, 3)
                                                   for k in ("reference", "proxy")]
  assert report["weight_trajectory"] == [[0, rounds[0]["reference_weights"]]] + [
      [r["round"], r["weights"]] for r in rounds]
  assert (wd / "plots" / "weights_across_rounds.png").exists()
  assert (wd / "plots" / "proxy_weights_round_3.png").exists()


def test_iterated_doremi_stops_when_tolerance_met(three_rounds, capsys):
  tmp, wd, state = three_rounds
  changes = [r["l1_change"] for r in state["rounds"]]
  tol = changes[1] + 1e-6
  expect = next(i for i, c in enumerate(changes, 1) if c < tol)   # 1 or 2
  copy = tmp / "copy"
  shutil.copytree(wd, copy)
  shutil.rmtree(copy / "round_3")
  capsys.readouterr()
  again = _run_pipeline(tmp, copy, "train_pipeline.rounds = 3",
                        f"train_pipeline.tolerance = {tol!r}",
                        "train_pipeline.run_main = False", "train_pipeline.run_baseline = False")
  out = capsys.readouterr().out
  assert again["converged_at_round"] == expect
  assert [r["round"] for r in again["rounds"]] == list(range(1, expect + 1))
  assert again["rounds"] == [dict(r, reference_dir=str(copy / f"round_{r['round']}/reference"),
                                  proxy_dir=str(copy / f"round_{r['round']}/proxy"))
                             for r in state["rounds"][:expect]]
  assert not (copy / "round_3").exists()
  assert all(s["status"] == "skipped" for s in again["stages"].values())
  assert "already complete" in out and f"converged after round {expect} of 3" in out
  assert f"converged at round {expect}" in (copy / "report.md").read_text()


def test_rerun_with_other_reference_weights_is_refused(three_rounds):
  tmp, wd, _ = three_rounds
  before = sorted(p.name for p in (wd / "round_1" / "reference").iterdir())
  with pytest.raises(ConfigError, match="was trained on reference weights"):
    _run_pipeline(tmp, wd, "train_pipeline.rounds = 3", "train_pipeline.run_main = False",
                  "train_pipeline.run_baseline = False",
                  "train_pipeline.reference_weights = [0.6, 0.1, 0.1, 0.1, 0.1]")
  assert sorted(p.name for p in (wd / "round_1" / "reference").iterdir()) == before


@pytest.mark.parametrize("binding,message", [
    ("train_pipeline.rounds = 0", "rounds must be an integer >= 1"),
    ("train_pipeline.tolerance = -0.1", "tolerance must be a number >= 0"),
    ("train_pipeline.run_main = False", "run_baseline needs run_main"),
    ("train_pipeline.reference_weights = {'noise': 1.0}", "missing domains"),
])
def test_pipeline_bad_input(tmp_path, binding, message):
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / "notes.txt").write_text("keep me")
  with pytest.raises(ConfigError, match=message):
    _run_pipeline(tmp_path, wd, binding)
  assert [p.name for p in wd.iterdir()] == ["notes.txt"]


def test_report_on_a_run_with_only_step1(three_rounds, tmp_path):
  _, wd, _ = three_rounds
  part = tmp_path / "partial"
  shutil.copytree(wd / "round_1" / "reference", part / "round_1" / "reference")
  path = pipeline_report.write(str(part))
  text = (part / "report.md").read_text()
  assert path == str(part / "report.md")
  assert "| round_1/proxy |" in text and "missing: not run yet" in text
  assert "- main_doremi: missing: not run yet" in text
  assert "No finished Step 2 (proxy) yet" in text
  assert (part / "plots" / "training_curves.png").exists()
  assert not (part / "plots" / "weights_final_vs_reference.png").exists()


def test_report_errors_clearly_on_a_non_run(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    pipeline_report.write(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match="holds no DoReMi run"):
    pipeline_report.write(str(tmp_path / "empty"))


def test_pipeline_killed_in_its_last_stage_resumes_identically(quickstart_run, tmp_path):
  """README's first command, killed in the middle of its last stage (the
  baseline main run), then re-run: the finished stages are skipped, the
  killed one resumes, and everything ends as the uninterrupted run did.
  (A kill inside Step 1 and inside Step 2 is covered by cli_test.py and
  proxy_cli_test.py; this copies the finished stages to keep CI short.)"""
  full, _, r = quickstart_run
  assert r.returncode == 0, r.stderr[-3000:]
  wd = tmp_path / "run"
  for stage in ("round_1", "main_doremi"):
    shutil.copytree(full / stage, wd / stage)
  run_cli_until(["--gin_file=gin/quickstart.gin"], wd,
                wd / "main_baseline" / "checkpoints" / "50")
  assert not (wd / "main_baseline" / "complete.json").exists()

  # The report on the interrupted run: what is there, and what is missing.
  rep = subprocess.run([sys.executable, "-m", "doremi_jax.report", str(wd)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert rep.returncode == 0, rep.stderr[-3000:]
  assert "missing or unfinished: main_baseline" in rep.stdout
  text = (wd / "report.md").read_text()
  assert "round_1/reference | `" in text and "complete (200 steps" in text
  assert "unfinished: last checkpoint at step" in text
  assert (wd / "plots" / "proxy_weights_round_1.png").exists()
  assert (wd / "plots" / "training_curves.png").exists()
  assert not (wd / "plots" / "main_doremi_vs_baseline.png").exists()

  again = run_cli(["--gin_file=gin/quickstart.gin"], workdir=wd)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Step 1: reference model: already complete" in again.stdout
  assert "Step 2: Group-DRO proxy: already complete" in again.stdout
  assert "baseline: main model on the reference weights: resuming" in again.stdout
  assert "[main] resuming from step" in again.stdout
  state = json.loads((wd / "pipeline.json").read_text())
  assert state["stages"]["round_1/proxy"]["status"] == "skipped"
  assert state["stages"]["main_baseline"]["status"] == "ran"
  for f in ("main_doremi/eval.json", "main_baseline/eval.json"):
    assert json.loads((wd / f).read_text())["per_domain"] == \
        json.loads((full / f).read_text())["per_domain"], f
  assert (wd / "comparison.json").read_bytes() == (full / "comparison.json").read_bytes()
  assert "Nothing: every stage finished." in (wd / "report.md").read_text()
