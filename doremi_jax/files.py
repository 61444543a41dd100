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
  p = epath.Path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("a") as f:
    f.write(json.dumps(obj) + "\n")


def read_jsonl(p) -> list:
  p = epath.Path(p)
  if not p.exists():
    return []
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
