"""File helpers that work on local paths and on gs:// (through etils.epath).

Only process 0 writes shared files; callers check `jax.process_index()`.
Writes go through a temporary file and a rename, so a killed run never
leaves a half-written JSON behind.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath


def path(p) -> epath.Path:
  return epath.Path(p)


def exists(p) -> bool:
  return epath.Path(p).exists()


def read_text(p) -> str:
  return epath.Path(p).read_text()


def write_text(p, text: str) -> None:
  p = epath.Path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(p)


def write_json(p, obj: Any) -> None:
  write_text(p, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(p) -> Any:
  return json.loads(read_text(p))


def append_jsonl(p, obj: Any) -> None:
  append_jsonl_rows(p, [obj])


def append_jsonl_rows(p, rows) -> None:
  """Appends `rows` to the JSONL file `p`, one line each, in one write."""
  p = epath.Path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("a") as f:
    f.write("".join(json.dumps(obj) + "\n" for obj in rows))


def keep_jsonl_through(p, last_step: int) -> None:
  """Rewrites the JSONL log `p` (rows with a "step") keeping the rows of
  steps <= `last_step`, in order: what a run resumed after `last_step`
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
    if isinstance(row, dict) and int(row["step"]) <= last_step:
      kept.append(line + "\n")
  write_text(p, "".join(kept))


def read_jsonl(p) -> list:
  p = epath.Path(p)
  if not p.exists():
    return []
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
