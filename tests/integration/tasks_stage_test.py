"""Downstream tasks in the stages, in process: evaluated beside the losses
at every evaluation, refused before any training when misnamed, and a
tiny study with a planted effect on the arithmetic task, reported with
intervals."""

import json
import os

import pytest

from doremi_jax import files
from doremi_jax.config import ConfigError
from doremi_jax.tasks import requests

from helpers import run_stage

SMALL = [
    "include 'gin/cpu.gin'", "SEQ_LEN = 32", "STEPS = 6", "BATCH = 8",
    "TrainConfig.checkpoint_every = 0", "TrainConfig.log_every = 3", "TrainConfig.eval_every = 3",
    "TrainConfig.eval_examples_per_domain = 8", "TrainConfig.eval_batch_size = 8",
    "TrainConfig.tensorboard = False", "TrainConfig.async_checkpointing = False",
    "TrainConfig.eval_task_examples = 16",
]


def test_a_stage_evaluates_its_tasks_at_every_evaluation(tmp_path):
  qa = requests.write_file(str(tmp_path / "qa.jsonl"), [
      {"context": "1 2 +", "choices": [" 3", " 4"], "gold": i % 2, "id": str(i)}
      for i in range(40)])
  run_stage("reference", tmp_path / "run",
            SMALL + [f"TrainConfig.eval_tasks = ['markov_next', 'repeat_cycle', '{qa}']"])
  final = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert final["split"] == "test"
  assert set(final["tasks"]) == {"markov_next", "repeat_cycle", "qa"}
  assert final["tasks"]["markov_next"]["questions"] == 16
  assert final["tasks"]["qa"]["questions"] < 40        # the test half of its items
  assert set(final["tasks"]["repeat_cycle"]) >= {"exact_match", "bpb"}
  rows = files.read_jsonl(tmp_path / "run" / "eval.jsonl")
  assert [r["step"] for r in rows] == [0, 3, 6]
  assert all(set(r["tasks"]) == set(final["tasks"]) for r in rows)
  assert rows[-1]["tasks"] == final["tasks"]


@pytest.mark.parametrize("binding, message", [
    ("main/TrainConfig.eval_tasks = ['markov_nxt']", "unknown task 'markov_nxt'"),
    ("TrainConfig.eval_tasks = ['missing.jsonl']", "missing.jsonl' does not exist"),
    ("TrainConfig.eval_tasks = 'markov_next'", "must be a list"),
])
def test_a_misnamed_task_is_refused_before_anything_trains(tmp_path, binding, message):
  with pytest.raises(ConfigError, match=message):
    run_stage("pipeline", tmp_path / "run", SMALL + [binding])
  assert not os.path.exists(tmp_path / "run" / "round_1")


ONLY_ARITHMETIC = "{'noise': 0, 'repeat': 0, 'markov': 0, 'arithmetic': 1, 'sort': 0}"
NO_ARITHMETIC = "{'noise': 1, 'repeat': 1, 'markov': 1, 'arithmetic': 0, 'sort': 1}"


def test_a_model_trained_on_arithmetic_wins_the_arithmetic_task(tmp_path):
  """The planted effect: only the arm that sees arithmetic can answer sums."""
  result = run_stage("study", tmp_path / "study", SMALL + [
      "STEPS = 30", "TrainConfig.eval_every = 10", "BATCH = 16",
      "TrainConfig.eval_tasks = ['arithmetic_sum', 'markov_next']",
      "TrainConfig.eval_task_examples = 24",
      f"train_study.arms = {{'none': {NO_ARITHMETIC}, 'arith': {ONLY_ARITHMETIC}}}",
      "train_study.baseline = 'none'", "train_study.seeds = 3",
      "train_study.primary = 'arithmetic_sum'"])
  assert result["primary"] == "arithmetic_sum/bpb"
  head = result["results"]["arith"]["primary"]
  assert head["vs_baseline"]["verdict"] == "wins", head
  assert head["vs_baseline"]["ci"][1] < 0 and not head["higher_is_better"]
  assert result["results"]["none"]["primary"]["mean"] > head["mean"]
  tasks = result["tasks"]
  assert {"arithmetic_sum/bpb", "arithmetic_sum/exact_match", "markov_next/prob_correct",
          "markov_next/acc"} <= set(tasks)
  # the markov task is the other arm's: it saw markov sequences, arith did not
  assert tasks["markov_next/bpb"]["arith"]["vs_baseline"]["verdict"] == "loses"
  assert tasks["arithmetic_sum/bpb"]["arith"]["speedup"]["reached"] == 3
  md = (tmp_path / "study" / "study.md").read_text()
  assert "## Primary metric: arithmetic_sum/bpb" in md and "## Downstream tasks" in md
  assert set(result["task_curves"]) == {"arithmetic_sum/bpb", "markov_next/bpb"}
  assert [len(c[0]) for c in result["task_curves"]["markov_next/bpb"]["arith"]] == [4, 4, 4]
  assert (tmp_path / "study" / "plots" / "study_task_curves.png").stat().st_size > 10_000


def test_tasks_can_be_scored_less_often_than_the_losses(tmp_path):
  run_stage("reference", tmp_path / "run", SMALL + [
      "STEPS = 8", "TrainConfig.eval_every = 2", "TrainConfig.eval_tasks_every = 4",
      "TrainConfig.eval_tasks = ['markov_next']"])
  rows = files.read_jsonl(tmp_path / "run" / "eval.jsonl")
  assert [r["step"] for r in rows] == [0, 2, 4, 6, 8]
  assert [r["step"] for r in rows if "tasks" in r] == [0, 4, 8]
  assert "tasks" in json.loads((tmp_path / "run" / "eval.json").read_text())
