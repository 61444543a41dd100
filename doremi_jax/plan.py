"""A study's runs spread over any number of workers: its work plan.

A composite stage (the study, each rung of a ladder) cuts its work into
tasks (`Task`): a method's own runs for one seed, one arm's main run for
one seed. Any number of workers started with the same command, each a
normal single- or multi-process job on its own slice or host, run
`execute(root, phase, tasks)` on the same run directory (a local or shared
file system, or gs://). A worker

* records the phase's plan in RUN/plan/<phase>.json (its tasks, their
  dependencies, what each trains): a record for the user, rewritten when
  a re-run with more seeds or arms plans more;
* claims the first task whose dependencies are done and that is neither
  done nor held, with a lease (`doremi_jax.lease`) in
  RUN/plan/<phase>/<task>/, and runs it; a main run is done when it is
  complete (its complete.json), a method task when its marker
  (`rundir.TASK_DONE`, written there) says so; a task another worker holds
  is passed over;
* when every task left is held by others or waits for one, looks again
  every `Workers.poll_s`: a claim whose worker is gone (its process dead on
  this host, or its heartbeat older than `Workers.stale_s` anywhere) is
  taken over, and its run resumes from its last checkpoint, as every run
  does;
* returns once every task is done; the study then reads the finished runs
  and `writer` says which one worker writes the report (the others compute
  the same numbers and write nothing).

One worker is the study as it always ran: the tasks in order, finished ones
skipped. Inside a task, every lease waits (`Workers.wait_s`) instead of
refusing: another worker may be reading the same finished method run at
that moment. On several processes process 0 decides which task to claim
and the others follow, so a job's processes never disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, Optional

import gin

from doremi_jax import distributed
from doremi_jax import files
from doremi_jax import lease
from doremi_jax import rundir
from doremi_jax.config import ConfigError, check_number

ALL_DONE, NONE_READY = -2, -1
_claimed = [0]   # tasks this process has trained (`Workers.max_tasks`)


class QuotaReached(Exception):
  """This worker trained its `Workers.max_tasks`; the others finish."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Workers:
  """How a study's workers share its runs (module docstring). `stale_s`: a
  claim whose heartbeat is this old is taken over (a preempted worker's;
  on this host a dead process is seen at once); `heartbeat_s`: how often
  a worker refreshes its claims; `poll_s`: how often a worker with nothing
  to claim looks again; `wait_s`: how often a lease held briefly by
  another worker (reading a finished run) is tried again; `max_tasks`: the
  worker stops (`QuotaReached`, exit status 0) after training that many
  tasks (None: it works until the study is done), as a Ray task does
  (`doremi_jax.ray_driver`)."""
  stale_s: float = lease.STALE_S
  heartbeat_s: float = lease.HEARTBEAT_S
  poll_s: float = 10.0
  wait_s: float = 1.0
  max_tasks: Optional[int] = None

  def __post_init__(self):
    for name in ("stale_s", "heartbeat_s", "poll_s", "wait_s"):
      check_number(f"Workers.{name}", getattr(self, name), low=0, low_open=True)
    if self.max_tasks is not None:
      check_number("Workers.max_tasks", self.max_tasks, integer=True, low=1)
    if self.heartbeat_s >= self.stale_s:
      raise ConfigError(f"Workers.heartbeat_s={self.heartbeat_s} must be below "
                        f"Workers.stale_s={self.stale_s}: a live worker's claim would look "
                        "stale between two heartbeats.")


@dataclasses.dataclass
class Task:
  """One unit of a phase: `key` names it (a relative path, unique in the
  phase); `fn()` does it; `deps`: the keys that must be done first;
  `complete()`: whether it is done without a marker (a run finished before
  the plan existed; where given, it alone decides and no marker is
  written); `what`: in words, for logs and the plan record."""
  key: str
  fn: Callable[[], None]
  deps: tuple = ()
  what: str = ""
  complete: Optional[Callable[[], bool]] = None


def task_dir(root, phase: str, key: str):
  return files.path(root) / rundir.PLAN / phase / key


