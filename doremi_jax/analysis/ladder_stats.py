"""The ladder's statistics: does the ranking of mixtures at a small model
size transfer to the largest, and how many seeds would a difference need.

* `spearman`, `kendall_tau_b`: rank correlations of the arms' mean metric
  at two rungs (ties by average ranks; Kendall's tau-b, the one
  `scipy.stats.kendalltau` computes by default).
* `decision_accuracy`: DataDecide's (Magnusson et al. 2025) share of arm
  pairs that a rung orders as the largest rung does; a pair tied at either
  rung counts one half.
* `agreement`: the three with intervals by resampling seeds: each rung's
  seeds are drawn with replacement, the same draw for every arm of that
  rung (the paired design), independently between rungs (a seed's
  initialisation is not shared across model sizes); percentile intervals.
* `seeds_needed`: the number of paired seeds at which a difference `delta`
  is told from zero at the study's (Bonferroni-adjusted) level with the
  given power, from the measured seed-to-seed spread of the paired
  differences: the smallest n with
  (t_{1-a/2, n-1} + t_{power, n-1}) * sd / sqrt(n) <= |delta|.

Pure NumPy/SciPy-special functions of numbers; the study stage reads the
runs and calls these.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats as sps

from doremi_jax.analysis import stats


def ranks(x: Sequence[float]) -> np.ndarray:
  """Ranks 1..n of `x`, ties given their average rank."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x))
  r[order] = np.arange(1, len(x) + 1)
  for v in np.unique(x):
    tied = x == v
    r[tied] = r[tied].mean()
  return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rank correlation (Pearson's r of the average ranks); NaN
  when either side is constant."""
  rx, ry = ranks(x), ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
  return float((rx * ry).sum() / den) if den > 0 else float("nan")


def _pair_signs(x: Sequence[float]) -> np.ndarray:
  x = np.asarray(x, np.float64)
  i, j = np.triu_indices(len(x), 1)
  return np.sign(x[j] - x[i])


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
  """Kendall's tau-b: (concordant - discordant) / sqrt((pairs - ties in x)
  (pairs - ties in y)); NaN when either side is constant."""
  sx, sy = _pair_signs(x), _pair_signs(y)
  den = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
  return float((sx * sy).sum() / den) if den > 0 else float("nan")


def decision_accuracy(small: Sequence[float], large: Sequence[float]) -> float:
  """The share of pairs ordered at `small` as at `large` (a pair tied at
  either counts 1/2)."""
  ss, sl = _pair_signs(small), _pair_signs(large)
  if not len(ss):
    return float("nan")
  score = np.where((ss == 0) | (sl == 0), 0.5, (ss == sl).astype(np.float64))
  return float(score.mean())


STATISTICS = {"spearman": spearman, "kendall": kendall_tau_b,
              "decision_accuracy": decision_accuracy}


def _means(values: Mapping[str, Sequence[float]], arms: list, draw=None) -> np.ndarray:
  return np.array([np.mean(np.asarray(values[a], np.float64)[draw] if draw is not None
                           else values[a]) for a in arms])


def agreement(small: Mapping[str, Sequence[float]], large: Mapping[str, Sequence[float]],
              level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
  """{statistic: {"value", "ci"}} between the arms' mean metric at a rung
  (`small`: {arm: per-seed values}) and at the largest rung (`large`), with
  intervals at `level` by resampling seeds (module docstring)."""
  arms = sorted(small)
  if sorted(large) != arms:
    raise ValueError(f"the rungs have different arms: {arms} vs {sorted(large)}")
  n_small = {len(small[a]) for a in arms}
  n_large = {len(large[a]) for a in arms}
  if len(n_small) != 1 or len(n_large) != 1:
    raise ValueError("every arm of a rung needs the same number of seeds")
  n_s, n_l = n_small.pop(), n_large.pop()
  ms, ml = _means(small, arms), _means(large, arms)
  rng = np.random.default_rng(seed)
  draws = {name: [] for name in STATISTICS}
  for _ in range(resamples):
    a = _means(small, arms, rng.integers(0, n_s, n_s))
    b = _means(large, arms, rng.integers(0, n_l, n_l))
    for name, fn in STATISTICS.items():
      draws[name].append(fn(a, b))
  lo, hi = 50 * (1 - level), 50 * (1 + level)
  out = {}
  for name, fn in STATISTICS.items():
    d = np.asarray(draws[name])
    d = d[np.isfinite(d)]
    ci = [float(np.percentile(d, lo)), float(np.percentile(d, hi))] if len(d) else [None, None]
    out[name] = {"value": fn(ms, ml), "ci": ci}
  out["arms"] = len(arms)
  return out


def seeds_needed(sd: float, delta: float, level: float, power: float = 0.8,
                 most: int = 10000) -> Optional[int]:
  """The fewest paired seeds (>= 2) that tell `delta` from zero at `level`
  (two-sided) with probability `power`, for paired differences of standard
  deviation `sd`; None when `delta` is 0 or more than `most` would be needed."""
  if not (0 < level < 1 and 0 < power < 1):
    raise ValueError("level and power must be in (0, 1)")
  delta = abs(float(delta))
  if delta == 0:
    return None
  if sd == 0:
    return 2

  def enough(n: int) -> bool:   # the half-width falls as n grows: bisect for the first n
    q = sps.t.ppf(0.5 + level / 2, n - 1) + sps.t.ppf(power, n - 1)
    return q * sd / math.sqrt(n) <= delta

  if not enough(most):
    return None
  lo, hi = 2, most
  while lo < hi:
    mid = (lo + hi) // 2
    if enough(mid):
      hi = mid
    else:
      lo = mid + 1
  return lo


def _best(metrics: dict, higher: bool) -> str:
  return (max if higher else min)(metrics, key=lambda a: metrics[a]["mean"])


def summarise(rungs: list, level: float, resamples: int = 2000) -> dict:
  """The ladder's study.json from each rung's own study.json: `rungs` is
  [(name, settings, directory relative to the study, rung study.json)],
  smallest first. Per rung: every arm's primary metric with its interval,
  verdict against the baseline and the seeds it would need; between each
  rung and the largest: rank agreement and decision accuracy over the
  arms both trained; the choice at the largest rung."""
  last = rungs[-1][3]
  key = last["primary"]
  if any(r["primary"] != key for *_, r in rungs):
    raise ValueError("the rungs' primary metrics differ")
  higher = bool(last["results"][last["baseline"]]["primary"].get("higher_is_better"))
  metrics, power, table = {}, {}, []
  for name, settings, where, r in rungs:
    res = r["results"]
    metrics[name] = {arm: {"mean": res[arm]["primary"]["mean"], "ci": res[arm]["primary"]["ci"],
                           "values": res[arm]["primary"]["values"],
                           "verdict": (res[arm]["primary"].get("vs_baseline") or {}).get("verdict"),
                           "vs_baseline": res[arm]["primary"].get("vs_baseline")}
                     for arm in r["arms"]}
    power[name] = {arm: res[arm]["power"] for arm in r["arms"] if "power" in res[arm]}
    table.append({"name": name, "settings": {k: repr(v) for k, v in settings.items()},
                  "dir": where, "arms": list(r["arms"]), "split": r["split"],
                  **r.get("main_model", {})})
  target = rungs[-1][0]
  agreement = {}
  for name, *_ in rungs[:-1]:
    both = [a for a in metrics[name] if a in metrics[target]]
    if len(both) >= 2:
      agreement[name] = agreement_of(metrics, name, target, both, level, resamples)
  best = _best(metrics[target], higher)
  first = rungs[0][0]
  return {
      "ladder": True, "rungs": table, "target": target, "primary": key,
      "higher_is_better": higher, "baseline": last["baseline"], "level": level,
      "seeds": last["seeds"], "metrics": metrics, "agreement": agreement, "power": power,
      "choice": {"arm": best, "verdict": metrics[target][best]["verdict"],
                 "at_smallest_rung": _best(metrics[first], higher)},
  }


def agreement_of(metrics: dict, small: str, large: str, arms: list, level: float,
                 resamples: int) -> dict:
  return agreement({a: metrics[small][a]["values"] for a in arms},
                   {a: metrics[large][a]["values"] for a in arms}, level, resamples)


def halving_step(rung: dict, keep: float, level: float) -> dict:
  """Successive halving's decision after one rung (its study.json): every
  arm not beaten by the rung's best (the paired interval of arm - best in
  the primary metric, at `level` Bonferroni-adjusted over the other arms,
  entirely on the worse side), or among the best `ceil(keep * n)` by mean,
  whichever keeps more, goes up; the baseline always does (every rung's
  verdicts are against it). Returns {"best", "survivors", "stopped":
  {arm: why}, "kept_by"}."""
  res, arms, base = rung["results"], list(rung["arms"]), rung["baseline"]
  higher = bool(res[base]["primary"].get("higher_is_better"))
  means = {a: res[a]["primary"]["mean"] for a in arms}
  order = sorted(arms, key=lambda a: -means[a] if higher else means[a])
  best = order[0]
  top = set(order[:max(1, math.ceil(keep * len(arms)))])
  m = max(len(arms) - 1, 1)
  adjusted = stats.adjusted_level(level, m)
  survivors, stopped, kept_by = [], {}, {}
  for a in arms:
    d = None if a == best else stats.paired_difference(
        res[a]["primary"]["values"], res[best]["primary"]["values"], level, m, higher)
    beaten = d is not None and d["verdict"] == "loses"
    if not beaten or a in top or a == base:
      survivors.append(a)
      kept_by[a] = ("the best" if a == best else "not beaten by the best" if not beaten else
                    f"the best {len(top)} of {len(arms)}" if a in top else "the baseline")
    else:
      lo, hi = d["ci"]
      stopped[a] = (f"beaten by {best}: {d['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] at confidence "
                    f"{adjusted:.4f}, and not among the best {len(top)} of {len(arms)}")
  return {"best": best, "survivors": survivors, "stopped": stopped, "kept_by": kept_by}


def compute(rungs: list, all_arms: list) -> dict:
  """Main-run FLOPs the ladder spent against the full grid's (every arm at
  every rung): `rungs` is [(name, rung study.json)]. An arm a rung did not
  train is charged what the rung's baseline cost (the same model and
  token budget; an online mixer's own evaluations aside). The methods' own
  runs are the same under both schedules and left out."""
  spent = grid = 0.0
  for _, r in rungs:
    seeds, res = r["seeds"], r["results"]
    base = res[r["baseline"]]["cost"]["main_run_flops"]
    for a in all_arms:
      own = res[a]["cost"]["main_run_flops"] if a in res else None
      spent += (own or 0.0) * seeds
      grid += (own if own is not None else base) * seeds
  return {"main_run_flops": spent, "grid_main_run_flops": grid,
          "fraction_of_grid": spent / grid if grid else None}
