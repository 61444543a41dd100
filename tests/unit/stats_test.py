"""The study's statistics against scipy's own implementations and planted
effects."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from doremi_jax.analysis import stats


@pytest.mark.parametrize("seed", range(4))
def test_t_interval_matches_scipy(seed):
  x = np.random.default_rng(seed).normal(2.0, 0.3, 3 + seed)
  mean, lo, hi = stats.t_interval(x, 0.95)
  want = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
  assert mean == pytest.approx(x.mean())
  assert (lo, hi) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("comparisons", [1, 3])
def test_paired_difference_matches_scipy_ttest_rel(comparisons):
  rng = np.random.default_rng(7)
  base = rng.normal(2.0, 0.2, 5)
  arm = base + rng.normal(-0.05, 0.02, 5)
  got = stats.paired_difference(arm, base, 0.95, comparisons)
  level = 1 - 0.05 / comparisons
  ci = sps.ttest_rel(arm, base).confidence_interval(level)
  assert got["diff"] == pytest.approx(np.mean(arm - base))
  assert got["ci"] == pytest.approx([ci.low, ci.high], rel=1e-10)
  assert got["verdict"] == ("wins" if ci.high < 0 else "loses" if ci.low > 0 else "ties")


def test_bonferroni_widens_the_interval():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=4), rng.normal(size=4)
  one = stats.paired_difference(a, b, 0.95, 1)["ci"]
  four = stats.paired_difference(a, b, 0.95, 4)["ci"]
  assert four[0] < one[0] and four[1] > one[1]


def test_planted_effects():
  base = [2.00, 2.10, 1.95]
  # identical arms tie, with an interval that contains zero
  same = stats.paired_difference(base, base)
  assert same["verdict"] == "ties" and same["ci"][0] <= 0 <= same["ci"][1]
  # a consistent large loss increase loses, a consistent decrease wins
  assert stats.paired_difference([b + 0.5 for b in base], base)["verdict"] == "loses"
  assert stats.paired_difference([b - 0.3 + 0.01 * i for i, b in enumerate(base)],
                                 base)["verdict"] == "wins"
  # noise far larger than the effect ties
  assert stats.paired_difference([2.5, 1.6, 2.2], base)["verdict"] == "ties"


def test_steps_to_target_interpolates_the_first_crossing():
  steps, loss = [0, 10, 20, 30], [4.0, 3.0, 2.0, 2.5]
  assert stats.steps_to_target(steps, loss, 2.5) == pytest.approx(15.0)
  assert stats.steps_to_target(steps, loss, 4.5) == 0.0
  assert stats.steps_to_target(steps, loss, 1.0) == math.inf


def test_speedup_of_an_arm_against_itself_is_one_and_a_faster_arm_is_faster():
  steps = np.arange(0, 101, 10)
  curves = [(steps, 4.0 * np.exp(-steps / (40 + 5 * s)) + 1) for s in range(3)]
  same = stats.speedup(curves, curves)
  assert same["mean"] == pytest.approx(1.0) and same["ci"] == pytest.approx([1.0, 1.0])
  assert same["reached"] == 3
  # twice as fast: the same curve on half the steps
  fast = [(s / 2, l) for s, l in curves]
  got = stats.speedup(fast, curves)
  assert got["mean"] == pytest.approx(2.0, rel=1e-6)
  # never reaching the target: not counted as reached, speed-up below 1
  slow = [(s, l + 1.0) for s, l in curves]
  got = stats.speedup(slow, curves)
  assert got["reached"] == 0 and got["mean"] <= 1.0


def test_an_arm_at_the_target_from_step_0_has_no_speedup_not_a_division_by_zero():
  """Planted histories: the arm's step-0 evaluation (before any training)
  is already at or below the baseline's final loss on seed 1 (on every
  seed in the second case), so its ratio of steps is undefined."""
  steps = [0, 10, 20]
  base = [(steps, [4.0, 3.0, 2.5]) for _ in range(3)]
  arm = [(steps, [4.0, 2.5, 2.0]), (steps, [2.4, 2.3, 2.2]), (steps, [4.0, 2.0, 1.9])]
  got = stats.speedup(arm, base)
  assert got["mean"] is None and got["ci"] is None
  assert got["reason"] == "at target from the start" and got["at_start"] == 1
  assert got["per_seed"][1] is None and got["per_seed"][0] == pytest.approx(2.0)
  assert got["reached"] == 3
  every = stats.speedup([(steps, [2.5, 2.4, 2.3])] * 3, base)
  assert every["at_start"] == 3 and every["per_seed"] == [None] * 3
  # none at the start: a figure as before, and the count says 0
  assert stats.speedup(base, base)["at_start"] == 0
  assert "reason" not in stats.speedup(base, base)


def test_summaries():
  s = stats.summarize([1.0, 2.0, 3.0])
  assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
  assert stats.worst_case({"a": 1.0, "b": 3.0}) == 3.0
  assert stats.excess_over_floor({"a": 1.5, "b": 3.0}, {"a": 1.0, "b": 2.0}) == 0.75
  assert stats.excess_over_floor({"a": 1.5}, None) is None
