"""End-to-end through `python -m doremi_jax.main`: the quickstart pipeline, the
reference stage's kill and resume, and bad input."""

import json
import math
import os
import re
import signal

import numpy as np
import pytest

from helpers import run_cli, run_cli_many, run_cli_signalled, run_cli_until


SMALL = ["--gin_file=gin/reference.gin",
         "--gin.TrainConfig.num_steps=60", "--gin.TrainConfig.checkpoint_every=10",
         "--gin.TrainConfig.global_batch_size=16", "--gin.TrainConfig.seq_len=64",
         "--gin.SyntheticCorpusConfig.seq_len=64", "--gin.TrainConfig.log_every=10",
         "--gin.TrainConfig.eval_examples_per_domain=32"]


def _final_params(workdir, step):
  import orbax.checkpoint as ocp
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state"))
  import jax
  return jax.tree.leaves(restored["params"])


PLOTS = ("weights_final_vs_reference.png", "weights_across_rounds.png",
         "proxy_weights_round_1.png", "main_doremi_vs_baseline.png", "training_curves.png")


def test_quickstart_command(quickstart_run):
  """README's first command (gin/quickstart.gin, the whole pipeline), unchanged
  but for the workdir: under 5 minutes on 2 cores, every stage, the report."""
  wd, elapsed, r = quickstart_run
  assert r.returncode == 0, r.stderr[-3000:]
  assert elapsed < 300, f"quickstart took {elapsed:.0f}s"
  for stage in ("round_1/reference", "round_1/proxy", "main_doremi", "main_baseline"):
    done = json.loads((wd / stage / "complete.json").read_text())
    assert done["num_steps"] == 200, (stage, done)
    assert done["timing"]["later_steps"] == 199 and done["timing"]["first_step_seconds"] > 0
  state = json.loads((wd / "pipeline.json").read_text())
  assert state["status"] == "complete" and len(state["rounds"]) == 1
  assert all(s["status"] == "ran" for s in state["stages"].values())
  weights = json.loads((wd / "round_1" / "proxy" / "average_domain_weights.json").read_text())
  assert state["final_weights"] == weights
  assert weights["noise"] < 0.05, weights
  assert json.loads((wd / "main_doremi" / "main_weights.json").read_text()) == \
      pytest.approx(weights, rel=1e-6)
  assert json.loads((wd / "main_baseline" / "main_weights.json").read_text()) == \
      pytest.approx({d: 0.2 for d in weights})
  cmp = json.loads((wd / "comparison.json").read_text())
  assert set(cmp["per_domain"]) == set(weights)
  for d, row in cmp["per_domain"].items():
    assert row["delta"] == pytest.approx(row["doremi"] - row["baseline"])
  report = (wd / "report.md").read_text()
  for plot in PLOTS:
    assert (wd / "plots" / plot).stat().st_size > 10_000, plot
    assert f"plots/{plot}" in report
  assert "Nothing: every stage finished." in report
  assert "## Health checks" in report and "| Step 2 weight collapse |" in report
  assert "| repetition (final weights, main_doremi's budget) |" in report
  # Each stage announces itself, shows progress with an ETA and a summary.
  for line in ("[pipeline] round 1/1, Step 1: reference model: starting",
               "[pipeline] round 1/1, Step 2: Group-DRO proxy: starting",
               "[pipeline] Step 3: main model on the DoReMi weights: starting",
               "[pipeline] baseline: main model on the reference weights: starting",
               "[reference] done in", "[proxy] done in", "[main] done in",
               f"[pipeline] report: {wd / 'report.md'}"):
    assert line in r.stdout, line
  assert "ETA" in r.stdout and "tok/s" in r.stdout
  # A newcomer's first screen: no TensorFlow/CUDA/libtpu start-up chatter.
  for word in ("cuInit", "cudart", "TPU_ACCELERATOR_TYPE", "libtpu", "absl::InitializeLog"):
    assert word not in r.stdout + r.stderr, word


