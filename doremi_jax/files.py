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
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from etils import epath

from doremi_jax.config import ConfigError

DAMAGED = ("re-run the stage that writes it (a finished stage's files are rewritten when "
           "it is run again), or delete the file")


def path(p) -> epath.Path:
  return epath.Path(p)


def exists(p) -> bool:
  return epath.Path(p).exists()


def read_text(p) -> str:
  return epath.Path(p).read_text()


def write_text(p, text: str) -> None:
  """Writes `p` whole or not at all: a local file goes to a temporary name
  of this process and thread beside it and is renamed into place (a crash
  leaves the old file or the new one); an object store's object (gs://) is
  published whole when its upload ends, so it is written directly."""
  p = epath.Path(p)
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
