"""File helpers that work on local paths and on gs:// (through etils.epath).

Only process 0 writes shared files; callers check `jax.process_index()`.
Writes go through a temporary file and a rename, so a killed run never
leaves a half-written JSON behind.

`read_json` and `read_jsonl` are the one reader of what an earlier run
wrote: a damaged file is a `ConfigError` naming it and what to do (re-run
the stage that writes it, or delete it), never a traceback. The one
damage a JSONL log may carry without being broken is a cut last line (a
run killed while appending); `read_jsonl` leaves it out, and a resume
drops it (`keep_jsonl_through`).

A full disk (or quota) while writing is a `ConfigError` naming the file
(`disk_full` recognises it, also in orbax/TensorStore's wording); the old
file is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from typing import Any, Optional

from etils import epath

from doremi_jax.config import ConfigError

FREE_SPACE = ("free space (or give --workdir a larger disk) and re-run the same command: it "
              "resumes from its last checkpoint")
_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}
DAMAGED = ("re-run the stage that writes it (a finished stage's files are rewritten when "
           "it is run again), or delete the file")


def path(p) -> epath.Path:
  return epath.Path(p)


def exists(p) -> bool:
  return epath.Path(p).exists()


def read_text(p) -> str:
  return epath.Path(p).read_text()


def disk_full(e: Optional[BaseException]) -> Optional[str]:
  """The reason ("No space left on device", "Disk quota exceeded") when
  `e` or an exception it was raised from says the disk is full, else None.
  TensorStore (orbax's writer) reports it as a ValueError quoting the OS
  error's text and code."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _FULL:
      return _FULL[e.errno]
    for code, reason in _FULL.items():
      if reason in str(e) or f"os_error_code='{code}'" in str(e):
        return reason
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def disk_full_is_an_error(p):
  """A full disk while writing `p` becomes a ConfigError naming it."""
  try:
    yield
  except OSError as e:
    reason = disk_full(e)
    if reason is None:
      raise
    raise ConfigError(f"the disk is full: writing {p} failed ({reason}); {FREE_SPACE}.") from e


def write_text(p, text: str) -> None:
  """Writes `p` whole or not at all: a local file goes to a temporary name
  of this process and thread beside it and is renamed into place (a crash
  leaves the old file or the new one); an object store's object (gs://) is
  published whole when its upload ends, so it is written directly."""
  p = epath.Path(p)
  with disk_full_is_an_error(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    if "://" in str(p):
      p.write_text(text)
      return
    tmp = p.parent / f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
      tmp.write_text(text)
      tmp.replace(p)
    except BaseException:
      tmp.unlink(missing_ok=True)
      raise


def write_json(p, obj: Any) -> None:
  write_text(p, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(p) -> Any:
  """The JSON file `p`; ConfigError naming it when it is damaged."""
  try:
    text = read_text(p)
  except UnicodeDecodeError as e:
    raise ConfigError(f"{p} is damaged (not UTF-8 text: {e}); {DAMAGED}.") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{p} is damaged (not valid JSON: {e.msg} at line {e.lineno}); "
                      f"{DAMAGED}.") from e


def append_jsonl(p, obj: Any) -> None:
  append_jsonl_rows(p, [obj])


def append_jsonl_rows(p, rows) -> None:
  """Appends `rows` to the JSONL file `p`, one line each, in one write."""
  p = epath.Path(p)
  with disk_full_is_an_error(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
      f.write("".join(json.dumps(obj) + "\n" for obj in rows))


def keep_jsonl_through(p, last_step: int, key: str = "step") -> None:
  """Rewrites the JSONL log `p` (rows with a `key`, "step" unless told)
  keeping the rows of steps <= `last_step`, in order: what a run resumed after `last_step`
  steps continues, so the log ends as an uninterrupted run's. The rows a
  killed run wrote past its checkpoint, and a line it cut short, are
  dropped. Nothing happens when there is no file."""
  p = epath.Path(p)
  if not p.exists():
    return
  kept = []
  for line in p.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and int(row[key]) <= last_step:
      kept.append(line + "\n")
  write_text(p, "".join(kept))


def read_jsonl(p) -> list:
  """The rows of the JSONL log `p` ([] when there is none). A cut last
  line (no newline after it: a run killed while appending) is left out;
  any other line that is not JSON is a ConfigError naming the file and
  the line."""
  p = epath.Path(p)
  if not p.exists():
    return []
  try:
    text = p.read_text()
  except UnicodeDecodeError as e:
    raise ConfigError(f"{p} is damaged (not UTF-8 text: {e}); {DAMAGED}.") from e
  lines = text.split("\n")
  rows = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if n == len(lines):      # the last line, with no newline after it: cut short
        break
      raise ConfigError(f"{p} is damaged (line {n} is not valid JSON: {e.msg}); "
                        f"{DAMAGED}.") from e
  return rows
