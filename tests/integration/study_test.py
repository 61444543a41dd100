"""Stage `study`: bad input before any training, UniMax against NumPy, and a
tiny study in process with a planted effect and an exact resume."""

import json
import re
import shutil

import numpy as np
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.stages import study
from doremi_jax import arms as arms_lib
from doremi_jax.arms import static as static_arms

from helpers import run_stage, stopped_run

TINY = [
    "include 'gin/cpu.gin'", "run.stage = 'study'",
    "SEQ_LEN = 32", "STEPS = 20", "BATCH = 10",
    "TrainConfig.checkpoint_every = 10", "TrainConfig.log_every = 10",
    "TrainConfig.eval_every = 10", "TrainConfig.eval_examples_per_domain = 8",
    "TrainConfig.eval_batch_size = 8", "TrainConfig.tensorboard = False",
]
NO_REPEAT = "{'noise': 1, 'repeat': 0, 'markov': 1, 'arithmetic': 1, 'sort': 1}"


def _study(workdir, *bindings):
  return run_stage("study", workdir, TINY + list(bindings))


def np_unimax(sizes, budget, epochs):
  """UniMax written as its paper states it: smallest domain first, each gets
  min(uniform share of what is left, epochs x its size)."""
  sizes = [float(s) for s in sizes]
  order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
  out, left = [0.0] * len(sizes), float(budget)
  for n, i in enumerate(order):
    out[i] = min(left / (len(sizes) - n), epochs * sizes[i])
    left -= out[i]
  return np.array(out) / sum(out)


@pytest.mark.parametrize("seed", range(4))
def test_unimax_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(10, 10_000, 6)
  budget, epochs = float(rng.integers(1_000, 40_000)), float(rng.choice([1, 2, 4]))
  np.testing.assert_allclose(static_arms.unimax_weights(sizes, budget, epochs),
                             np_unimax(sizes, budget, epochs), rtol=1e-12)


def test_unimax_caps_small_domains_and_spreads_the_rest():
  w = static_arms.unimax_weights([10, 1000, 1000], 300, 1.0)
  np.testing.assert_allclose(w * 300, [10, 145, 145])
  np.testing.assert_allclose(static_arms.unimax_weights([10, 10], 10**6, 1.0), [0.5, 0.5])


