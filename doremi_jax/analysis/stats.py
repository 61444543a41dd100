"""The mixture study's statistics, as plain functions of per-seed numbers.

Lower is better everywhere (losses). Intervals are Student-t intervals over
seeds; differences are paired by seed (seed s of every arm shares the
initialisation and the data-order seed), so the interval is the one-sample t
interval of the per-seed differences. With several arms compared with one
baseline, each interval is widened for the number of comparisons by
Bonferroni's rule (confidence 1 - (1 - level) / m), which holds whatever the
dependence between arms; the verdict is `wins` when the whole adjusted
interval of (arm - baseline) is below zero, `loses` when it is above, `ties`
otherwise.

Compute to target (the DoReMi paper's "reaches the baseline's accuracy 2.6x
faster"): on each seed, the first step at which an arm's evaluation curve
reaches the baseline's final uniform-average loss (linear interpolation
between evaluations); the speed-up is the baseline's steps over the arm's,
summarised by the geometric mean over seeds with a t interval on the log
ratios. An arm that never reaches the target has no finite speed-up on that
seed; it is reported as a speed-up below (its last step / baseline steps)
and counted as not reached. An arm whose step-0 evaluation (before any
training) already reaches the target needs no steps at all, so its ratio
of steps is undefined (a division by zero): that seed is "at target from
the start", and with any such seed the speed-up has no mean or interval
(null, with the reason and the number of such seeds).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats as sps


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """(mean, lo, hi): the t interval of the mean of `x` (n >= 2 values)."""
  x = np.asarray(x, np.float64)
  n = len(x)
  if n < 2:
    raise ValueError("an interval needs at least 2 values")
  mean = float(x.mean())
  half = float(sps.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
  return mean, mean - half, mean + half


def adjusted_level(level: float, comparisons: int) -> float:
  """Bonferroni: each of `comparisons` intervals at 1 - (1 - level) / m."""
  return 1.0 - (1.0 - level) / max(int(comparisons), 1)


def verdict(lo: float, hi: float, higher_is_better: bool = False) -> str:
  """For a difference arm - baseline of losses (lower is better), or of a
  metric where higher is better (accuracy)."""
  if lo > 0 or hi < 0:
    return "wins" if (lo > 0) == higher_is_better else "loses"
  return "ties"


def paired_difference(arm: Sequence[float], baseline: Sequence[float], level: float = 0.95,
                      comparisons: int = 1, higher_is_better: bool = False) -> dict:
  """Paired (by seed) difference arm - baseline: {"diff", "ci", "verdict"}
  with the interval adjusted for `comparisons` arms."""
  d = np.asarray(arm, np.float64) - np.asarray(baseline, np.float64)
  mean, lo, hi = t_interval(d, adjusted_level(level, comparisons))
  return {"diff": mean, "ci": [lo, hi], "verdict": verdict(lo, hi, higher_is_better)}


def steps_to_target(steps: Sequence[float], losses: Sequence[float],
                    target: float) -> float:
  """The first step at which the curve (steps, losses) reaches `target`
  (loss <= target), linearly interpolated between evaluations; inf if it
  never does."""
  steps = np.asarray(steps, np.float64)
  losses = np.asarray(losses, np.float64)
  hit = np.flatnonzero(losses <= target)
  if not len(hit):
    return math.inf
  j = int(hit[0])
  if j == 0:
    return float(steps[0])
  s0, s1, l0, l1 = steps[j - 1], steps[j], losses[j - 1], losses[j]
  return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))


AT_START = "at target from the start"


def speedup(arm_curves: Sequence[tuple], baseline_curves: Sequence[tuple],
            level: float = 0.95, comparisons: int = 1) -> dict:
  """Speed-up to the baseline's final loss, paired by seed. Each curve is
  (steps, losses). Returns {"mean" (geometric mean), "ci", "per_seed",
  "reached" (seeds where the arm reached the target), "at_start" (seeds
  where it was there at step 0)}. With any seed at the target from step 0
  (the arm's, or the baseline's own, step-0 loss already at or below the
  baseline's final loss) "mean" and "ci" are None, that seed's "per_seed"
  is None, and "reason" is AT_START."""
  ratios, reached, at_start = [], 0, 0
  for (a_steps, a_loss), (b_steps, b_loss) in zip(arm_curves, baseline_curves):
    target = float(b_loss[-1])
    base = steps_to_target(b_steps, b_loss, target)
    mine = steps_to_target(a_steps, a_loss, target)
    if mine <= 0 or base <= 0:   # at the target before any step: no ratio of steps
      reached += 1
      at_start += 1
      ratios.append(None)
    elif math.isfinite(mine):
      reached += 1
      ratios.append(base / mine)
    else:  # not reached by the end: the speed-up is below base / last step
      ratios.append(base / float(a_steps[-1]))
  out = {"mean": None, "ci": None,
         "per_seed": [None if r is None else float(r) for r in ratios], "reached": reached,
         "at_start": at_start}
  if at_start:
    return dict(out, reason=AT_START)
  mean, lo, hi = t_interval(np.log(np.asarray(ratios, np.float64)),
                            adjusted_level(level, comparisons))
  return dict(out, mean=math.exp(mean), ci=[math.exp(lo), math.exp(hi)])


def summarize(values: Sequence[float], level: float = 0.95) -> dict:
  """{"mean", "ci", "std"} over seeds."""
  mean, lo, hi = t_interval(values, level)
  return {"mean": mean, "ci": [lo, hi], "std": float(np.std(values, ddof=1))}


def worst_case(per_domain: dict) -> float:
  return max(per_domain.values())


def excess_over_floor(per_domain: dict, floors: Optional[dict]) -> Optional[float]:
  """Mean over domains of (loss - entropy floor), where floors are known."""
  if not floors:
    return None
  return float(np.mean([per_domain[d] - floors[d] for d in per_domain]))
