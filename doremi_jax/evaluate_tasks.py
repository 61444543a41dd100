r"""Evaluate a finished run on downstream tasks, after training.

  python -m doremi_jax.evaluate_tasks RUN_DIR --tasks TASK[,TASK...] \
      [--split test] [--limit N] [--step STEP] [--batch_size 16] [--output FILE]

RUN_DIR is a stage's run directory (or a pipeline's: its DoReMi main
model). TASK is what `TrainConfig.eval_tasks` takes: a built-in task of the
synthetic corpus, a request file in our format (.jsonl / .jsonl.gz), or an
OLMo task (docs/downstream.md). Scores the newest checkpoint (or --step's)
on each task's --split half (`test`, what reports use; `tune`, what a
method may adapt to), its first --limit items (all by default), and
prints `{task: metrics}` as JSON (to --output when given), with the split,
the step and the run it comes from. Rows are the run's training length;
longer contexts keep their end.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from doremi_jax import config as config_lib
from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.cli import run_tool
from doremi_jax.config import ConfigError
from doremi_jax.data import packing
from doremi_jax.tasks import builtin, suite, trained

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so importing this module leaves
  the other tools' flags alone)."""
  flags.DEFINE_list("tasks", [], "Tasks to evaluate: built-in names, request files, OLMo "
                    "task names.")
  flags.DEFINE_enum("split", packing.TEST, [packing.TUNE, packing.TEST],
                    "Which half of each task's items.")
  flags.DEFINE_integer("limit", None, "Each task's first N items of the split (default all).")
  flags.DEFINE_integer("step", None, "The checkpoint to score (default the newest).")
  flags.DEFINE_integer("batch_size", 16, "Rows (and generations) per batch.")
  flags.DEFINE_string("output", None, "Write the JSON here instead of standard output.")


def run_corpus(run: trained.Trained):
  """The corpus the run trained on, rebuilt from its config.gin (only the
  built-in tasks need it: they are made from its held-out sequences)."""
  from doremi_jax import main as main_lib   # pylint: disable=import-outside-toplevel
  from doremi_jax.data.registry import get_corpus   # pylint: disable=import-outside-toplevel
  path = files.path(run.run_dir) / rundir.CONFIG
  if not files.exists(path):
    raise ConfigError(f"{run.run_dir} has no {rundir.CONFIG}, which the built-in tasks need "
                      "to rebuild its corpus; name a request file or an OLMo task instead.")
  main_lib.register_configurables()
  config_lib.parse_gin([str(path)], [])
  return get_corpus()


def evaluate(run_dir: str, tasks, split: str = packing.TEST, limit=None, step=None,
             batch_size: int = 16) -> dict:
  """`{"run_dir", "step", "split", "tasks": {task: metrics}}` of a run."""
  if not tasks:
    raise ConfigError("give the tasks to evaluate: --tasks markov_next,my_task.jsonl")
  if limit is not None and limit < 1:
    raise ConfigError(f"--limit must be positive (a number of items), got {limit}.")
  if batch_size < 1:
    raise ConfigError(f"--batch_size must be positive, got {batch_size}.")
  run = trained.load(run_dir, step)
  corpus = run_corpus(run) if any(t in builtin.NAMES for t in tasks) else None
  scores = suite.TaskSuite.create(tasks, corpus, split, run.seq_len, batch_size, limit,
                                 run.vocabulary)(run.model, run.params)
  return {"run_dir": run.run_dir, "step": run.step, "split": split, "tasks": scores}


def main(argv):
  if len(argv) != 2:
    raise ConfigError("give one RUN_DIR: python -m doremi_jax.evaluate_tasks RUN_DIR "
                      "--tasks TASK[,TASK...]")
  result = evaluate(argv[1], FLAGS.tasks, FLAGS.split, FLAGS.limit, FLAGS.step,
                    FLAGS.batch_size)
  text = json.dumps(result, indent=2) + "\n"
  if FLAGS.output:
    files.write_text(FLAGS.output, text)
    print(f"wrote {FLAGS.output}", file=sys.stderr)
  else:
    sys.stdout.write(text)


if __name__ == "__main__":
  define_flags()
  run_tool(main)
