r"""Entry point: `python -m doremi_jax.main --gin_file FILE [--gin.NAME=VALUE ...]`.

The gin files say which stage runs (`run.stage`) and where (`run.workdir`,
or `--workdir`). Errors a user can fix exit with status 2 and a message that
says what to change; nothing already in the run directory is touched before
the configuration has been validated.
"""

from __future__ import annotations

import os
import sys

# Quiet TF/XLA start-up chatter before any of them is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import gin  # noqa: E402

from doremi_jax import config as config_lib  # noqa: E402
from doremi_jax.config import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'TrainConfig.num_steps = 10'.")
flags.DEFINE_string("workdir", None, "Run directory; overrides run.workdir.")

STAGES = ("pipeline", "reference", "proxy", "main")
_GIN_ERRORS = ("Required bindings", "gin.REQUIRED", "No configurable matching",
               "doesn't have a parameter", "does not have a parameter")


def register_configurables():
  """Imports every module that defines gin configurables."""
  # pylint: disable=unused-import,import-outside-toplevel
  from doremi_jax import distributed, pipeline, proxy, train  # noqa: F401
  from doremi_jax.data import corpus, local, synthetic  # noqa: F401


@gin.configurable
def run(stage: str = gin.REQUIRED, workdir: str = gin.REQUIRED):
  """Runs one stage in `workdir`."""
  from doremi_jax import train
  if stage not in STAGES:
    raise ConfigError(f"run.stage={stage!r} is not a stage; choose one of {list(STAGES)}.")
  if stage == "reference":
    return train.train_reference(workdir)
  if stage == "main":
    return train.train_main(workdir)
  if stage == "proxy":
    from doremi_jax import proxy
    return proxy.train_proxy(workdir)
  if stage == "pipeline":
    from doremi_jax import pipeline
    return pipeline.train_pipeline(workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --gin_file and --gin.NAME=VALUE.")
  try:
    register_configurables()
    config_lib.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    from doremi_jax import distributed
    distributed.initialize()
    kwargs = {"workdir": FLAGS.workdir} if FLAGS.workdir else {}
    run(**kwargs)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except (ValueError, TypeError, RuntimeError) as e:
    # Gin's own complaints (a required binding left unset, a parameter a
    # configurable does not have) surface when the configurable is called.
    text = str(e)
    if any(m in text for m in _GIN_ERRORS):
      print(f"error: {e}\nCheck your gin files and --gin.NAME=VALUE bindings.",
            file=sys.stderr, flush=True)
      sys.exit(2)
    raise


def cli():
  logging.set_verbosity(logging.WARNING)
  app.run(main, argv=config_lib.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  cli()