@pytest.mark.parametrize("binding, message", [
    ("train_study.arms = {'stratified': 'stratified', 'x': 'no_such_arm'}",
     "'no_such_arm' is not an arm. An arm is one of the study's methods (stratified, unimax, "
     "doremi, doremi:N, doremi@RUNG, swarm, swarm:LAW, swarm@RUNG, odm, ado, doremi_online, "
     "aioli)"),
    ("train_study.arms = ['stratified', 'swarm@big']",
     "'swarm@big' names the rung 'big', but train_study.rungs has none"),
    ("train_study.arms = ['stratified', 'swarm:cubic']", "'swarm:cubic' names no law"),
    ("train_study.arms = ['stratified', 'swarm']\ntrain_swarm.members = 3",
     "train_swarm.members=3 is too few for 5 domains"),
    ("train_study.arms = ['stratified', 'doremi:0']", "'doremi:0' names no round"),
    ("train_study.arms = ['stratified', 'doremi:two']", "'doremi:two' names no round"),
    ("train_study.arms = ['stratified', 'doremi@big']",
     "'doremi@big' names the rung 'big', but train_study.rungs has none"),
    ("train_study.arms = ['stratified', 'doremi']\ntrain_study.rounds = 0",
     "train_study.rounds must be an integer >= 1"),
    ("train_study.arms = ['uniform', 'proportional']",
     "train_study.baseline='stratified' is not one of the arms"),
    ("train_study.arms = ['stratified']\ntrain_study.seeds = 1",
     "train_study.seeds must be an integer >= 2"),
    ("train_study.arms = {'stratified': 'stratified', 'w': {'noise': 1, 'wiki': 1}}",
     "unknown domains ['wiki']"),
    ("train_study.arms = {'stratified': 'stratified', 'l': [{'noise': 1}]}",
     "cannot read"),
])
def test_bad_study_input_fails_before_any_training(tmp_path, binding, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    _study(tmp_path / "s", *binding.split("\n"))
  assert not (tmp_path / "s").exists()


def test_doremi_round_of_an_arm(tmp_path):
  _configure = TINY + ["train_study.arms = ['stratified']"]
  from helpers import configure
  configure(_configure)
  arms = study.make_arms({"a": "doremi", "b": "doremi:2", "c": "uniform", "d": {"noise": 1,
                          "repeat": 1, "markov": 1, "arithmetic": 1, "sort": 1}},
                         str(tmp_path), rounds=3)
  assert [a.kind for a in arms] == ["doremi", "doremi", "weights", "weights"]
  assert [a.round() for a in arms[:2]] == [3, 2]


ARMS = (f"train_study.arms = {{'stratified': 'stratified', 'no_repeat': {NO_REPEAT}, "
        "'doremi': 'doremi', 'doremi2': 'doremi:2', 'online': 'doremi_online', "
        "'swarm_gbm': 'swarm:gbm'}")
SWARM = ["train_swarm.members = 6", "train_swarm.folds = 3", "train_swarm.candidates = 2000",
         "train_swarm.top_k = 16"]


# one method run per method, shared by the seeds (per-seed runs are tested below)
TINY_STUDY = ["train_study.seeds = 3", "train_pipeline.tolerance = 0.0",
              "train_study.method_seeds = 'shared'", *SWARM]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  wd = tmp_path_factory.mktemp("study") / "run"
  result = _study(wd, ARMS, *TINY_STUDY)
  return wd, result


def test_study_json_planted_effect_and_speedup(tiny_study):
  wd, result = tiny_study
  on_disk = json.loads((wd / "study.json").read_text())
  assert on_disk == json.loads(json.dumps(result))
  assert on_disk["baseline"] == "stratified" and on_disk["seeds"] == 3
  assert on_disk["arms"] == ["stratified", "no_repeat", "doremi", "doremi2", "online",
                            "swarm_gbm"]
  for arm in on_disk["arms"]:
    r = on_disk["results"][arm]
    for key in ("uniform_avg", "worst_case"):
      assert set(r[key]) >= {"mean", "ci"} and r[key]["ci"][0] <= r[key]["mean"] <= r[key]["ci"][1]
    assert set(r["domains"]) == set(on_disk["domains"])
    assert r["cost"]["fraction_of_one_main_run"] > 0
  # an arm that never samples a learnable domain loses on it and on average
  vs = on_disk["results"]["no_repeat"]["vs_baseline"]
  assert vs["domains"]["repeat"]["verdict"] == "loses", vs["domains"]["repeat"]
  assert vs["uniform_avg"]["verdict"] == "loses", vs["uniform_avg"]
  assert on_disk["results"]["stratified"]["speedup"]["mean"] == 1.0
  # DoReMi's own runs are counted in its cost
  cost = on_disk["results"]["doremi"]["cost"]
  assert cost["method_flops"] > 0 and cost["fraction_of_one_main_run"] > 1.5
  # 'doremi' is round 1 of the shared iterated run, 'doremi:2' round 2, each
  # charged the rounds it needed
  rounds = json.loads((wd / "doremi" / "pipeline.json").read_text())["rounds"]
  assert len(rounds) == 2
  for arm, r in (("doremi", rounds[0]), ("doremi2", rounds[1])):
    assert on_disk["results"][arm]["weights"] == pytest.approx(r["weights"], rel=1e-12)
  cost2 = on_disk["results"]["doremi2"]["cost"]
  assert cost2["method_flops"] == pytest.approx(2 * cost["method_flops"], rel=1e-9)
  # the online arm: against DoReMi's round-1 reference, its weights the
  # mean over seeds of each run's time-averaged rates, drawn over time
  online = [json.loads((wd / "arms" / "online" / f"seed_{s}" / "average_mixture_weights.json")
                       .read_text()) for s in range(3)]
  assert on_disk["results"]["online"]["weights"] == pytest.approx(
      {d: np.mean([o[d] for o in online]) for d in on_disk["domains"]}, rel=1e-9)
  info = json.loads((wd / "arms" / "online" / "seed_0" / "run_info.json").read_text())
  assert info["reference_dir"] == rounds[0]["reference_dir"]
  assert info["mixer"]["method"] == "doremi_online"
  assert (wd / "plots" / "study_mixer_rates.png").stat().st_size > 10_000
  # a swarm arm: the swarm's law's optimum, charged the swarm
  swarm = json.loads((wd / "swarm" / "swarm.json").read_text())
  assert swarm["law"] == "loglinear"
  assert on_disk["results"]["swarm_gbm"]["weights"] == pytest.approx(
      swarm["laws"]["gbm"]["optimum"], rel=1e-12)
  assert on_disk["results"]["swarm_gbm"]["cost"]["fraction_of_one_main_run"] > 6   # 6 members
  # the law's prediction (fitted on tune) beside the arm's test losses
  assert swarm["split"] == "tune" and on_disk["split"] == "test"
  law = on_disk["results"]["swarm_gbm"]["law_prediction"]
  assert (law["predicted_from"], law["measured_on"]) == ("tune", "test")
  assert law["predicted"]["average"] == pytest.approx(swarm["laws"]["gbm"]["predicted"]["average"])
  assert law["predicted"]["objective"] == pytest.approx(
      swarm["laws"]["gbm"]["predicted_objective"])
  assert law["measured"]["average"] == pytest.approx(
      on_disk["results"]["swarm_gbm"]["uniform_avg"]["mean"])
  report = (wd / "study.md").read_text()
  assert "## Verdicts" in report and "## Health checks" in report and "Bonferroni" in report
  assert (wd / "plots" / "study_forest.png").stat().st_size > 10_000
  assert any(l["check"].startswith("domains starved (no_repeat)") and l["status"] == "WARN"
             for l in on_disk["health"])
  # DoReMi's runs are checked once each, by round, though two arms share them
  checks = [l["check"] for l in on_disk["health"]]
  assert len(checks) == len(set(checks)), checks
  assert {"Step 2 weight collapse (round 1)", "Step 2 weight collapse (round 2)",
          "iterated rounds"} <= set(checks)


def test_killed_study_resumes_to_identical_numbers(tiny_study, tmp_path):
  wd, result = tiny_study
  copy = tmp_path / "run"
  shutil.copytree(wd, copy)
  run = copy / "arms" / "no_repeat" / "seed_2"
  for p in (run / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > 10:
      shutil.rmtree(p)
  for name in ("complete.json", "eval.json"):
    (run / name).unlink()
  (copy / "study.json").unlink()
  again = _study(copy, ARMS, *TINY_STUDY)
  assert json.dumps(again["results"]) == json.dumps(result["results"])


def test_sigterm_stops_a_study_inside_a_run_and_it_resumes_to_identical_numbers(tiny_study,
                                                                                tmp_path):
  """One arm's run not started yet (the others complete): SIGTERM at its
  step 13 stops the study with a checkpoint of step 13; the re-run ends
  with that run's metrics and the study's numbers as uninterrupted."""
  wd, result = tiny_study
  copy = tmp_path / "run"
  shutil.copytree(wd, copy)
  run = copy / "arms" / "no_repeat" / "seed_2"
  shutil.rmtree(run)
  (copy / "study.json").unlink()
  stopped = stopped_run(lambda: _study(copy, ARMS, *TINY_STUDY), 13)
  assert stopped.step == 13 and (run / "checkpoints" / "13").is_dir()
  assert not (run / "complete.json").exists() and not (copy / "study.json").exists()
  again = _study(copy, ARMS, *TINY_STUDY)
  assert json.dumps(again["results"]) == json.dumps(result["results"])
  rows = [[{k: v for k, v in json.loads(l).items() if k != "timestamp"}
           for l in (d / "metrics.jsonl").read_text().splitlines()]
          for d in (wd / "arms" / "no_repeat" / "seed_2", run)]
  assert rows[0] == rows[1]


class Noisy(arms_lib.Arm):
  """A planted method whose output depends on its seed: even method seeds
  give a mixture almost all noise, odd ones (and the shared run) uniform."""
  kind, spelling = "noisy", "noisy"

  @classmethod
  def matches(cls, spec):
    return spec == "noisy"

  @classmethod
  def prepare_all(cls, arms, study):
    domains = study.corpus.domains
    for seed in study.method_seeds():
      heavy = seed is not None and seed % 2 == 0
      w = {d: (0.96 if d == "noise" else 0.01) if heavy else 1 / len(domains) for d in domains}
      for arm in arms:
        arm.final[seed] = w


@pytest.mark.parametrize("method_seeds", ["shared", "per_seed"])
def test_a_noisy_methods_interval_includes_its_seed_only_per_seed(tmp_path, method_seeds):
  arms_lib.register(Noisy)
  try:
    result = _study(tmp_path / "s", "train_study.arms = ['uniform', 'noisy']",
                    "train_study.baseline = 'uniform'", "train_study.seeds = 2",
                    f"train_study.method_seeds = '{method_seeds}'")
  finally:
    arms_lib.unregister(Noisy)
  assert result["method_seeds"] == method_seeds
  trained = [json.loads((tmp_path / "s" / "arms" / "noisy" / f"seed_{s}" /
                         "main_weights.json").read_text())["noise"] for s in range(2)]
  diff = result["results"]["noisy"]["vs_baseline"]["uniform_avg"]
  if method_seeds == "shared":
    assert trained == pytest.approx([0.2, 0.2])
    # the same mixture for both seeds: the paired difference is ~0, and tight
    assert abs(diff["diff"]) < 1e-6 and diff["ci"][1] - diff["ci"][0] < 1e-5
  else:
    assert trained == pytest.approx([0.96, 0.2])
    # seed 0's method gave another mixture: the interval is wide
    assert diff["ci"][1] - diff["ci"][0] > 0.05, diff
  assert ("per seed" if method_seeds == "per_seed" else "shared") in (
      tmp_path / "s" / "study.md").read_text()


def test_per_seed_doremi_runs_its_reference_and_proxy_with_every_seed(tmp_path):
  result = _study(tmp_path / "s", "train_study.arms = ['stratified', 'doremi']",
                  "train_study.seeds = 2")
  assert result["method_seeds"] == "per_seed"
  weights = []
  for seed in range(2):
    root = tmp_path / "s" / "doremi" / f"seed_{seed}" / "round_1"
    for stage in ("reference", "proxy"):
      assert json.loads((root / stage / "run_info.json").read_text())["seed"] == seed
    weights.append(json.loads((root / "proxy" / "average_domain_weights.json").read_text()))
    trained = json.loads((tmp_path / "s" / "arms" / "doremi" / f"seed_{seed}" /
                          "main_weights.json").read_text())
    assert trained == pytest.approx(weights[-1], rel=1e-6)   # normalised on reading
  assert weights[0] != weights[1]
  assert not (tmp_path / "s" / "doremi" / "round_1").exists()
  # one seed's method runs charged to each seed
  from doremi_jax.analysis import study_stats
  one_seed = np.mean([sum(study_stats.run_flops(tmp_path / "s" / "doremi" / f"seed_{s}" /
                                                "round_1" / stage)
                          for stage in ("reference", "proxy")) for s in range(2)])
  assert result["results"]["doremi"]["cost"]["method_flops"] == pytest.approx(one_seed)
