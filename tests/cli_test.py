"""End-to-end through `python -m doremi_jax.main`: the quickstart, kill and
resume, and bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_cli, run_cli_many

SMALL = ["--gin_file=gin/quickstart.gin",
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


def test_quickstart_command(quickstart_run):
  """README's first command (gin/quickstart.gin), unchanged but for the workdir."""
  wd, elapsed, r = quickstart_run
  assert r.returncode == 0, r.stderr[-3000:]
  assert elapsed < 180, f"quickstart took {elapsed:.0f}s"
  for f in ("config.gin", "run_info.json", "metrics.jsonl", "eval.jsonl", "eval.json",
            "reference_weights.json"):
    assert (wd / f).exists(), f
  assert (wd / "checkpoints" / "300").exists()
  assert any((wd / "tensorboard").iterdir())
  assert "TrainConfig.num_steps = 300" in (wd / "config.gin").read_text()
  evals = [json.loads(l) for l in (wd / "eval.jsonl").read_text().splitlines()]
  first, last = evals[0], json.loads((wd / "eval.json").read_text())
  assert first["step"] == 0 and last["step"] == 300
  for d in ("repeat", "markov", "arithmetic", "sort"):
    assert last["per_domain"][d]["loss"] < first["per_domain"][d]["loss"] - 0.5, d
  noise = last["per_domain"]["noise"]
  assert abs(noise["loss"] - math.log(126)) < 0.15, noise
  # The untrained model predicts uniformly (zero-initialised output layer), so
  # the noise domain starts at log 128 and can only stay near its floor.
  assert abs(first["per_domain"]["noise"]["loss"] - math.log(128)) < 1e-3
  assert last["worst_case"]["domain"] == "noise"
  assert "ETA" in r.stdout and "tok/s" in r.stdout


def test_kill_and_resume_is_bitwise_identical(tmp_path):
  ref = run_cli(SMALL, workdir=tmp_path / "full")
  assert ref.returncode == 0, ref.stderr[-3000:]

  wd = tmp_path / "killed"
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "-m", "doremi_jax.main", *SMALL, f"--workdir={wd}"],
                          cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = wd / "checkpoints" / "20"
  deadline = time.time() + 300
  while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (wd / "checkpoints" / "60").exists()

  resumed = run_cli(SMALL, workdir=wd)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stdout
  for a, b in zip(_final_params(tmp_path / "full", 60), _final_params(wd, 60)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert json.loads((wd / "eval.json").read_text())["per_domain"] == \
      json.loads((tmp_path / "full" / "eval.json").read_text())["per_domain"]


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
