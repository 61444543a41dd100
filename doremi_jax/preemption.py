"""Stopping a run cleanly when it is asked to: preemption and Ctrl-C.

SIGTERM (a preempted VM, a scheduler's time limit) and the first SIGINT
(Ctrl-C) ask the run to stop. The training loop finishes the step in
flight, saves a checkpoint of that step (train state, data position, the
mixer's and DRO's state), writes a line saying so and the process exits
with status `EXIT_STATUS` (75, sysexits' EX_TEMPFAIL: re-run the same
command to resume). A second SIGINT aborts at once (exit 130, no
checkpoint beyond the last one written).

On several processes every process must stop at the same step:

* Where JAX's preemption service runs (it starts with
  `jax.distributed.initialize`; on Cloud TPU it also receives maintenance
  events), SIGTERM is the service's: the processes agree on the step through
  the coordination service (`multihost_utils.reached_preemption_sync_point`,
  asked at every step). A Ctrl-C is turned into a SIGTERM to this process so
  it takes the same road.
* Otherwise every process's request is all-gathered at each logged step
  (`TrainConfig.log_every`), and all stop at the first logged step after
  any one was asked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Optional

import numpy as np

EXIT_STATUS = 75
EXIT_ABORTED = 130


class Stopped(Exception):
  """The run stopped when asked to, with a checkpoint (not an error)."""

  def __init__(self, stage: str, step: Optional[int], reason: str, where: str = ""):
    self.stage, self.step, self.reason = stage, step, reason
    at = (f"at step {step}, with a checkpoint of that step in {where}"
          if step is not None else "before it started training")
    super().__init__(f"[{stage}] stopped on {reason} {at}; re-run the same command to "
                     "resume.")


_requested = {"reason": None}   # what asked the run to stop, once asked
_installed = {"active": False, "sync_manager": False}


def requested() -> Optional[str]:
  """What asked this process to stop (e.g. 'SIGTERM'), or None."""
  return _requested["reason"]


def request(reason: str) -> None:
  """Asks the run to stop after the step in flight (what a signal does)."""
  if _requested["reason"] is None:
    _requested["reason"] = reason
    print(f"[doremi_jax] {reason}: stopping after the step in flight and saving a "
          "checkpoint (Ctrl-C again aborts without one)", file=sys.stderr, flush=True)


def _sync_manager() -> bool:
  """Whether JAX's preemption service runs in this (multi-process) job."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  state = distributed.global_state
  return state.client is not None and state.preemption_sync_manager is not None


ABORTED = ("error: interrupted (Ctrl-C): stopped without saving; what was written is kept, "
           "and re-running the same command resumes from the last checkpoint.")


def abort() -> None:
  """Ends the process at once (exit 130) with one line: background threads
  (an async checkpoint being written) die with it instead of failing
  noisily at shutdown, and their unfinished temporary directory is never
  taken for a checkpoint."""
  print(ABORTED, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(EXIT_ABORTED)


def _on_sigint(signum, frame):
  del signum, frame
  if _requested["reason"] is not None:
    abort()
  request("SIGINT")
  if _installed["sync_manager"]:
    # The preemption service owns SIGTERM: hand the request to it, so that
    # every process agrees on the step (the message still says Ctrl-C).
    os.kill(os.getpid(), signal.SIGTERM)


def _on_sigterm(signum, frame):
  del signum, frame
  request("SIGTERM")


@contextlib.contextmanager
def handlers():
  """Installs the stop handlers for the block (from the main thread only;
  elsewhere the block runs with the process's own handlers)."""
  if threading.current_thread() is not threading.main_thread() or _installed["active"]:
    yield
    return
  sync = _sync_manager()
  previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
  signal.signal(signal.SIGINT, _on_sigint)
  if not sync:
    previous[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
  _installed.update(active=True, sync_manager=sync)
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    _installed.update(active=False, sync_manager=False)
    _requested["reason"] = None


def should_stop(step: int, logged: bool) -> bool:
  """Whether the run stops after step `step` (every process calls this at
  every step, with the same arguments; `logged` marks a logged step)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return _requested["reason"] is not None
  if _installed["sync_manager"]:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    if multihost_utils.reached_preemption_sync_point(step):
      _requested["reason"] = _requested["reason"] or "SIGTERM"
      return True
    return False
  if not logged:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  asked = np.asarray(multihost_utils.process_allgather(
      np.asarray([_requested["reason"] is not None], np.int32)))
  if asked.any():
    _requested["reason"] = _requested["reason"] or "a stop request on another process"
    return True
  return False
