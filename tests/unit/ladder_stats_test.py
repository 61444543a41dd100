"""The ladder's statistics against independent implementations (SciPy's
rank correlations, a pair-by-pair count, a search over n for the seeds
needed) and on planted ladders."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from doremi_jax.analysis import ladder_stats


@pytest.mark.parametrize("seed", range(6))
def test_rank_correlations_match_scipy_with_and_without_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(3, 9))
  x = rng.normal(size=n)
  y = x + rng.normal(scale=1.0, size=n)
  if seed % 2:                     # ties on both sides
    x, y = np.round(x), np.round(y)
  if np.ptp(x) == 0 or np.ptp(y) == 0:
    return
  assert math.isclose(ladder_stats.spearman(x, y), sps.spearmanr(x, y).statistic, abs_tol=1e-12)
  assert math.isclose(ladder_stats.kendall_tau_b(x, y), sps.kendalltau(x, y).statistic,
                      abs_tol=1e-12)


def test_decision_accuracy_counts_pairs_ordered_as_at_the_top():
  rng = np.random.default_rng(3)
  small, large = np.round(rng.normal(size=7), 1), np.round(rng.normal(size=7), 1)
  score = []
  for i, j in itertools.combinations(range(7), 2):
    a, b = np.sign(small[j] - small[i]), np.sign(large[j] - large[i])
    score.append(0.5 if a == 0 or b == 0 else float(a == b))
  assert math.isclose(ladder_stats.decision_accuracy(small, large), np.mean(score))
  assert ladder_stats.decision_accuracy([1, 2, 3], [10, 20, 30]) == 1.0
  assert ladder_stats.decision_accuracy([1, 2, 3], [30, 20, 10]) == 0.0


def _seeds(means, spread, n, rng):
  return {f"arm{i}": list(m + rng.normal(scale=spread, size=n)) for i, m in enumerate(means)}


def test_a_ladder_whose_order_flips_at_the_top_gets_low_agreement():
  rng = np.random.default_rng(0)
  small = _seeds([1.0, 1.1, 1.2, 1.3, 1.4], 0.01, 3, rng)
  same = _seeds([2.0, 2.1, 2.2, 2.3, 2.4], 0.01, 3, rng)
  flipped = _seeds([2.4, 2.3, 2.2, 2.1, 2.0], 0.01, 3, rng)
  good = ladder_stats.agreement(small, same, resamples=300)
  bad = ladder_stats.agreement(small, flipped, resamples=300)
  assert good["spearman"]["value"] == 1.0 and good["decision_accuracy"]["value"] == 1.0
  assert bad["spearman"]["value"] == -1.0 and bad["decision_accuracy"]["value"] == 0.0
  assert bad["kendall"]["ci"][1] < 0 < good["kendall"]["ci"][0]
  # noise as large as the differences: wide intervals
  noisy = ladder_stats.agreement(_seeds([1.0, 1.1, 1.2, 1.3, 1.4], 0.3, 3, rng), same,
                                 resamples=300)
  lo, hi = noisy["spearman"]["ci"]
  assert hi - lo > 0.5
  with pytest.raises(ValueError, match="different arms"):
    ladder_stats.agreement(small, {"arm0": [1, 2]}, resamples=10)


def _criterion(n, sd, delta, level, power):
  q = sps.t.ppf(0.5 + level / 2, n - 1) + sps.t.ppf(power, n - 1)
  return q * sd / math.sqrt(n) <= abs(delta)


@pytest.mark.parametrize("sd,delta", [(0.01, 0.01), (0.02, 0.005), (0.001, 0.05), (0.05, -0.01)])
def test_seeds_needed_is_the_first_n_that_resolves_the_difference(sd, delta):
  n = ladder_stats.seeds_needed(sd, delta, 0.95, 0.8)
  assert _criterion(n, sd, delta, 0.95, 0.8)
  assert n == 2 or not _criterion(n - 1, sd, delta, 0.95, 0.8)
  # the normal approximation ((z_a + z_b) sd / delta)^2 is a lower bound
  z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
  assert n >= (z * sd / abs(delta)) ** 2
  assert ladder_stats.seeds_needed(sd, 0.0, 0.95) is None
  assert ladder_stats.seeds_needed(1.0, 1e-6, 0.95, most=50) is None


def _rung(values: dict, baseline="arm0", higher=False):
  res = {}
  for arm, v in values.items():
    p = {"mean": float(np.mean(v)), "ci": [min(v), max(v)], "values": v,
         "higher_is_better": higher}
    if arm != baseline:
      p["vs_baseline"] = {"diff": 0.0, "ci": [0, 0], "verdict": "ties"}
    res[arm] = {"primary": p}
    if arm != baseline:
      res[arm]["power"] = {"seeds_needed": 3}
  return {"primary": "uniform_avg", "baseline": baseline, "seeds": 3, "arms": list(values),
          "results": res, "split": "test",
          "main_model": {"num_params": 1000, "train_tokens": 10, "flops_per_run": 1.0}}


def test_summarise_compares_every_rung_with_the_largest_and_names_the_choice():
  rng = np.random.default_rng(1)
  small = _rung(_seeds([1.3, 1.2, 1.1], 0.01, 3, rng))
  mid = _rung(_seeds([1.1, 1.0, 0.9], 0.01, 3, rng))
  top = _rung(_seeds([0.8, 0.9, 1.0], 0.01, 3, rng))       # the order flips at the top
  out = ladder_stats.summarise([("s", {}, "rungs/s", small), ("m", {"ModelConfig.d_model": 96},
                                 "rungs/m", mid), ("l", {}, "rungs/l", top)], 0.95, resamples=200)
  assert out["target"] == "l" and list(out["agreement"]) == ["s", "m"]
  assert out["agreement"]["s"]["spearman"]["value"] == -1.0
  assert out["choice"] == {"arm": "arm0", "verdict": None, "at_smallest_rung": "arm2"}
  assert out["rungs"][1]["settings"] == {"ModelConfig.d_model": "96"}
  assert out["power"]["s"] == {"arm1": {"seeds_needed": 3}, "arm2": {"seeds_needed": 3}}


def _verdict_by_scipy(arm, best, level, m):
  """Is arm - best's t interval (Bonferroni over m) entirely above zero (worse loss)?"""
  d = np.subtract(arm, best)
  lvl = 1 - (1 - level) / m
  half = sps.t.ppf(0.5 + lvl / 2, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
  return d.mean() - half > 0


def test_halving_drops_an_arm_beaten_by_the_best_unless_the_top_fraction_keeps_it():
  rung = _rung({"base": [1.00, 1.02, 1.01], "good": [0.90, 0.93, 0.91],
                "close": [0.92, 0.90, 0.94], "bad": [1.50, 1.52, 1.51]}, baseline="base")
  out = ladder_stats.halving_step(rung, keep=0.25, level=0.95)
  assert out["best"] == "good"
  want_beaten = {a for a in ("base", "close", "bad")
                 if _verdict_by_scipy(rung["results"][a]["primary"]["values"],
                                      rung["results"]["good"]["primary"]["values"], 0.95, 3)}
  assert want_beaten == {"base", "bad"}
  assert out["survivors"] == ["base", "good", "close"] and list(out["stopped"]) == ["bad"]
  assert out["kept_by"] == {"base": "the baseline", "good": "the best",
                            "close": "not beaten by the best"}
  assert out["stopped"]["bad"].startswith("beaten by good: +0.5967 [")
  # a larger kept fraction keeps the beaten arm too
  assert ladder_stats.halving_step(rung, keep=1.0, level=0.95)["stopped"] == {}
  # where higher is better, the lowest arm is the one beaten
  up = _rung({"base": [0.5, 0.52, 0.51], "low": [0.1, 0.11, 0.12]}, baseline="base",
             higher=True)
  assert ladder_stats.halving_step(up, keep=0.5, level=0.95)["survivors"] == ["base"]


def test_compute_charges_an_untrained_arm_the_rung_baseline_cost():
  def rung(costs):
    return {"seeds": 2, "baseline": "base",
            "results": {a: {"cost": {"main_run_flops": c}} for a, c in costs.items()}}
  out = ladder_stats.compute([("s", rung({"base": 1.0, "a": 1.5, "b": 1.0})),
                              ("l", rung({"base": 10.0, "a": 12.0}))], ["base", "a", "b"])
  assert out["main_run_flops"] == 2 * (1 + 1.5 + 1 + 10 + 12)
  assert out["grid_main_run_flops"] == 2 * (1 + 1.5 + 1 + 10 + 12 + 10)
  assert math.isclose(out["fraction_of_grid"], 25.5 / 35.5)
