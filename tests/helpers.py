"""Test helpers: running the command-line tools in subprocesses, and small
in-process setups shared by several test modules."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/ is one level down


def run_cli(args, workdir=None, timeout=600, env_extra=None, cache=True):
  """Runs `python -m doremi_jax.main ARGS` in a subprocess (1 CPU device);
  `cache=False` without the session's compilation cache (conftest.py), as
  on a fresh machine."""
  import subprocess
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  if not cache:
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  env.update(env_extra or {})
  cmd = [sys.executable, "-m", "doremi_jax.main", *args]
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_cli_many(jobs, timeout=600):
  """Runs several `(args, workdir)` CLI invocations concurrently (the bad-input
  tests spend most of their time importing TF/JAX); returns CompletedProcess-
  like objects in order."""
  return run_tools_many([("main", list(args) + ([f"--workdir={workdir}"] if workdir else []))
                         for args, workdir in jobs], timeout)


def run_tools_many(jobs, timeout=600):
  """Runs several `(tool, args)` invocations of `python -m doremi_jax.TOOL
  ARGS` concurrently; returns CompletedProcess-like objects in order."""
  import subprocess
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  procs = []
  for tool, args in jobs:
    cmd = [sys.executable, "-m", f"doremi_jax.{tool}", *args]
    procs.append((cmd, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)))
  out = []
  for cmd, p in procs:
    stdout, stderr = p.communicate(timeout=timeout)
    out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
  return out


def run_cli_until(args, workdir, marker, timeout=400):
  """Starts `python -m doremi_jax.main ARGS --workdir=WORKDIR` and SIGKILLs it
  as soon as the path `marker` exists (e.g. a checkpoint directory)."""
  import signal
  import subprocess
  import time
  proc = subprocess.Popen([sys.executable, "-m", "doremi_jax.main", *args,
                           f"--workdir={workdir}"], cwd=REPO,
                          env=dict(os.environ, XLA_FLAGS=""), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def configure(bindings=(), gin_files=()):
  """A fresh in-process gin config: every configurable registered, then
  `gin_files` and `bindings` parsed (as `python -m doremi_jax.main` does)."""
  import gin
  from doremi_jax import config as config_lib
  from doremi_jax import main as main_lib
  gin.clear_config()
  main_lib.register_configurables()
  config_lib.parse_gin([os.path.join(REPO, f) for f in gin_files], list(bindings))


def run_stage(stage, workdir, bindings=(), gin_files=(), devices=1, **kwargs):
  """Runs the registered stage `stage` in `workdir` in this process, with a
  fresh gin config (`configure`) on the first `devices` devices."""
  import jax
  from doremi_jax import context
  from doremi_jax.stages import registry
  configure(bindings, gin_files)
  with context.using(devices=jax.devices()[:devices]):
    return registry.get(stage)(str(workdir), **kwargs)


# A tiny Step 1 on one device (sequences of 32 tokens, a checkpoint every 3
# steps, an output layer that does not start at 0, so its logits are not
# near-uniform): a trained run to read back (the evaluation tests, the
# model export).
TINY_REFERENCE = [
    "include 'gin/cpu.gin'", "SEQ_LEN = 32", "BATCH = 8",
    "TrainConfig.checkpoint_every = 3", "TrainConfig.log_every = 3",
    "TrainConfig.eval_examples_per_domain = 8", "TrainConfig.eval_batch_size = 8",
    "TrainConfig.tensorboard = False", "TrainConfig.async_checkpointing = False",
    "ModelConfig.unembed_init_scale = 1.0",
]


def tiny_trained_run(workdir, steps: int = 6, seq_len: int = 32):
  """Runs the `reference` stage TINY_REFERENCE for `steps` steps of
  `seq_len` tokens in `workdir` (in this process); returns `workdir`."""
  run_stage("reference", workdir, TINY_REFERENCE + [f"STEPS = {steps}", f"SEQ_LEN = {seq_len}"])
  return workdir


def tiny_reference_run(workdir, seq_len: int = 32) -> str:
  """`tiny_trained_run`'s 6 steps; returns the workdir as a string."""
  return str(tiny_trained_run(workdir, 6, seq_len))


# Golden values (tests/golden/*.json): a number that must not drift silently.
GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
HOW = ("If the change is intended, run `DOREMI_UPDATE_GOLDEN=1 python -m pytest "
       "tests/unit/golden_test.py tests/e2e/golden_quickstart_test.py` and commit "
       "tests/golden/*.json.")


def check_golden(name: str, got: dict, rtol: float):
  """`got` ({key: list of numbers}) against tests/golden/NAME.json; with
  DOREMI_UPDATE_GOLDEN=1 it writes the file instead (and skips)."""
  import json
  import numpy as np
  import pytest
  path = os.path.join(GOLDEN_DIR, f"{name}.json")
  if os.environ.get("DOREMI_UPDATE_GOLDEN"):
    with open(path, "w") as f:
      json.dump(got, f, indent=1)
    pytest.skip(f"wrote {path}")
  assert os.path.exists(path), f"no golden file {path}. {HOW}"
  with open(path) as f:
    want = json.load(f)
  assert sorted(got) == sorted(want), HOW
  for key in want:
    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=rtol,
                               atol=1e-7, err_msg=f"{name}: {key} moved. {HOW}")


def weights_log_rows(workdir):
  """A Step 2 run's doremi_weights.jsonl rows without their timestamps (what
  a resumed run must reproduce)."""
  import json
  from doremi_jax import rundir
  path = os.path.join(str(workdir), rundir.DOREMI_WEIGHTS_LOG)
  with open(path) as f:
    return [{k: v for k, v in json.loads(l).items() if k != "timestamp"}
            for l in f.read().splitlines()]


def sigterm_at(step: int):
  """A context in which a real SIGTERM reaches this process while the loop
  runs step `step` (when it asks whether to stop after it), with the stop
  handlers of `python -m doremi_jax.main` installed."""
  import contextlib
  import signal
  from unittest import mock
  from doremi_jax import preemption
  real = preemption.should_stop

  def should_stop(done, logged):
    if done == step:
      signal.raise_signal(signal.SIGTERM)
    return real(done, logged)

  stack = contextlib.ExitStack()
  stack.enter_context(mock.patch.object(preemption, "should_stop", should_stop))
  stack.enter_context(preemption.handlers())
  return stack


def stopped_run(fn, step: int):
  """Runs `fn()` with a SIGTERM at step `step` (`sigterm_at`); returns the
  `preemption.Stopped` it must end in."""
  import pytest
  from doremi_jax import preemption
  with sigterm_at(step), pytest.raises(preemption.Stopped) as e:
    fn()
  return e.value


def run_cli_signalled(args, workdir, marker, signals, timeout=400):
  """Starts `python -m doremi_jax.main ARGS --workdir=WORKDIR`, and once the
  path `marker` exists sends it `signals` (e.g. [signal.SIGTERM]), 0.2 s
  apart; returns the CompletedProcess when it exits."""
  import subprocess
  import time
  cmd = [sys.executable, "-m", "doremi_jax.main", *args, f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, XLA_FLAGS=""),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be signalled"
  for n, signum in enumerate(signals):
    if n:
      time.sleep(0.2)
    proc.send_signal(signum)
  out, err = proc.communicate(timeout=timeout)
  return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