def is_done(root, phase: str, task: Task) -> bool:
  """`task.complete()` where the task has it (a run's own complete.json is
  the truth: a run deleted or damaged since is trained again), else its
  marker in RUN/plan/<phase>/<task>/."""
  if task.complete is not None:
    return bool(task.complete())
  return files.exists(task_dir(root, phase, task.key) / rundir.TASK_DONE)


def record(root, phase: str, tasks: list) -> None:
  """RUN/plan/<phase>.json: the phase's tasks (written when it changes)."""
  if not rundir.is_writer():
    return
  path = files.path(root) / rundir.PLAN / f"{phase}.json"
  plan = {"phase": phase, "tasks": [{"key": t.key, "what": t.what, "deps": list(t.deps)}
                                    for t in tasks]}
  if not files.exists(path) or files.read_json(path) != plan:
    files.write_json(path, plan)


def _pick(root, phase: str, tasks: list, passed: set) -> int:
  done = {t.key for t in tasks if is_done(root, phase, t)}
  if len(done) == len(tasks):
    return ALL_DONE
  for i, t in enumerate(tasks):
    if t.key not in done and t.key not in passed and all(d in done for d in t.deps):
      return i
  return NONE_READY


def _settings(cfg: Workers):
  return lease.settings(stale_s=cfg.stale_s, heartbeat_s=cfg.heartbeat_s, wait_s=cfg.wait_s)


def execute(root, phase: str, tasks: list, say: Callable[[str], None]) -> None:
  """Runs the phase's tasks with whichever other workers run it too
  (module docstring); returns when all are done."""
  cfg = Workers()
  keys = [t.key for t in tasks]
  unknown = sorted({d for t in tasks for d in t.deps} - set(keys))
  if len(set(keys)) != len(keys) or unknown:
    raise ValueError(f"a plan's keys repeat or its dependencies {unknown} are not tasks")
  record(root, phase, tasks)
  passed, waiting = set(), False
  with _settings(cfg):
    while True:
      i = distributed.from_process_0(_pick(root, phase, tasks, passed))
      if i == ALL_DONE:
        return
      if i == NONE_READY:
        if not waiting:
          say(f"waiting: the tasks left of {phase} are held by other workers or wait for "
              f"them; looking again every {cfg.poll_s:g} s")
        waiting = True
        passed.clear()
        time.sleep(cfg.poll_s)
        continue
      task, waiting = tasks[i], False
      if cfg.max_tasks is not None and _claimed[0] >= cfg.max_tasks:
        raise QuotaReached(f"this worker trained its {cfg.max_tasks} task(s) "
                           "(Workers.max_tasks) and stops; the other workers finish the study")
      if not _claim_and_run(root, phase, task, say):
        passed.add(task.key)


def _claim_and_run(root, phase: str, task: Task, say) -> bool:
  """Runs `task` if this worker can claim it; whether it could."""
  where = task_dir(root, phase, task.key)
  with contextlib.ExitStack() as claim:
    try:
      claim.enter_context(lease.hold(where, rundir.LOCK, wait_s=None))
    except lease.LeaseHeld:
      return False
    if distributed.from_process_0(is_done(root, phase, task)):   # finished before the claim
      return True
    say(f"claimed {phase}/{task.key}: {task.what}")
    _claimed[0] += 1
    task.fn()
    if task.complete is None and rundir.is_writer():
      files.write_json(where / rundir.TASK_DONE, {
          "host": lease.host(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                             time.gmtime())})
  return True


def reading():
  """The block reads finished runs that other workers may read at the same
  moment: its leases wait rather than refuse."""
  return _settings(Workers())


@contextlib.contextmanager
def writer(root, phase: str):
  """Yields whether this worker writes the phase's report: the one that
  claims RUN/plan/<phase>/report (the others, at the same moment, would
  write the same). Process 0 of the job writes it."""
  with contextlib.ExitStack() as claim:
    try:
      with _settings(Workers()):
        claim.enter_context(lease.hold(task_dir(root, phase, "report"), rundir.LOCK,
                                       wait_s=None))
    except lease.LeaseHeld:
      yield False
      return
    yield rundir.is_writer()
