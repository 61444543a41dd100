"""Test setup: 8 forced CPU devices (real sharding), quiet TF, offline TFDS."""

import os
import sys

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["JAX_PLATFORMS"] = "cpu"

import gin  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def run_cli(args, workdir=None, timeout=600, env_extra=None):
  """Runs `python -m doremi_jax.main ARGS` in a subprocess (1 CPU device)."""
  import subprocess
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  env.update(env_extra or {})
  cmd = [sys.executable, "-m", "doremi_jax.main", *args]
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_cli_many(jobs, timeout=600):
  """Runs several `(args, workdir)` CLI invocations concurrently (the bad-input
  tests spend most of their time importing TF/JAX); returns CompletedProcess-
  like objects in order."""
  import subprocess
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  procs = []
  for args, workdir in jobs:
    cmd = [sys.executable, "-m", "doremi_jax.main", *args]
    if workdir is not None:
      cmd.append(f"--workdir={workdir}")
    procs.append((cmd, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)))
  out = []
  for cmd, p in procs:
    stdout, stderr = p.communicate(timeout=timeout)
    out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
  return out


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
  """README's first command, run once per session: (workdir, seconds, result)."""
  import time
  wd = tmp_path_factory.mktemp("quickstart") / "run"
  t0 = time.time()
  r = run_cli(["--gin_file=gin/quickstart.gin"], workdir=wd)
  return wd, time.time() - t0, r


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
