"""A study's runs as Ray tasks: one task per claimed run, on a Ray cluster.

    python -m doremi_jax.ray_driver --ray_parallel 4 --ray_num_gpus 1 \\
        --gin_file gin/study_quickstart.gin --workdir gs://bucket/study

Besides the `--ray_*` flags it takes `python -m doremi_jax.main`'s
(`--gin_file`, `--gin.NAME=VALUE`, `--workdir`). Each Ray task runs that
command as one worker of the study
(`doremi_jax.plan`) with `--gin.Workers.max_tasks=1`, in a subprocess
holding the resources the run needs (`--ray_num_cpus`, `--ray_num_gpus`,
`--ray_resources '{"TPU": 4}'`): it claims one run, trains it and exits.
The driver keeps `--ray_parallel` such tasks in flight and submits another
whenever one ends, until one ends with nothing left to claim: that worker
has read every run and written study.json. A task preempted (exit status
75) is submitted again: its run was released with a checkpoint, and the
next task to claim it resumes it; any other failure stops the driver with
that task's error (the run directory keeps everything finished). The Ray
cluster is `--ray_address` (e.g. 'auto'), or a local one started here.

Needs the `ray` extra (`pip install -e '.[ray]'`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Optional

from absl import flags

from doremi_jax import cli
# the worker's flags (--gin_file, --gin.*, --workdir), listed by --helpfull
from doremi_jax import main as _worker  # noqa: F401  # pylint: disable=unused-import
from doremi_jax.config import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_integer("ray_parallel", 2, "Worker tasks in flight at once.")
flags.DEFINE_float("ray_num_cpus", None, "CPUs each worker task holds (Ray's num_cpus).")
flags.DEFINE_float("ray_num_gpus", None, "GPUs each worker task holds (Ray's num_gpus).")
flags.DEFINE_string("ray_resources", None,
                    "Custom resources each worker task holds, a JSON object: '{\"TPU\": 4}'.")
flags.DEFINE_string("ray_address", None, "Ray cluster to join ('auto'); unset: start a local one.")

STOPPED = "(Workers.max_tasks) and stops"   # what a worker that trained its one run prints
PREEMPTED = 75


def task_options(num_cpus, num_gpus, resources) -> dict:
  """The Ray resources of one worker task (ConfigError for bad values)."""
  out = {}
  for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
    if value is not None:
      if value < 0:
        raise ConfigError(f"--ray_{key} must be >= 0, got {value:g}.")
      out[key] = value
  if resources is not None:
    try:
      res = json.loads(resources)
    except json.JSONDecodeError as e:
      raise ConfigError(f"--ray_resources must be a JSON object such as '{{\"TPU\": 4}}': "
                        f"{e}.") from None
    if not isinstance(res, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
        for v in res.values()):
      raise ConfigError(f"--ray_resources must map resource names to amounts >= 0, got "
                        f"{resources}.")
    out["resources"] = res
  return out


def worker_args() -> list:
  """This command line's worker flags, for `doremi_jax.main`."""
  return ([f"--gin_file={f}" for f in FLAGS.gin_file] +
          [f"--gin_bindings={b}" for b in FLAGS.gin_bindings] +
          ([f"--workdir={FLAGS.workdir}"] if FLAGS.workdir else []))


def worker_command(args: list) -> list:
  return [sys.executable, "-m", "doremi_jax.main", *args, "--gin.Workers.max_tasks=1"]


def _one_worker(cmd: list) -> tuple:
  """Runs in a Ray task: one worker; (exit status, its output)."""
  done = subprocess.run(cmd, capture_output=True, text=True)
  return done.returncode, done.stdout, done.stderr


def drive(cmd: list, n: int, options: dict, address: Optional[str], say=print) -> int:
  """Keeps `n` worker tasks in flight until one ends with the study done
  (module docstring); the tasks' count."""
  import ray  # pylint: disable=import-outside-toplevel
  if not ray.is_initialized():
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
  remote = ray.remote(_one_worker).options(**options)
  flight, submitted, finished = [], 0, False
  while flight or not finished:
    while not finished and len(flight) < n:
      flight.append(remote.remote(cmd))
      submitted += 1
    ready, flight = ray.wait(flight, num_returns=1)
    code, out, err = ray.get(ready[0])
    for line in out.splitlines():
      if "claimed " in line or "report:" in line:
        say(f"[ray] {line}")
    if code == PREEMPTED:
      say("[ray] a worker was preempted; its run is taken over by the next task")
      continue
    if code != 0:
      for other in flight:
        ray.cancel(other, force=True)
      tail = (err.strip().splitlines() or ["(no output)"])[-1]
      raise ConfigError(f"a worker task exited with status {code}: {tail}")
    if STOPPED not in out:
      finished = True   # it found nothing left: the study is done and reported
  return submitted


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}; use --gin_file, --gin.NAME=VALUE, "
                      "--workdir and the --ray_* flags.")
  if FLAGS.ray_parallel < 1:
    raise ConfigError(f"--ray_parallel must be an integer >= 1, got {FLAGS.ray_parallel}.")
  options = task_options(FLAGS.ray_num_cpus, FLAGS.ray_num_gpus, FLAGS.ray_resources)
  try:
    import ray  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise ConfigError("the Ray driver needs Ray: pip install -e '.[ray]'.") from None
  count = drive(worker_command(worker_args()), FLAGS.ray_parallel, options, FLAGS.ray_address)
  print(f"[ray] the study is done: {count} worker task(s)", flush=True)


def cli_main():
  cli.run_tool(main, gin_args=True)


if __name__ == "__main__":
  cli_main()
