r"""`python -m doremi_jax.report RUN_DIR`: report.json, report.md and plots
for a DoReMi run (see `doremi_jax.analysis.pipeline_report`).

RUN_DIR is a `pipeline` run directory or the directory of a single stage;
the report says what is missing or unfinished and never fails because a
stage has not run yet. Plots go to RUN_DIR/plots/.
"""

from __future__ import annotations

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import pipeline_report
from doremi_jax.config import ConfigError


def main(argv):
  if len(argv) != 2:
    raise ConfigError("usage: python -m doremi_jax.report RUN_DIR")
  path = pipeline_report.write(argv[1])
  unfinished = pipeline_report.unfinished(
      files.read_json(files.path(argv[1]) / rundir.REPORT_JSON))
  print(f"report: {path}")
  if unfinished:
    print("missing or unfinished: " + ", ".join(unfinished))


if __name__ == "__main__":
  from doremi_jax.cli import run_tool
  run_tool(main)
