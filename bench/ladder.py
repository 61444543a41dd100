r"""The ladder quickstart's cost: successive halving against the full grid
(issue 28). Runs the two commands of docs/reproduction.md,

    python -m doremi_jax.main --gin_file gin/ladder_quickstart.gin   (in OUT/halving)
    cp -r OUT/halving OUT/grid
    python -m doremi_jax.main --gin_file gin/ladder_quickstart.gin \
        --gin.train_study.schedule="'grid'"                           (in OUT/grid)

timing each, then reads both ladders: main-run FLOPs from study.json
(`schedule.compute`: every run's own count), and the seconds spent inside
each run from its complete.json, summed per part (the methods' own runs,
each rung's main runs), so the table says where the time went. The grid
reuses halving's runs, so its cost from scratch is halving's plus what the
second command trained.

    python bench/ladder.py [--out runs/bench_ladder] [--json_out ladder_cpu.json]
    python bench/ladder.py --reuse HALVING_DIR GRID_DIR [--wall_s 1650,520]

`--reuse` summarises two finished ladders instead of training (`--wall_s`:
the two commands' measured wall times, when known).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _emit import emit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "doremi_jax.main", "--gin_file", "gin/ladder_quickstart.gin"]


def run_seconds(root: Path) -> dict:
  """{relative run dir: seconds inside it} for every finished run under
  `root` (a grouped swarm's own complete.json, which trains nothing, too)."""
  out = {}
  for done in sorted(root.rglob("complete.json")):
    run = done.parent
    if run == root or "checkpoints" in run.parts:
      continue
    out[str(run.relative_to(root))] = float(json.loads(done.read_text())["seconds"])
  return out


def part_of(run: str) -> str:
  """'methods', or the rung's name for a rung's main run."""
  parts = run.split("/")
  return parts[1] if parts[0] == "rungs" else "methods"


def by_part(seconds: dict) -> dict:
  out: dict = {}
  for run, s in seconds.items():
    part = out.setdefault(part_of(run), {"runs": 0, "seconds": 0.0})
    part["runs"] += 1
    part["seconds"] = round(part["seconds"] + s, 2)
  return out


def summarise(halving: Path, grid: Path, wall: tuple, wall_source: str) -> dict:
  h, g = (json.loads((d / "study.json").read_text()) for d in (halving, grid))
  hs, gs = run_seconds(halving), run_seconds(grid)
  extra = {r: s for r, s in gs.items() if r not in hs}
  compute = h["schedule"]["compute"]
  return {
      "setup": "gin/ladder_quickstart.gin (6 arms x 3 seeds, method runs per seed)",
      "wall_source": wall_source,
      "rungs": [r["name"] for r in h["rungs"]],
      "machine": {"cpus": os.cpu_count(),
                  "system": " ".join(os.uname()[i] for i in (0, 2, 4))},
      "halving": {"wall_s": wall[0], "main_run_flops": compute["main_run_flops"],
                  "fraction_of_grid_flops": compute["fraction_of_grid"],
                  "run_seconds": round(sum(hs.values()), 1), "parts": by_part(hs),
                  "choice": h["choice"], "stopped_at": h["schedule"].get("stopped_at")},
      "grid": {"wall_s_extra": wall[1],
               "wall_s_from_scratch": None if None in wall else round(wall[0] + wall[1], 1),
               "main_run_flops": compute["grid_main_run_flops"],
               "run_seconds": round(sum(gs.values()), 1),
               "run_seconds_extra": round(sum(extra.values()), 1), "parts": by_part(gs),
               "choice": g["choice"]},
  }


def table(result: dict) -> tuple:
  header = ["", "main-run FLOPs", "wall (s)", "seconds in runs", "of which methods"]
  rows = []
  for name, key in (("halving", "halving"), ("full grid (from scratch)", "grid")):
    r = result[key]
    wall = r["wall_s"] if key == "halving" else r["wall_s_from_scratch"]
    rows.append([name, f"{r['main_run_flops']:.3g}", "-" if wall is None else f"{wall:.0f}",
                 f"{r['run_seconds']:.0f}",
                 f"{r['parts'].get('methods', {}).get('seconds', 0):.0f}"])
  return header, rows


def train(out: Path) -> tuple:
  halving, grid = out / "halving", out / "grid"
  if out.exists():
    shutil.rmtree(out)
  t0 = time.monotonic()
  subprocess.run(COMMAND + [f"--gin.run.workdir='{halving}'"], cwd=REPO, check=True)
  t1 = time.monotonic()
  shutil.copytree(halving, grid)
  subprocess.run(COMMAND + ["--gin.train_study.schedule='grid'",
                            f"--gin.run.workdir='{grid}'"], cwd=REPO, check=True)
  return halving, grid, (round(t1 - t0, 1), round(time.monotonic() - t1, 1))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="runs/bench_ladder")
  p.add_argument("--reuse", nargs=2, metavar=("HALVING_DIR", "GRID_DIR"))
  p.add_argument("--wall_s", help="with --reuse: the two commands' wall times, 'H,G'")
  p.add_argument("--json_out")
  args = p.parse_args()
  if args.reuse:
    halving, grid = (Path(d) for d in args.reuse)
    wall = tuple(float(x) for x in args.wall_s.split(",")) if args.wall_s else (None, None)
    if len(wall) != 2:
      p.error("--wall_s takes two numbers, 'H,G'")
    source = "given (--wall_s)" if args.wall_s else "not measured"
  else:
    halving, grid, wall = train(Path(args.out))
    source = "time.monotonic() around each command"
  result = summarise(halving, grid, wall, source)
  emit(result, *table(result), json_out=args.json_out)


if __name__ == "__main__":
  main()
