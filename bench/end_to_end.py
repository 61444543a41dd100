r"""End-to-end wall time of README's first command (the quickstart pipeline),
per stage, with the first step (XLA compile + one step) shown separately.

    python bench/end_to_end.py [--workdir /tmp/doremi_e2e] [--gin_file gin/quickstart.gin]

Runs `python -m doremi_jax.main --gin_file ...` in a fresh run directory (the
whole command, process start and imports included), then reads each stage's
complete.json. Prints JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _emit import emit  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="/tmp/doremi_e2e")
  p.add_argument("--gin_file", default="gin/quickstart.gin")
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, "-m", "doremi_jax.main", f"--gin_file={args.gin_file}",
                      f"--workdir={args.workdir}"], cwd=REPO, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if r.returncode:
    sys.exit(f"the run failed:\n{r.stderr[-3000:]}")
  state = json.load(open(os.path.join(args.workdir, "pipeline.json")))
  stages = {}
  for name, s in state["stages"].items():
    done = json.load(open(os.path.join(args.workdir, name, "complete.json")))
    t = done.get("timing", {})
    later = t.get("later_steps_seconds")
    stages[name] = {
        "stage_seconds": s["seconds"],
        "first_step_seconds": t.get("first_step_seconds"),
        "later_steps": t.get("later_steps"),
        "later_steps_seconds": later,
        "tokens_per_s": (t["later_steps"] * t["tokens_per_step"] / later) if later else None,
        "other_seconds": s["seconds"] - (t.get("first_step_seconds") or 0) - (later or 0),
    }
  result = {"command": f"python -m doremi_jax.main --gin_file {args.gin_file}",
            "wall_seconds": wall, "pipeline_seconds": state["seconds"],
            "startup_and_report_seconds": wall - sum(s["stage_seconds"] for s in stages.values()),
            "stages": stages, "cpu_count": os.cpu_count()}
  rows = [(name, f"{s['stage_seconds']:.1f}", f"{s['first_step_seconds']:.1f}",
           f"{s['later_steps_seconds']:.1f} ({s['later_steps']} steps)",
           f"{s['tokens_per_s'] / 1e3:.1f}k", f"{s['other_seconds']:.1f}")
          for name, s in stages.items()]
  rows.append(("process start, imports, report", f"{result['startup_and_report_seconds']:.1f}",
               "", "", "", ""))
  rows.append(("**total (the whole command)**", f"**{wall:.1f}**", "", "", "", ""))
  emit(result, ["stage", "wall (s)", "first step: compile + run (s)", "later steps (s)",
                "tok/s after the first step", "eval, setup, checkpoints (s)"], rows,
       args.json_out)

if __name__ == "__main__":
  main()
