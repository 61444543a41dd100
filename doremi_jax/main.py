r"""Entry point: `python -m doremi_jax.main --gin_file FILE [--gin.NAME=VALUE ...]`.

The gin files say which stage runs (`run.stage`, a name in
`doremi_jax.stages.registry`) and where (`run.workdir`, or `--workdir`).
Errors a user can fix exit with status 2 and a message that says what to
change; nothing already in the run directory is touched before the
configuration has been validated. SIGTERM or Ctrl-C stops the run with a
checkpoint of the step in flight and exit status 75 (`preemption`).
"""

from __future__ import annotations

import gin
from absl import flags

from doremi_jax import cli
from doremi_jax import config as config_lib

FLAGS = flags.FLAGS
cli.define_gin_flags()
flags.DEFINE_string("workdir", None, "Run directory; overrides run.workdir.")


def register_configurables():
  """Imports every module that defines gin configurables or registers a stage."""
  # pylint: disable=unused-import,import-outside-toplevel
  from doremi_jax import distributed  # noqa: F401
  from doremi_jax.data import local_tasks, registry as corpus_registry  # noqa: F401
  from doremi_jax.stages import lm, pipeline, proxy, study, swarm  # noqa: F401


@gin.configurable
def run(stage: str = gin.REQUIRED, workdir: str = gin.REQUIRED):
  """Runs the stage `stage` in `workdir`."""
  # pylint: disable=import-outside-toplevel
  from doremi_jax import plan, preemption
  from doremi_jax.stages import registry
  with preemption.handlers():
    try:
      return registry.get(stage)(workdir)
    except plan.QuotaReached as e:   # a worker with Workers.max_tasks
      # its own words, without the "In call to configurable" line gin adds
      print(f"[{stage}] {str(e).splitlines()[0]}", flush=True)
      return None


def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(
        f"unexpected arguments {argv[1:]}; use --gin_file and --gin.NAME=VALUE.")
  register_configurables()
  config_lib.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
  from doremi_jax import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize()
  cli.init_backends_quietly()
  run(**({"workdir": FLAGS.workdir} if FLAGS.workdir else {}))


def cli_main():
  cli.run_tool(main, gin_args=True)


if __name__ == "__main__":
  cli_main()
