"""Orbax checkpoints holding the train state *and* the data position: the
one place the package reads and writes checkpoints.

One checkpoint per saved step: item `state` (the sharded pytree, restored
directly into its shardings) and item `data` (JSON: the loader's position),
so a resumed run continues with exactly the batches it would have seen.
A checkpoint that cannot be read (a truncated file, a half-copied
directory) is moved aside to `<dir>_unreadable/<step>` and the newest
readable one is used instead.

A full disk while saving (orbax reports it at the next save or when the
run closes, from its background threads) is one ConfigError: the
half-written checkpoint is moved aside the same way, the previous one is
left readable and the message says which step a re-run resumes from.
Orbax's own error logs of that failure (a traceback per thread) are left
out; every other orbax log line is kept.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from doremi_jax import files
from doremi_jax.config import ConfigError


TMP_MARK = ".orbax-checkpoint-tmp"


class _QuietDiskFull(logging.Filter):
  """Drops orbax's error records of a full disk (Checkpointer reports it)."""

  def filter(self, record):
    if record.levelno < logging.ERROR:
      return True
    cause = record.exc_info[1] if record.exc_info else None
    return not (files.disk_full(cause) or files.disk_full(Exception(record.getMessage())))


for _name in ("absl", "asyncio"):   # orbax's threads; their event loops' unretrieved tasks
  logging.getLogger(_name).addFilter(_QuietDiskFull())


def _drop_closed_loop_reports():
  """When a save fails in orbax's background thread (a full disk), the
  TensorStore callbacks of the writes still in flight find that thread's
  event loop closed and report it as unraisable, once per array, before
  the failure reaches us: those reports (a closed loop in
  call_soon_threadsafe) are dropped, every other is kept."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop", False):
    return

  def hook(unraisable):
    frames, tb = [], unraisable.exc_traceback
    while tb is not None:
      frames.append(tb.tb_frame.f_code.co_name)
      tb = tb.tb_next
    if not (isinstance(unraisable.exc_value, RuntimeError) and "call_soon_threadsafe" in frames
            and "Event loop is closed" in str(unraisable.exc_value)):
      previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook


def _manager(directory, **options) -> ocp.CheckpointManager:
  directory = files.path(directory)
  return ocp.CheckpointManager(
      directory if "://" in str(directory) else directory.absolute(),
      options=ocp.CheckpointManagerOptions(**options))


class Checkpointer:
  """Saves every `every` steps (0: only when forced), keeping `keep`."""

  def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
    self.directory = files.path(directory)
    self.every = every
    self._options = dict(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = _manager(self.directory, **self._options)
    self._closed = False
    _drop_closed_loop_reports()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def maybe_save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    if not (force or self.due(step)) or step in self.manager.all_steps():
      return False
    with self._disk_full_is_an_error():
      return self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out.state, out.data

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict]]:
    """(step, state, data position) of the newest readable checkpoint, or
    None when there is none. Unreadable ones are reported by step and moved
    aside, not deleted."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data = self.restore(step, abstract_state)
        return step, state, data
      except Exception as e:  # pylint: disable=broad-except
        # orbax/TensorStore raise many types for a damaged file.
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception):
    aside = files.path(str(self.directory) + "_unreadable") / str(step)
    if jax.process_index() == 0:
      if files.exists(aside):
        aside = files.path(f"{aside}.{int(time.time())}")
      aside.parent.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(aside)
      first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
      print(f"warning: the checkpoint at step {step} cannot be read ({first}); moved it to "
            f"{aside} and trying the previous one.", flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
    self.manager.close()
    self.manager = _manager(self.directory, **self._options)

  def close(self):
    if self._closed:
      return
    with self._disk_full_is_an_error():
      self.manager.wait_until_finished()
    self._closed = True
    self.manager.close()

  @contextlib.contextmanager
  def _disk_full_is_an_error(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      reason = files.disk_full(e)
      if reason is None:
        raise
      raise self._disk_full(reason) from e

  def _disk_full(self, reason: str) -> ConfigError:
    """Closes the manager, sets the half-written checkpoint(s) aside and
    says what a re-run resumes from."""
    self._closed = True
    try:
      self.manager.close()
    except Exception:  # pylint: disable=broad-except
      pass            # the same failure, raised again by its threads
    entries = list(self.directory.iterdir()) if files.exists(self.directory) else []
    aside = []
    for p in sorted(e for e in entries if TMP_MARK in e.name):
      target = files.path(str(self.directory) + "_unreadable") / p.name
      if jax.process_index() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        p.rename(target)
      aside.append(f"step {p.name.split('.')[0]} to {target}")
    saved = sorted(int(e.name) for e in entries if e.name.isdigit())
    moved = (f" The half-written checkpoint was moved aside ({'; '.join(aside)}); delete it "
             "to free its space." if aside else "")
    resume = (f"the checkpoint of step {saved[-1]} is intact and a re-run resumes from it"
              if saved else "there is no earlier checkpoint, so a re-run starts from step 0")
    return ConfigError(f"the disk is full: saving a checkpoint in {self.directory} failed "
                       f"({reason}).{moved} {resume[0].upper() + resume[1:]}: free space (or give "
                       "--workdir a larger disk) and re-run the same command.")


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def restore_params(directory, abstract_params, what: str,
                   step: Optional[int] = None) -> tuple[Any, int]:
  """Only the parameters (`state.params`) of another run's checkpoint, read
  only, into the shardings of `abstract_params`; the newest step unless
  `step` (ConfigError naming the saved steps when it has none there).
  Returns (params, step). `what` names the run in errors."""
  if not files.exists(directory):
    raise ConfigError(f"{what} has no checkpoint directory ({directory}); run it to "
                      "completion first.")
  mngr = _manager(directory, read_only=True, save_interval_steps=0, create=False)
  try:
    saved = sorted(mngr.all_steps())
    if not saved:
      raise ConfigError(f"{what} has no checkpoint yet ({directory}); run it to completion "
                        "first.")
    step = saved[-1] if step is None else step
    if step not in saved:
      raise ConfigError(f"{what} has no checkpoint at step {step} ({directory}); it saved "
                        f"steps {', '.join(map(str, saved))}.")
    item = {"params": abstract_params}
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True)))
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(f"could not restore the parameters of {what} from {directory}/{step}: "
                        f"{e}. The checkpoint does not match the recorded architecture.") from e
  finally:
    mngr.close()
  return restored.state["params"], step
