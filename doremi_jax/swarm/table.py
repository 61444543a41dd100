"""A swarm table from elsewhere (`train_swarm.table`): the mixtures and
per-domain losses of runs someone else trained (RegMix and Olmix publish
theirs), read so the laws are fitted and an optimum proposed without
training a member.

The table is a CSV file with a header row, or a JSON file holding a list of
rows ({column: value}) or {"rows": [...]}. `weights` maps the table's
mixture columns to our domains and `losses` its loss columns to our
domains ({their column: our domain}); by default a domain's weight is the
column named as the domain and its loss the column `<domain>_loss`. Every
one of our domains needs both; other columns are ignored. Each row's
weights must be a distribution (finite, non-negative, summing to 1 within
1e-3; it is then renormalised exactly), each loss finite, and the table
needs more rows than domains (a law with one weight per domain).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from doremi_jax import files
from doremi_jax.config import ConfigError

SUM_TOLERANCE = 1e-3


def _rows(path: str, data: bytes) -> list:
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(f"train_swarm.table: {path} is not UTF-8 text ({e.reason} at byte "
                      f"{e.start}); save the table as UTF-8 CSV or JSON.") from None
  if str(path).lower().endswith(".json"):
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      raise ConfigError(f"train_swarm.table: {path} is not valid JSON ({e.msg}, line "
                        f"{e.lineno}).") from e
    rows = obj.get("rows") if isinstance(obj, dict) else obj
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
      raise ConfigError(f"train_swarm.table: {path} must hold a list of rows {{column: value}} "
                        "(or {\"rows\": [...]}).")
    return rows
  return list(csv.DictReader(io.StringIO(text)))


def _mapping(given: Optional[Mapping], domains: Sequence[str], default, what: str) -> dict:
  """{our domain: their column}."""
  if given is None:
    return {d: default(d) for d in domains}
  if not isinstance(given, Mapping):
    raise ConfigError(f"train_swarm.table_{what} must be a dict {{their column: our domain}}, "
                      f"got {given!r}.")
  unknown = sorted(str(d) for d in given.values() if d not in domains)
  if unknown:
    raise ConfigError(f"train_swarm.table_{what} maps to domains this corpus does not have: "
                      f"{unknown}; its domains are {list(domains)}.")
  out = {}
  for column, d in given.items():
    if d in out:
      raise ConfigError(f"train_swarm.table_{what}: two columns ({out[d]!r}, {column!r}) map "
                        f"to the domain {d!r}.")
    out[d] = column
  missing = [d for d in domains if d not in out]
  if missing:
    raise ConfigError(f"train_swarm.table_{what} leaves domains without a column: {missing}; "
                      "map a column of the table to each.")
  return out


def _number(row: dict, column: str, n: int, path: str) -> float:
  if column not in row:
    raise ConfigError(f"train_swarm.table: {path} has no column {column!r} (row {n}); its "
                      f"columns are {sorted(row)}. Map the columns with train_swarm.table_"
                      "weights / table_losses.")
  try:
    x = float(row[column])
  except (TypeError, ValueError):
    x = math.nan
  if not math.isfinite(x):
    raise ConfigError(f"train_swarm.table: {path} row {n}, column {column!r} is "
                      f"{row[column]!r}, not a finite number.")
  return x


def read(path: str, domains: Sequence[str], weights: Optional[Mapping] = None,
         losses: Optional[Mapping] = None) -> dict:
  """{"mixtures": [M, K], "losses": [M, K], "rows", "sha256"} of the table
  at `path` in our domain order (module docstring; ConfigError on bad input)."""
  wmap = _mapping(weights, domains, lambda d: d, "weights")
  lmap = _mapping(losses, domains, lambda d: f"{d}_loss", "losses")
  p = files.path(path)
  if not files.exists(p):
    raise ConfigError(f"train_swarm.table: {path} does not exist; name a CSV or JSON file of "
                      "mixtures and per-domain losses.")
  data = p.read_bytes()
  rows = _rows(path, data)
  if len(rows) < len(domains) + 1:
    raise ConfigError(f"train_swarm.table: {path} has {len(rows)} rows; a law with one weight "
                      f"per domain needs at least {len(domains) + 1} for {len(domains)} "
                      "domains.")
  X, Y = [], []
  for n, row in enumerate(rows, 1):
    w = np.array([_number(row, wmap[d], n, path) for d in domains])
    if np.any(w < 0) or abs(w.sum() - 1) > SUM_TOLERANCE:
      raise ConfigError(f"train_swarm.table: {path} row {n}'s weights are not a distribution "
                        f"(sum {w.sum():.6g}, smallest {w.min():.6g}); each row's weights over "
                        "the mapped columns must be non-negative and sum to 1.")
    X.append(w / w.sum())
    Y.append([_number(row, lmap[d], n, path) for d in domains])
  return {"mixtures": np.array(X), "losses": np.array(Y), "rows": len(rows),
          "sha256": hashlib.sha256(data).hexdigest(),
          "columns": {"weights": wmap, "losses": lmap}}


def source(path: Any, table: dict) -> dict:
  """What swarm.json records about the table it was fitted to."""
  return {"table": str(path), "sha256": table["sha256"], "rows": table["rows"],
          "columns": table["columns"]}
