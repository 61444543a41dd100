"""A real 2-process run on this machine: jax.distributed on 127.0.0.1 with
gloo CPU collectives, 2 CPU devices per process. Reference, proxy and main
(with an online mixer) stages; identical weights and rates on both
processes, equal to a 1-process run on 4 devices;
a checkpoint written by 2 processes restores in 1 process."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO


STAGE_ARGS = ["--gin.TrainConfig.num_steps=12", "--gin.TrainConfig.checkpoint_every=6",
              "--gin.TrainConfig.global_batch_size=20", "--gin.TrainConfig.seq_len=64",
              "--gin.SyntheticCorpusConfig.seq_len=64", "--gin.TrainConfig.log_every=3",
              "--gin.TrainConfig.eval_examples_per_domain=16",
              "--gin.TrainConfig.eval_batch_size=20", "--gin.TrainConfig.tensorboard=False"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(args, workdir, nproc, devices_per_process):
  """Starts the CLI in `nproc` processes (jax.distributed when nproc > 1)."""
  port = _free_port()
  procs = []
  for pid in range(nproc):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count="
                                     f"{devices_per_process}", JAX_PLATFORMS="cpu")
    if nproc > 1:
      env.update(DOREMI_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 DOREMI_NUM_PROCESSES=str(nproc), DOREMI_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "doremi_jax.main", *args, f"--workdir={workdir}"], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _run(args, workdir, nproc, devices_per_process):
  """Runs the CLI in `nproc` processes; returns their stdouts."""
  procs = _start(args, workdir, nproc, devices_per_process)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return [o for o, _ in outs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  ref2, proxy2 = tmp / "ref2", tmp / "proxy2"
  proxy1 = tmp / "proxy1"
  out = {}
  out["ref2"] = _run(["--gin_file=gin/reference.gin", *STAGE_ARGS], ref2, 2, 2)
  proxy_args = ["--gin_file=gin/proxy.gin", *STAGE_ARGS]
  out["proxy2"] = _run(proxy_args + [f"--gin.train_proxy.reference_dir='{ref2}'"], proxy2, 2, 2)
  # 1 process, 4 devices, against the reference checkpoint the 2 processes wrote.
  out["proxy1"] = _run(proxy_args + [f"--gin.train_proxy.reference_dir='{ref2}'"], proxy1, 1, 4)
  # The main stage with an online mixer (online DoReMi, against the same
  # reference): its rates come from the replicated mixer state.
  mixer_args = ["--gin_file=gin/main.gin", *STAGE_ARGS, "--gin.train_main_model.weights='uniform'",
                "--gin.train_main_model.mixer='doremi_online'",
                f"--gin.train_main_model.reference_dir='{ref2}'",
                # downstream tasks, scored and decoded over both processes
                "--gin.TrainConfig.eval_tasks=['markov_next', 'repeat_cycle']",
                "--gin.TrainConfig.eval_task_examples=8"]
  out["mixer2"] = _run(mixer_args, tmp / "mixer2", 2, 2)
  out["mixer1"] = _run(mixer_args, tmp / "mixer1", 1, 4)
  return tmp, out


def test_two_processes_write_once_and_agree(runs):
  tmp, out = runs
  info = json.loads((tmp / "ref2" / "run_info.json").read_text())
  assert info["process_count"] == 2 and info["num_devices"] == 4
  assert (tmp / "ref2" / "checkpoints" / "12").exists()
  # Only process 0 logs and writes: one metrics row per logged step.
  rows = [json.loads(l) for l in (tmp / "proxy2" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [3, 6, 9, 12]
  assert "[proxy] step 12/12" in out["proxy2"][0] and "[proxy]" not in out["proxy2"][1]
  assert "domain weights identical on all 2 processes at every logged step" in out["proxy2"][0]


def test_two_processes_equal_one_process_on_four_devices(runs):
  tmp, _ = runs
  # (the LM step's 2-process == 1-process check is the mixer runs' below)
  w2 = json.loads((tmp / "proxy2" / "average_domain_weights.json").read_text())
  w1 = json.loads((tmp / "proxy1" / "average_domain_weights.json").read_text())
  np.testing.assert_allclose(list(w2.values()), list(w1.values()), rtol=1e-4, atol=1e-6)
  l2 = [json.loads(l)["domain_weights"] for l in
        (tmp / "proxy2" / "doremi_weights.jsonl").read_text().splitlines()]
  l1 = [json.loads(l)["domain_weights"] for l in
        (tmp / "proxy1" / "doremi_weights.jsonl").read_text().splitlines()]
  np.testing.assert_allclose(l2, l1, rtol=1e-4, atol=1e-6)


def test_two_process_mixer_has_the_same_rates_everywhere_and_equals_one_process(runs):
  tmp, out = runs
  assert "mixture rates identical on all 2 processes" in out["mixer2"][0]
  rows2 = [json.loads(l) for l in (tmp / "mixer2" / "mixture_weights.jsonl").read_text()
           .splitlines()]
  rows1 = [json.loads(l) for l in (tmp / "mixer1" / "mixture_weights.jsonl").read_text()
           .splitlines()]
  assert [r["step"] for r in rows2] == list(range(12))   # written once, by process 0
  np.testing.assert_allclose([r["domain_weights"] for r in rows2],
                             [r["domain_weights"] for r in rows1], rtol=1e-4, atol=1e-6)
  e2 = json.loads((tmp / "mixer2" / "eval.json").read_text())["per_domain"]
  e1 = json.loads((tmp / "mixer1" / "eval.json").read_text())["per_domain"]
  for d in e1:
    assert e2[d]["loss"] == pytest.approx(e1[d]["loss"], rel=1e-4), d
  t2 = json.loads((tmp / "mixer2" / "eval.json").read_text())["tasks"]
  t1 = json.loads((tmp / "mixer1" / "eval.json").read_text())["tasks"]
  assert set(t2) == {"markov_next", "repeat_cycle"} and t2["markov_next"]["questions"] == 8
  for task, metrics in t1.items():
    for m in ("bpb", "prob_correct", "exact_match"):
      if m in metrics:
        assert t2[task][m] == pytest.approx(metrics[m], rel=1e-4, abs=1e-6), (task, m)


def test_two_process_study_writes_one_report(tmp_path):
  """Stage `study` across 2 processes: every arm x seed run is a 2-process
  run, study.json is written once (process 0) and the verdicts print once."""
  wd = tmp_path / "study"
  args = ["--gin_file=gin/cpu.gin", "--gin.run.stage='study'",
          "--gin.train_study.arms=['stratified', 'uniform']", "--gin.train_study.seeds=2",
          *[a for a in STAGE_ARGS if "num_steps" not in a], "--gin.TrainConfig.num_steps=6",
          "--gin.TrainConfig.eval_every=3"]
  outs = _run(args, wd, 2, 2)
  study = json.loads((wd / "study.json").read_text())
  assert study["arms"] == ["stratified", "uniform"] and study["seeds"] == 2
  vs = study["results"]["uniform"]["vs_baseline"]["uniform_avg"]
  assert vs["verdict"] in ("wins", "ties", "loses") and np.isfinite(vs["diff"])
  for arm in ("stratified", "uniform"):
    for s in range(2):
      info = json.loads((wd / "arms" / arm / f"seed_{s}" / "run_info.json").read_text())
      assert info["process_count"] == 2 and info["seed"] == s
  assert "verdict" in outs[0] and "verdict" not in outs[1]


def test_sigterm_on_one_process_stops_both_at_the_same_step(tmp_path):
  """SIGTERM to process 1 of 2 (as a preempted host gets it): JAX's
  preemption service makes both stop at the same step, each with exit 75,
  and the checkpoint of that step is whole; the 2-process re-run ends
  bitwise where an uninterrupted 2-process run ends."""
  args = ["--gin_file=gin/reference.gin", *[a for a in STAGE_ARGS if "num_steps" not in a],
          "--gin.TrainConfig.num_steps=40", "--gin.TrainConfig.checkpoint_every=10"]
  full, wd = tmp_path / "full", tmp_path / "stopped"
  _run(args, full, 2, 2)
  procs = _start(args, wd, 2, 2)
  deadline = time.time() + 300
  while not (wd / "checkpoints" / "10").exists() and time.time() < deadline:
    assert all(p.poll() is None for p in procs), "finished before it could be signalled"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  steps = []
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 75, err[-3000:]
    m = re.search(r"stopped on SIGTERM at step (\d+), with a checkpoint", err)
    assert m, err[-3000:]
    steps.append(int(m.group(1)))
  assert steps[0] == steps[1] and 10 <= steps[0] < 40, steps
  assert (wd / "checkpoints" / str(steps[0])).is_dir() and not (wd / "complete.json").exists()
  _run(args, wd, 2, 2)
  # The same final evaluation and every logged step's metrics, to the bit
  # (the checkpoint's 2-process layout does not restore in this process).
  evals = [json.loads((d / "eval.json").read_text())["per_domain"] for d in (full, wd)]
  assert evals[0] == evals[1]
  rows = [[{k: v for k, v in json.loads(l).items() if k != "timestamp"}
           for l in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, wd)]
  assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == list(range(3, 40, 3)) + [40]
