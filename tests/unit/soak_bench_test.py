"""bench/soak.py's arithmetic: the least-squares trend against NumPy's fit,
and the per-window figures from planted marks (a leak and a slowdown are
reported as such; a flat run as flat)."""

import argparse
import os
import sys

import numpy as np

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import soak  # noqa: E402


def test_trend_matches_numpy_polyfit():
  rng = np.random.default_rng(0)
  xs = np.arange(2000, 20001, 1000.0)
  ys = 900e6 + 3e3 * xs + rng.normal(0, 5e6, xs.size)
  slope, change = soak.trend(list(xs), list(ys))
  want_slope, want_icept = np.polyfit(xs, ys, 1)
  assert np.isclose(slope, want_slope)
  start = want_icept + want_slope * xs[0]
  assert np.isclose(change, want_slope * (xs[-1] - xs[0]) / start)


def _marks(rss_per_step, seconds_per_step, every=1000, steps=20000):
  """Planted marks: RSS growing by `rss_per_step` bytes a step, step time
  growing linearly from 10 ms by `seconds_per_step` over the run; CPU twice wall."""
  marks, samples, t, cpu = [], [], 0.0, 0.0
  for s in range(every, steps + 1, every):
    dt = (0.010 + seconds_per_step * s / steps) * every
    t, cpu = t + dt, cpu + 2 * dt
    rss = 1e9 + rss_per_step * s
    marks.append((s, t, rss, cpu))
    samples.append((t, rss, cpu))
  return marks, samples


def test_summarise_reports_a_leak_and_a_slowdown_and_a_flat_run():
  args = argparse.Namespace(every=1000, steps=20000, baseline=2000)
  flat = soak.summarise(args, *_marks(0, 0))
  assert abs(flat["rss_growth_from_baseline"]) < 1e-12
  assert abs(flat["rss_fitted_growth_from_baseline"]) < 1e-12
  assert np.isclose(flat["wall"]["last5_over_2to6"], 1) and np.isclose(flat["cpu"]["fitted_change"], 0)
  assert flat["marks"][0]["wall_seconds_per_step"] is None
  assert np.isclose(flat["marks"][1]["cpu_seconds_per_step"], 0.020)

  leak = soak.summarise(args, *_marks(1e9 * 0.10 / 18000, 0.005))   # +10% from step 2000 to 20000
  assert np.isclose(leak["rss_growth_from_baseline"], 0.10 * 1e9 / (1e9 + 2000 * 1e9 * 0.10 / 18000))
  assert np.isclose(leak["rss_fitted_growth_from_baseline"], leak["rss_growth_from_baseline"])
  assert leak["wall"]["last5_over_2to6"] > 1.3 and leak["cpu"]["fitted_change"] > 0.3
