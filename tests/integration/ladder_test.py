"""A study over a ladder of model sizes, in process: every arm x seed at
each rung with the rung's model and budget, each rung's own study.json, the
ladder's agreement recomputed from them, and a SIGTERM inside the largest
rung's run resuming to identical numbers."""

import json
import shutil

import numpy as np
import pytest

from doremi_jax import files
from doremi_jax.analysis import ladder_stats
from helpers import run_stage, stopped_run

TINY = [
    "include 'gin/cpu.gin'", "run.stage = 'study'",
    "SEQ_LEN = 32", "STEPS = 16", "BATCH = 10",
    "TrainConfig.checkpoint_every = 8", "TrainConfig.log_every = 8",
    "main/TrainConfig.eval_every = 8", "TrainConfig.eval_examples_per_domain = 8",
    "TrainConfig.eval_batch_size = 8", "TrainConfig.tensorboard = False",
    "train_study.arms = {'stratified': 'stratified', 'proportional': 'proportional', "
    "'unimax': 'unimax'}",
    "train_study.seeds = 2",
    "train_study.rungs = ['tiny', {'name': 'wide', 'ModelConfig.d_model': 96, "
    "'ModelConfig.mlp_dim': 384, 'TrainConfig.num_steps': 24}]",
]


def _ladder(workdir):
  return run_stage("study", workdir, TINY)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
  wd = tmp_path_factory.mktemp("ladder") / "run"
  return wd, _ladder(wd)


def test_every_rung_trains_its_own_size_and_the_ladder_compares_them(ladder):
  wd, result = ladder
  assert [r["name"] for r in result["rungs"]] == ["tiny", "wide"] and result["target"] == "wide"
  for rung, d_model, steps in (("tiny", 64, 16), ("wide", 96, 24)):
    for arm in ("stratified", "proportional", "unimax"):
      for seed in range(2):
        run = wd / "rungs" / rung / "arms" / arm / f"seed_{seed}"
        info = json.loads((run / "run_info.json").read_text())
        assert info["model"]["d_model"] == d_model and info["num_steps"] == steps
        assert info["seed"] == seed
    assert (wd / "rungs" / rung / "study.json").exists() and (wd / "rungs" / rung / "study.md").exists()
  assert "main/rung_wide/ModelConfig.d_model = 96" in (
      wd / "rungs" / "wide" / "arms" / "unimax" / "seed_0" / "config.gin").read_text()
  assert not (wd / "arms").exists()
  per = {r: files.read_json(wd / "rungs" / r / "study.json") for r in ("tiny", "wide")}
  # UniMax's mixture follows each rung's token budget
  assert per["tiny"]["main_model"]["train_tokens"] * 24 == per["wide"]["main_model"]["train_tokens"] * 16
  want = ladder_stats.agreement(
      {a: per["tiny"]["results"][a]["primary"]["values"] for a in per["tiny"]["arms"]},
      {a: per["wide"]["results"][a]["primary"]["values"] for a in per["wide"]["arms"]}, 0.95)
  assert result["agreement"]["tiny"] == want
  wide = per["wide"]["results"]
  best = min(wide, key=lambda a: wide[a]["primary"]["mean"])
  assert result["choice"]["arm"] == best
  assert result["power"]["wide"]["unimax"] == wide["unimax"]["power"]
  d = np.subtract(wide["unimax"]["primary"]["values"], wide["stratified"]["primary"]["values"])
  pw = wide["unimax"]["power"]
  assert np.isclose(pw["sd_of_paired_difference"], np.std(d, ddof=1))
  assert pw["level"] == 1 - 0.05 / 2 and pw["seeds_needed"] == ladder_stats.seeds_needed(
      np.std(d, ddof=1), 0.01, 1 - 0.05 / 2, 0.8)
  md = (wd / "study.md").read_text()
  assert "## Does the ranking transfer?" in md and "plots/ladder.png" in md
  assert (wd / "plots" / "ladder.png").stat().st_size > 0


def test_sigterm_inside_the_largest_rung_resumes_to_identical_numbers(ladder, tmp_path):
  wd, result = ladder
  copy = tmp_path / "run"
  shutil.copytree(wd, copy)
  run = copy / "rungs" / "wide" / "arms" / "unimax" / "seed_1"
  shutil.rmtree(run)
  for p in (copy / "study.json", copy / "rungs" / "wide" / "study.json"):
    p.unlink()
  stopped = stopped_run(lambda: _ladder(copy), 13)
  assert stopped.step == 13 and (run / "checkpoints" / "13").is_dir()
  assert not (copy / "study.json").exists()
  again = _ladder(copy)
  assert json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)


LOSER = "{'noise': 1, 'repeat': 0, 'markov': 0, 'arithmetic': 0, 'sort': 0}"
HALVING = TINY[:-3] + [
    f"train_study.arms = {{'stratified': 'stratified', 'doremi': 'doremi', "
    f"'noise_only': {LOSER}}}", "train_study.method_seeds = 'shared'",
    "train_study.seeds = 2", "train_study.schedule = 'halving'", "train_study.keep = 0.34",
    # two seeds leave one degree of freedom: at 0.95 (0.975 adjusted) the t interval's
    # half-width is 25 sd, so a lower level lets the planted loser be beaten
    "train_study.level = 0.8",
    TINY[-1],
]


