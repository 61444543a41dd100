"""A study's runs spread over several workers (doremi_jax.plan): three
workers started at once with the same command on one run directory."""

import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.helpers import REPO, run_cli

STUDY = ["--gin_file=gin/cpu.gin", "--gin.run.stage='study'",
         "--gin.train_study.arms=['stratified', 'uniform']",
         "--gin.train_study.seeds=2", "--gin.TrainConfig.num_steps=20",
         "--gin.TrainConfig.checkpoint_every=5", "--gin.TrainConfig.eval_every=10",
         "--gin.TrainConfig.log_every=5",
         # a claim is stale after 6 s without a heartbeat (default 300 s)
         "--gin.Workers.stale_s=6", "--gin.Workers.heartbeat_s=1", "--gin.Workers.poll_s=0.5",
         "--gin.Workers.wait_s=0.2"]
RUNS = [f"arms/{a}/seed_{s}" for a in ("stratified", "uniform") for s in range(2)]


def _start(workdir, log, host=None):
  env = dict(os.environ, XLA_FLAGS="")
  if host:   # this worker's leases say it runs on another machine
    env["DOREMI_JAX_LEASE_HOST"] = host
  return subprocess.Popen([sys.executable, "-m", "doremi_jax.main", *STUDY,
                           f"--workdir={workdir}"], cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT, text=True)


def _claimed(text):
  return re.findall(r"claimed study/(arms/\w+/seed_\d)", text)


def test_three_workers_share_a_study_and_take_over_a_killed_one(tmp_path):
  one = tmp_path / "one"
  alone = run_cli(STUDY, workdir=one, timeout=900)
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert sorted(_claimed(alone.stdout)) == sorted(RUNS)

  wd = tmp_path / "many"
  logs = [open(tmp_path / f"worker_{i}.log", "w") for i in range(3)]
  victim = _start(wd, logs[0], host="another-machine")
  others = [_start(wd, logs[i]) for i in (1, 2)]
  deadline, run = time.time() + 600, None
  while time.time() < deadline and victim.poll() is None:   # its first run's first checkpoint
    mine = _claimed((tmp_path / "worker_0.log").read_text())
    if mine and (wd / mine[0] / "checkpoints" / "5").is_dir():
      run = mine[0]
      break
    time.sleep(0.05)
  assert run is not None, (tmp_path / "worker_0.log").read_text()[-3000:]
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  for p in others:
    assert p.wait(timeout=900) == 0
  for f in logs:
    f.close()
  texts = [(tmp_path / f"worker_{i}.log").read_text() for i in range(3)]
  for t in texts[1:]:
    assert "Traceback" not in t and "error:" not in t, t[-3000:]

  # every run claimed once, the killed worker's run a second time by a survivor
  claims = [c for t in texts for c in _claimed(t)]
  assert sorted(claims) == sorted(RUNS + [run]), claims
  taker = next(t for t in texts[1:] if f"claimed study/{run}" in t)
  assert re.search(rf"warning: taking over \S*plan/study/{run}/lock.json from process "
                   rf"{victim.pid} on host another-machine .*heartbeat is \d+ s old", taker)
  assert re.search(r"resuming from step \d+", taker.split(f"claimed study/{run}")[1])
  assert all(_claimed(t) for t in texts[1:])   # both survivors trained

  # the same numbers as one worker's study, and one report
  a = json.loads((one / "study.json").read_text())
  b = json.loads((wd / "study.json").read_text())
  assert json.dumps(a["results"]) == json.dumps(b["results"])
  assert a == json.loads(json.dumps(b).replace(str(wd), str(one)))
  plan = json.loads((wd / "plan" / "study.json").read_text())
  assert [t["key"] for t in plan["tasks"]] == RUNS
  assert not list(wd.rglob("lock.json"))   # every lease released