def test_quickstart_reference_stage(quickstart_run):
  """Step 1 of the quickstart: files, learning, the noise domain at its floor."""
  wd, _, r = quickstart_run
  assert r.returncode == 0, r.stderr[-3000:]
  wd = wd / "round_1" / "reference"
  for f in ("config.gin", "run_info.json", "metrics.jsonl", "eval.jsonl", "eval.json",
            "reference_weights.json"):
    assert (wd / f).exists(), f
  assert (wd / "checkpoints" / "200").exists()
  assert any((wd / "tensorboard").iterdir())
  config = (wd / "config.gin").read_text()
  assert "reference/TrainConfig.num_steps = %STEPS" in config and "STEPS = 200" in config
  evals = [json.loads(l) for l in (wd / "eval.jsonl").read_text().splitlines()]
  first, last = evals[0], json.loads((wd / "eval.json").read_text())
  assert first["step"] == 0 and last["step"] == 200
  for d in ("repeat", "markov", "arithmetic", "sort"):
    assert last["per_domain"][d]["loss"] < first["per_domain"][d]["loss"] - 0.5, d
  noise = last["per_domain"]["noise"]
  assert abs(noise["loss"] - math.log(126)) < 0.15, noise
  # The untrained model predicts uniformly (zero-initialised output layer), so
  # the noise domain starts at log 128 and can only stay near its floor.
  assert abs(first["per_domain"]["noise"]["loss"] - math.log(128)) < 1e-3
  assert last["worst_case"]["domain"] == "noise"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """SMALL run uninterrupted: what a killed or stopped run must end as."""
  full = tmp_path_factory.mktemp("cli") / "full"
  ref = run_cli(SMALL, workdir=full)
  assert ref.returncode == 0, ref.stderr[-3000:]
  return full


