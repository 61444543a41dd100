"""`python -m doremi_jax.lm_eval ARGS...`: lm-evaluation-harness's own
command line (`lm_eval ARGS...`, the same arguments and output) with the
model `doremi_jax` registered, e.g.

  python -m doremi_jax.lm_eval --model doremi_jax --model_args run_dir=RUN \\
      --tasks arc_easy --include_path my_tasks/ --output_path results/

The plain `lm_eval` command cannot find our model: lm-eval 0.4.13 reads no
entry points or plugins, and knows only its own models and those that a
module imported into its process registered. This command imports
`doremi_jax.tasks.lm_eval_model` (which registers it; see its docstring for
the model arguments) and hands over to lm-eval. A mistake in the model
arguments ends with `error: ...` and exit status 2, as our other tools do.
Each process runs on its own (no `jax.distributed` set-up): see the
model's docstring for several processes.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs lm-eval's command line on `argv` (default: this process's
  arguments) with the `doremi_jax` model registered."""
  from lm_eval.__main__ import cli_evaluate

  from doremi_jax import cli
  from doremi_jax.config import ConfigError
  from doremi_jax.tasks import lm_eval_model  # noqa: F401  # registers the model
  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  try:
    cli.init_backends_quietly()
    cli_evaluate()
  except ConfigError as e:
    cli.fail(str(e))


if __name__ == "__main__":
  main()
