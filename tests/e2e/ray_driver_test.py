"""doremi_jax.ray_driver on a local Ray instance: a study's runs as Ray
tasks, one claimed run each."""

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.e2e.workers_test import STUDY

# One arm, two seeds: two runs, claimed by two Ray tasks at once (the
# workers test shares a study of two arms among three workers).
ARGS = [a for a in STUDY if not a.startswith("--gin.train_study.arms=")] + [
    "--gin.train_study.arms=['stratified']"]
RUNS = [f"arms/stratified/seed_{s}" for s in range(2)]

pytest.importorskip("ray")


def _driver(args, timeout=900):
  import os
  return subprocess.run([sys.executable, "-m", "doremi_jax.ray_driver", *args], cwd=REPO,
                        env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True,
                        timeout=timeout)


def test_a_study_runs_as_ray_tasks_one_run_each(tmp_path):
  wd = tmp_path / "study"
  args = ARGS + [f"--workdir={wd}"]
  got = _driver(["--ray_parallel", "2", "--ray_num_cpus=1", *args])
  assert got.returncode == 0, got.stderr[-3000:]
  claims = re.findall(r"\[ray\] \[study\] claimed study/(arms/\w+/seed_\d)", got.stdout)
  assert sorted(claims) == sorted(RUNS), got.stdout[-3000:]
  tasks = int(re.search(r"the study is done: (\d+) worker task", got.stdout).group(1))
  assert len(RUNS) <= tasks <= len(RUNS) + 2   # one per run (the last one also reports)
  study = json.loads((wd / "study.json").read_text())
  assert study["arms"] == ["stratified"] and study["seeds"] == 2
  for run in RUNS:
    assert (wd / run / "complete.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--ray_parallel", "0"], "--ray_parallel must be an integer >= 1"),
    (["--ray_resources", "{bad"], "--ray_resources must be a JSON object"),
    (["--ray_num_gpus=-1"], "--ray_num_gpus must be >= 0"),
    (["--ray_nodes=3"], "ray_nodes"),
])
def test_bad_driver_flags_fail_clearly(args, message):
  got = _driver(args, timeout=120)
  assert got.returncode == 2 and message in got.stderr and "Traceback" not in got.stderr, \
      got.stderr[-2000:]
