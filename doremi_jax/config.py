"""Configuration plumbing: gin parsing, user-facing errors, value checks.

Gin configures a handful of top-level dataclasses and functions (T5X style);
everything a user can get wrong is turned into a `ConfigError` whose message
says what to change.
"""

from __future__ import annotations

import os
from typing import Iterable

import gin


class ConfigError(ValueError):
  """A problem the user can fix in their gin files, flags or data."""


# Gin files given as relative paths are looked up relative to the working
# directory first and then relative to the repository root (so
# `--gin_file=gin/models/tiny.gin` and `include 'gin/models/tiny.gin'` work
# from anywhere inside or outside a checkout).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_SEARCH_PATHS = (".", _PACKAGE_ROOT, os.path.join(_PACKAGE_ROOT, "gin"))


def parse_gin(gin_files: Iterable[str], bindings: Iterable[str]) -> None:
  """Parses gin files and bindings, turning gin's errors into ConfigError."""
  gin_files = list(gin_files)
  bindings = list(bindings)
  for path in GIN_SEARCH_PATHS:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not any(os.path.exists(os.path.join(p, f)) for p in GIN_SEARCH_PATHS):
      raise ConfigError(
          f"gin file {f!r} does not exist (looked in {', '.join(GIN_SEARCH_PATHS)}). "
          "Pass an existing file to --gin_file, e.g. gin/quickstart.gin.")
  try:
    gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=False)
  except (ValueError, KeyError, SyntaxError) as e:
    msg = str(e).strip().splitlines()
    raise ConfigError(
        "could not parse the gin configuration: " + " ".join(msg) +
        "\nCheck the spelling of the configurable and parameter names in your "
        "--gin_file/--gin.NAME=VALUE arguments (see the files under gin/ for "
        "valid names).") from e


def check(condition, message: str) -> None:
  """Raises `ConfigError(message)` unless `condition` holds."""
  if not condition:
    raise ConfigError(message)


def check_number(where: str, value, *, integer: bool = False, low=None, high=None,
                 low_open: bool = False, high_open: bool = False) -> None:
  """Checks that `value` is a finite number (an int with `integer=True`, never a
  bool) in the given range; otherwise raises a ConfigError such as
  "OptimizerConfig.b2 must be in [0, 1), got 1.5."."""
  import math
  import numbers
  is_num = (isinstance(value, numbers.Integral) if integer else
            isinstance(value, numbers.Real) and math.isfinite(value))
  is_num = is_num and not isinstance(value, bool)
  kind = "an integer" if integer else "a finite number"
  if low is not None and high is not None:
    rng = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    want = rng if is_num else f"{kind} {rng}"
  elif low == 0:
    want = ("a positive " if low_open else "a non-negative ") + kind.split(" ", 1)[1]
  elif low is not None:
    want = f"{kind} {'>' if low_open else '>='} {low}"
  elif high is not None:
    want = f"{kind} {'<' if high_open else '<='} {high}"
  else:
    want = kind
  ok = is_num and (low is None or (value > low if low_open else value >= low)) and (
      high is None or (value < high if high_open else value <= high))
  check(ok, f"{where} must be {want}, got {value!r}.")
