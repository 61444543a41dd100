r"""Soak: a long run of the main stage with evaluation, checkpoints and an
online mixer on, recording the process's resident memory and step time every
`--every` steps (issue 27's goal: memory growth under 5% and no slowdown).

    python bench/soak.py [--steps 20000 --every 1000 --mixer odm --workdir /tmp/doremi_soak]

Runs README's entry point, `python -m doremi_jax.main`, as a child process:
gin/cpu.gin's tiny model on the built-in corpus, `train_main_model.mixer`
(ODM by default), evaluation and a checkpoint every `--every` steps (orbax
keeps 3, so every save after the third also deletes one), metrics every
`--log_every`. While it runs, the child's VmRSS is read from /proc every
0.2 s. After it ends, each `--every`-step mark takes its time from the
matching metrics.jsonl row's timestamp and its memory from the last RSS
sample before that time. A window's step time is its wall time over its
steps; every window holds the same work (its steps, one evaluation, one
checkpoint), so windows compare directly.

Growth is measured from the mark at `--baseline` (default 2000: the first
window holds compilation and the first checkpoint's thread pools, which are
allocated once); growth from the first mark is shown beside it. Slowdown is
the median step time of the last 5 windows over that of windows 2-6. The
machine's noise moves single marks by several percent (RSS rises and falls
as the allocator returns memory; other processes slow a window), so beside
the two-point figures the script fits a least-squares line through the marks
and reports its change over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _emit import emit  # noqa: E402


TICK = os.sysconf("SC_CLK_TCK")


def usage(pid: int):
  """(resident bytes, CPU seconds used: user + system, all threads) of `pid`,
  or None once it is gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except (OSError, StopIteration):
    return None
  return rss, (int(fields[11]) + int(fields[12])) / TICK   # utime, stime


def sample(proc, samples, period=0.2):
  while proc.poll() is None:
    u = usage(proc.pid)
    if u is not None:
      samples.append((time.time(), *u))
    time.sleep(period)


