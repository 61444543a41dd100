"""The command-line boundary shared by every tool (`main`, `prepare`,
`tokenizer`, `report`, `compile_check`).

* `--gin.NAME=VALUE` is rewritten into a gin binding (T5X style).
* What a user can fix (a `ConfigError`, gin's own complaints about unknown
  or missing bindings, a bad flag) ends with `error: ...` on stderr and exit
  status 2, with no traceback; a bug still shows its traceback.
* A run stopped on request (`preemption.Stopped`: SIGTERM, the first
  Ctrl-C) says where its checkpoint is and exits 75; a Ctrl-C that aborts
  (the second, or one in a tool without a training loop) exits 130 with one
  line, no traceback.
* Start-up is quiet on a machine without accelerators: native libraries
  (TensorFlow's CUDA probe, libtpu's topology probe) write straight to file
  descriptor 2 while they load; that output is dropped unless this is a
  Cloud TPU VM or DOREMI_VERBOSE_STARTUP is set.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from doremi_jax import preemption  # noqa: E402
from doremi_jax.config import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
GIN_ERRORS = ("Required bindings", "gin.REQUIRED", "No configurable matching",
              "doesn't have a parameter", "does not have a parameter")


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns `--gin.NAME=VALUE` flags into `--gin_bindings=NAME = VALUE`."""
  out = []
  for arg in argv:
    m = re.fullmatch(r"--gin\.([^=]+)=(.*)", arg, flags=re.S)
    out.append(f"--gin_bindings={m.group(1)} = {m.group(2)}" if m else arg)
  return out


def define_gin_flags():
  """--gin_file and --gin_bindings (once per process)."""
  if "gin_file" not in FLAGS:
    flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
    flags.DEFINE_multi_string("gin_bindings", [],
                              "Gin bindings, e.g. 'TrainConfig.num_steps = 10'.")


def _verbose_startup() -> bool:
  from doremi_jax import distributed
  return bool(os.environ.get("DOREMI_VERBOSE_STARTUP")) or distributed.on_tpu_vm()


@contextlib.contextmanager
def native_stderr_dropped():
  """Drops what native code writes to fd 2 inside the block (Python
  exceptions still propagate and are printed after it)."""
  if _verbose_startup():
    yield
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def load_tensorflow_quietly():
  """Imports TensorFlow (what `prepare` and `tokenizer` read with) without
  its CUDA probe's chatter. Training does not import it (seqio Tasks are
  registered through `data.corpus.load_seqio`, quiet the same way)."""
  with native_stderr_dropped():
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import


def init_backends_quietly():
  """Initialises JAX's backends (after `jax.distributed.initialize`) without
  the chatter of probing for accelerators that are not there."""
  import jax  # pylint: disable=import-outside-toplevel
  with native_stderr_dropped():
    jax.devices()


def fail(message: str):
  # Gin appends where the error surfaced ("In call to configurable ..."):
  # the message already names the binding to change.
  lines = [l for l in message.splitlines() if not re.match(r"\s+In call to configurable", l)]
  print("error: " + "\n".join(lines), file=sys.stderr, flush=True)
  sys.exit(2)


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}\nRun with --helpfull to list the flags.")


def run_tool(main_fn: Callable[[list], None], gin_args: bool = False) -> None:
  """Runs `main_fn(argv)` as a command-line tool (see the module docstring);
  `gin_args` enables the `--gin.NAME=VALUE` rewrite."""

  def wrapped(argv):
    try:
      main_fn(argv)
    except ConfigError as e:
      fail(str(e))
    except preemption.Stopped as e:
      print(str(e), file=sys.stderr, flush=True)
      sys.exit(preemption.EXIT_STATUS)
    except KeyboardInterrupt:
      preemption.abort()
    except app.UsageError as e:
      fail(str(e))
    except (ValueError, TypeError, RuntimeError) as e:
      # Gin's own complaints (a required binding left unset, a parameter a
      # configurable does not have) surface when the configurable is called.
      if any(m in str(e) for m in GIN_ERRORS):
        fail(f"{e}\nCheck your gin files and --gin.NAME=VALUE bindings.")
      raise

  logging.set_verbosity(logging.WARNING)
  argv = rewrite_gin_args(sys.argv) if gin_args else list(sys.argv)
  app.run(wrapped, argv=argv, flags_parser=_parse_flags)
