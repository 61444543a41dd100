"""Configuration plumbing: gin parsing, user-facing errors, run-directory config.

Gin configures a handful of top-level dataclasses and functions (T5X style);
everything a user can get wrong is turned into a `ConfigError` whose message
says what to change.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Iterable, Sequence

import gin


class ConfigError(ValueError):
  """A problem the user can fix in their gin files, flags or data."""


# Gin files given as relative paths are looked up relative to the working
# directory first and then relative to the repository root (so
# `--gin_file=gin/models/tiny.gin` and `include 'gin/models/tiny.gin'` work
# from anywhere inside or outside a checkout).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_SEARCH_PATHS = (".", _PACKAGE_ROOT, os.path.join(_PACKAGE_ROOT, "gin"))


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns `--gin.NAME=VALUE` flags into `--gin_bindings=NAME=VALUE`."""
  out = []
  for arg in argv:
    m = re.fullmatch(r"--gin\.([^=]+)=(.*)", arg, flags=re.S)
    if m:
      out.append(f"--gin_bindings={m.group(1)} = {m.group(2)}")
    else:
      out.append(arg)
  return out


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


def operative_config() -> str:
  return gin.operative_config_str()


def write_config(workdir: str, text: str, start_step: int) -> str:
  """Writes the resolved gin config into the run directory.

  The first run writes `config.gin`. A resumed run never overwrites it: when
  the config changed it is written next to it as
  `config.resumed_at_<step>.gin` so that nothing already written is lost.
  """
  from doremi_jax import io  # local import: keeps config import-light.
  path = os.path.join(workdir, "config.gin")
  if io.exists(path):
    if io.read_text(path) == text:
      return path
    path = os.path.join(workdir, f"config.resumed_at_{start_step}.gin")
  io.write_text(path, text)
  return path


def run_tool(main_fn) -> None:
  """Runs an absl `main_fn(argv)` for a command-line tool: warnings-only
  logging, and a ConfigError becomes `error: ...` with exit status 2."""
  from absl import app, logging

  def wrapped(argv):
    try:
      main_fn(argv)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  app.run(wrapped)