def median(xs):
  xs = sorted(xs)
  n = len(xs)
  return (xs[n // 2] + xs[(n - 1) // 2]) / 2


def trend(xs, ys):
  """Least-squares slope of ys over xs, and the fitted change over the span
  relative to the fitted start (a trend, less noisy than two points)."""
  n = len(xs)
  mx, my = sum(xs) / n, sum(ys) / n
  slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
  start = my + slope * (xs[0] - mx)
  return slope, slope * (xs[-1] - xs[0]) / start


def marks_of(rows, samples, every):
  """[(step, timestamp, rss, CPU seconds at that time)] for each step that is
  a multiple of `every`."""
  out = []
  for row in rows:
    if row["step"] % every:
      continue
    before = [(r, c) for t, r, c in samples if t <= row["timestamp"]]
    out.append((row["step"], row["timestamp"], *(before[-1] if before else (None, None))))
  return out


def command(args):
  b = [f"--gin.TrainConfig.num_steps={args.steps}",
       f"--gin.TrainConfig.eval_every={args.every}",
       f"--gin.TrainConfig.checkpoint_every={args.every}",
       f"--gin.TrainConfig.log_every={args.log_every}",
       f"--gin.TrainConfig.global_batch_size={args.batch}",
       f"--gin.SEQ_LEN={args.seq_len}",
       "--gin.run.stage='main'",
       "--gin.train_main_model.weights='uniform'",
       f"--gin.train_main_model.mixer='{args.mixer}'"]
  return [sys.executable, "-m", "doremi_jax.main", "--gin_file=gin/cpu.gin",
          f"--workdir={args.workdir}"] + b + [f"--gin.{g}" for g in args.gin]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=20000)
  p.add_argument("--every", type=int, default=1000)
  p.add_argument("--log_every", type=int, default=100)
  p.add_argument("--baseline", type=int, default=2000)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--mixer", default="odm")
  p.add_argument("--gin", action="append", default=[],
                 help="more bindings, NAME=VALUE (e.g. ODMMixer.warmup_steps=100 for a short try)")
  p.add_argument("--workdir", default="/tmp/doremi_soak")
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  if args.steps % args.every or args.baseline % args.every or args.steps < 7 * args.every:
    sys.exit("error: --steps and --baseline must be multiples of --every, and --steps at "
             "least 7 x --every (the slowdown compares windows 2-6 with the last 5).")
  shutil.rmtree(args.workdir, ignore_errors=True)
  cmd = command(args)
  samples = []
  t0 = time.time()
  log = open(args.workdir.rstrip("/") + ".log", "w")
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  sampler = threading.Thread(target=sample, args=(proc, samples), daemon=True)
  sampler.start()
  rc = proc.wait()
  sampler.join()
  wall = time.time() - t0
  if rc:
    sys.exit(f"the run failed (exit {rc}); see {log.name}")
  with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  marks = marks_of(rows, samples, args.every)
  steps = [m[0] for m in marks]
  if steps != list(range(args.every, args.steps + 1, args.every)):
    sys.exit(f"metrics.jsonl lacks marks: has {steps}")
  result = summarise(args, marks, samples)
  result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
            "command": " ".join(cmd), "config": vars(args), "wall_seconds": wall} | result
  table = [(m["step"], f"{m['rss_mib']:.1f}", fmt_ms(m["wall_seconds_per_step"]),
            fmt_ms(m["cpu_seconds_per_step"])) for m in result["marks"]]
  table += [(f"RSS growth, step {args.baseline} to {args.steps}",
             f"{result['rss_growth_from_baseline']:+.2%}", "", ""),
            (f"RSS growth, step {args.every} to {args.steps}",
             f"{result['rss_growth_from_first_mark']:+.2%}", "", ""),
            (f"RSS, least-squares trend over steps {args.baseline}-{args.steps}",
             f"{result['rss_fitted_growth_from_baseline']:+.2%} "
             f"({result['rss_fitted_mib_per_1000_steps']:+.2f} MiB per 1000 steps)", "", ""),
            (f"peak RSS after step {args.baseline} over the baseline",
             f"{result['peak_rss_after_baseline_over_baseline']:+.2%}", "", ""),
            ("step time, least-squares trend over the windows", "",
             f"{result['wall']['fitted_change']:+.2%}", f"{result['cpu']['fitted_change']:+.2%}"),
            ("step time, last 5 windows / windows 2-6", "",
             f"{result['wall']['last5_over_2to6']:.3f}x",
             f"{result['cpu']['last5_over_2to6']:.3f}x")]
  emit(result, ["step", "RSS (MiB)", "wall ms per step (window ending here)",
                "CPU ms per step (all threads)"], table, args.json_out)


def fmt_ms(x):
  return "" if x is None else f"{x * 1e3:.2f}"


def summarise(args, marks, samples) -> dict:
  """Memory at the marks and per-window step time (wall and CPU), with
  their two-point and least-squares changes."""
  steps = [m[0] for m in marks]
  rss = {s: r for s, _, r, _ in marks}
  ends = steps[1:]
  per = {"wall": [(marks[i][1] - marks[i - 1][1]) / args.every for i in range(1, len(marks))],
         "cpu": [(marks[i][3] - marks[i - 1][3]) / args.every for i in range(1, len(marks))]}
  base = rss[args.baseline]
  base_t = marks[steps.index(args.baseline)][1]
  peak_after = max(r for t, r, _ in samples if t >= base_t)
  after = [s for s in steps if s >= args.baseline]
  rss_slope, rss_fit = trend(after, [rss[s] for s in after])
  out = {"marks": [{"step": s, "rss_mib": rss[s] / 2**20,
                    "wall_seconds_per_step": None if i == 0 else per["wall"][i - 1],
                    "cpu_seconds_per_step": None if i == 0 else per["cpu"][i - 1]}
                   for i, s in enumerate(steps)],
         "rss_growth_from_baseline": rss[args.steps] / base - 1,
         "rss_growth_from_first_mark": rss[args.steps] / rss[args.every] - 1,
         "rss_fitted_growth_from_baseline": rss_fit,
         "rss_fitted_mib_per_1000_steps": rss_slope * 1000 / 2**20,
         "peak_rss_after_baseline_over_baseline": peak_after / base - 1,
         "goal": "rss growth under 5% and no slowdown"}
  for kind, xs in per.items():
    out[kind] = {"fitted_change": trend(ends, xs)[1],
                 "last5_over_2to6": median(xs[-5:]) / median(xs[:5])}
  return out


if __name__ == "__main__":
  main()