def test_kill_and_resume_is_bitwise_identical(full_run, tmp_path):
  (tmp_path / "full").symlink_to(full_run)
  wd = tmp_path / "killed"
  run_cli_until(SMALL, wd, wd / "checkpoints" / "20", timeout=300)
  assert not (wd / "checkpoints" / "60").exists()

  resumed = run_cli(SMALL, workdir=wd)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stdout
  for a, b in zip(_final_params(tmp_path / "full", 60), _final_params(wd, 60)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert json.loads((wd / "eval.json").read_text())["per_domain"] == \
      json.loads((tmp_path / "full" / "eval.json").read_text())["per_domain"]


def _stopped_step(stderr):
  m = re.search(r"\[reference\] stopped on (SIGTERM|SIGINT) at step (\d+), with a checkpoint of "
                r"that step in (\S+); re-run the same command to resume", stderr)
  assert m, stderr[-3000:]
  return m.group(1), int(m.group(2))


def test_sigterm_saves_the_step_in_flight_and_the_rerun_is_bitwise_identical(full_run,
                                                                              tmp_path):
  """SIGTERM once checkpoint 20 is being written: exit 75 with a checkpoint
  of the step it stopped at, no traceback; the re-run ends as the
  uninterrupted run."""
  full = full_run
  wd = tmp_path / "stopped"
  got = run_cli_signalled(SMALL, wd, wd / "checkpoints" / "20", [signal.SIGTERM])
  assert got.returncode == 75, got.stderr[-3000:]
  reason, step = _stopped_step(got.stderr)
  assert reason == "SIGTERM" and 20 <= step < 60 and "Traceback" not in got.stderr
  assert (wd / "checkpoints" / str(step)).is_dir() and not (wd / "complete.json").exists()
  resumed = run_cli(SMALL, workdir=wd)
  assert resumed.returncode == 0 and f"resuming from step {step}" in resumed.stdout
  for a, b in zip(_final_params(full, 60), _final_params(wd, 60)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rows = [[{k: v for k, v in json.loads(l).items() if k != "timestamp"}
           for l in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, wd)]
  assert rows[0] == rows[1]


def test_ctrl_c_stops_like_sigterm_and_a_second_one_aborts_without_a_traceback(tmp_path):
  once = tmp_path / "once"
  got = run_cli_signalled(SMALL, once, once / "checkpoints" / "10", [signal.SIGINT])
  assert got.returncode == 75 and _stopped_step(got.stderr)[0] == "SIGINT", got.stderr[-3000:]
  twice = tmp_path / "twice"
  got = run_cli_signalled(SMALL, twice, twice / "checkpoints" / "10",
                          [signal.SIGINT, signal.SIGINT])
  if got.returncode == 75:   # the run stopped within the 0.2 s before the second
    return
  assert got.returncode == 130, got.stderr[-3000:]
  assert "Traceback" not in got.stderr and "KeyboardInterrupt" not in got.stderr
  assert "error: interrupted (Ctrl-C)" in got.stderr
  assert run_cli(SMALL, workdir=twice).returncode == 0   # and it resumes


def test_one_writer_per_run_directory_and_a_killed_holder_is_taken_over(full_run, tmp_path):
  """Two processes started at once on one workdir: one trains, the other
  exits 2 naming the holder. A holder killed with SIGKILL leaves its lease:
  the next run finds its process gone, takes the lease over and resumes."""
  wd = tmp_path / "run"
  both = run_cli_many([(SMALL, wd), (SMALL, wd)])
  codes = sorted(r.returncode for r in both)
  assert codes == [0, 2], [r.stderr[-2000:] for r in both]
  refused = next(r for r in both if r.returncode == 2)
  assert re.search(r"error: \S+ is in use by process \d+ on host ", refused.stderr), \
      refused.stderr[-2000:]
  assert "Traceback" not in refused.stderr and not (wd / "lock.json").exists()
  rows = [json.loads(l)["step"] for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert rows == sorted(set(rows))   # one writer: every step once

  killed = tmp_path / "killed"
  run_cli_until(SMALL, killed, killed / "checkpoints" / "20", timeout=300)
  holder = json.loads((killed / "lock.json").read_text())
  resumed = run_cli(SMALL, workdir=killed)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"warning: taking over {killed / 'lock.json'} from process {holder['pid']}" \
      in resumed.stdout and "resuming from step" in resumed.stdout
  for a, b in zip(_final_params(full_run, 60), _final_params(killed, 60)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


BAD = [
    (["--gin.TrainConfig.num_stepz=5"], "num_stepz"),
    (["--gin.MeshConfig.data=3"], "needs 3 devices but 1"),
    (["--gin.train_reference.weights={'noise': 1, 'wiki': 1}"], "unknown domains ['wiki']"),
    (["--gin.train_reference.weights={'noise': -1, 'repeat': 1, 'markov': 1, "
      "'arithmetic': 1, 'sort': 1}"], "non-negative"),
    (["--gin_file=gin/does_not_exist.gin"], "does not exist"),
]


def test_bad_input_fails_clearly_and_keeps_files(tmp_path):
  jobs = []
  for i, (extra, _) in enumerate(BAD):
    wd = tmp_path / f"run{i}"
    wd.mkdir()
    (wd / "config.gin").write_text("# from an earlier run\n")
    (wd / "notes.txt").write_text("keep me")
    jobs.append((SMALL + extra, wd))
  for (extra, message), (_, wd), r in zip(BAD, jobs, run_cli_many(jobs)):
    assert r.returncode == 2, (extra, r.returncode, r.stderr[-2000:])
    assert message in r.stderr, (extra, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in wd.iterdir()) == ["config.gin", "notes.txt"]
    assert (wd / "config.gin").read_text() == "# from an earlier run\n"


def test_batch_not_divisible_by_data_parallel_cli(tmp_path):
  r = run_cli(SMALL + ["--gin.TrainConfig.global_batch_size=12", "--gin.MeshConfig.data=8"],
              workdir=tmp_path / "r",
              env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert r.returncode == 2
  assert "not divisible by the data-parallel size 8" in r.stderr
  assert not (tmp_path / "r").exists()


def test_python_dash_m_package_is_main(tmp_path):
  """`python -m doremi_jax` runs the same entry point as `python -m
  doremi_jax.main`: it trains, and it refuses bad input the same way."""
  import subprocess
  import sys
  from helpers import REPO
  env = dict(os.environ, XLA_FLAGS="")
  base = [sys.executable, "-m", "doremi_jax", *SMALL, "--gin.TrainConfig.num_steps=2",
          "--gin.TrainConfig.checkpoint_every=2", "--gin.TrainConfig.log_every=1"]
  ok = subprocess.run(base + [f"--workdir={tmp_path / 'ok'}"], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert (tmp_path / "ok" / "complete.json").exists()
  bad = subprocess.run(base + ["--gin.TrainConfig.num_steps=-1", f"--workdir={tmp_path / 'bad'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr[-2000:]
  assert "Traceback" not in bad.stderr