def test_halving_drops_a_planted_loser_after_the_first_rung_and_resumes_to_the_same_decisions(
    tmp_path):
  wd = tmp_path / "run"
  result = run_stage("study", wd, HALVING)
  d = result["schedule"]["decisions"]
  assert len(d) == 1 and d[0]["rung"] == "tiny" and list(d[0]["stopped"]) == ["noise_only"]
  assert d[0]["stopped"]["noise_only"].startswith(f"beaten by {d[0]['best']}:")
  assert result["schedule"]["stopped_at"] == {"noise_only": "tiny"}
  assert (wd / "rungs" / "tiny" / "arms" / "noise_only").is_dir()
  assert not (wd / "rungs" / "wide" / "arms" / "noise_only").exists()     # never trained again
  assert sorted(result["metrics"]["wide"]) == ["doremi", "stratified"]
  c = result["schedule"]["compute"]
  assert 0 < c["fraction_of_grid"] < 1
  md = (wd / "study.md").read_text()
  assert "## Schedule: successive halving" in md and "**noise_only**: beaten by" in md
  # a SIGTERM inside the top rung's run, and the re-run: the same decisions and numbers
  copy = tmp_path / "copy"
  shutil.copytree(wd, copy)
  shutil.rmtree(copy / "rungs" / "wide" / "arms" / "doremi" / "seed_1")
  for p in (copy / "study.json", copy / "rungs" / "wide" / "study.json"):
    p.unlink()
  assert stopped_run(lambda: run_stage("study", copy, HALVING), 13).step == 13
  again = run_stage("study", copy, HALVING)
  assert json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)


def test_doremi_at_a_rung_runs_its_reference_and_proxy_at_that_size(tmp_path):
  """'doremi@wide': DoReMi's own runs at the rung's model size, in their own
  directory, beside plain 'doremi' at gin's size (the method runs alone)."""
  from doremi_jax.stages import ladder as ladder_lib
  from doremi_jax.stages import study
  from helpers import configure
  configure(TINY[:-1] + ["train_study.method_seeds = 'shared'", "STEPS = 4"])
  rungs = ladder_lib.parse_rungs(["tiny", {"name": "wide", "ModelConfig.d_model": 96}])
  made = study.make_arms({"a": "doremi", "b": "doremi:1@wide"}, str(tmp_path), seeds=2,
                         method_seeds="shared", scales={r.name: r for r in rungs})
  assert [a.scale for a in made] == [None, "wide"] and made[1].round() == 1
  import jax
  from doremi_jax import context
  with context.using(devices=jax.devices()[:1]):
    type(made[0]).prepare_all(made, made[0].study)
  for arm, d_model, where in ((made[0], 64, "doremi"), (made[1], 96, "doremi_at_wide")):
    for run in arm.method_runs:
      assert f"/{where}/" in run
      assert json.loads((files.path(run) / "run_info.json").read_text())["model"]["d_model"] \
          == d_model
    assert set(arm.final[None]) == set(made[0].study.corpus.domains)


def test_a_swarm_at_a_rung_and_in_groups_is_planned_one_task_per_group(tmp_path):
  """'swarm:linear@wide': the swarm's members at the rung's model size, in
  RUN/swarm_at_wide, beside plain 'swarm' at gin's size. With
  `train_swarm.groups = 2` the study's plan gives every group of every
  swarm its own task, before the kind's task that fits; running the plan
  trains each group once, and each arm is charged with its swarm's groups."""
  from doremi_jax import context, plan
  from doremi_jax.stages import ladder as ladder_lib
  from doremi_jax.stages import study
  from helpers import configure
  import jax
  configure(TINY[:-1] + [
      "train_study.method_seeds = 'shared'", "STEPS = 4", "train_swarm.members = 6",
      "train_swarm.groups = 2", "train_swarm.folds = 3", "train_swarm.candidates = 2000",
      "train_swarm.top_k = 16"])
  rungs = ladder_lib.parse_rungs(["tiny", {"name": "wide", "ModelConfig.d_model": 96}])
  with context.using(devices=jax.devices()[:1]):
    made = study.make_arms({"a": "swarm", "b": "swarm:linear@wide"}, str(tmp_path), seeds=2,
                           method_seeds="shared", scales={r.name: r for r in rungs})
    assert [(a.scale, a.law()) for a in made] == [(None, ""), ("wide", "linear")]
    tasks, read = study.plan_tasks(made, 2)
    keys = [t.key for t in tasks]
    groups = ["methods/swarm/shared/group_0", "methods/swarm/shared/group_1",
              "methods/swarm/shared/at_wide/group_0", "methods/swarm/shared/at_wide/group_1"]
    assert keys[:5] == groups + ["methods/swarm/shared"]
    assert set(tasks[4].deps) == set(groups)
    assert not any(t.complete() for t in tasks[:4])
    plan.execute(tmp_path, "study", tasks[:5], print)   # one worker: the method tasks
    assert all(t.complete() for t in tasks[:4])
    read()
  for arm, d_model, where in ((made[0], 64, "swarm"), (made[1], 96, "swarm_at_wide")):
    assert [files.path(r).name for r in arm.method_runs] == ["group_0", "group_1"]
    for run in arm.method_runs:
      assert f"/{where}/" in run
      info = json.loads((files.path(run) / "run_info.json").read_text())
      assert (info["model"]["d_model"], info["members"]) == (d_model, 3)
    assert set(arm.final[None]) == set(made[0].study.corpus.domains)
    swarm = json.loads((tmp_path / where / "swarm.json").read_text())
    assert arm.final[None] == swarm["laws"][arm.law() or swarm["law"]]["optimum"]
