"""Swarm math (issue 15): RegMix's mixture sampler and Olmix's exact
proposer, against independent NumPy implementations."""

import numpy as np
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.swarm import law


def test_sampler_fixed_mixtures_caps_and_determinism():
  q = np.array([0.4, 0.3, 0.2, 0.1])
  w = law.sample_mixtures(q, 64, seed=3, corners=(2,))
  assert w.shape == (64, 4)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_array_equal(w[0], np.full(4, 0.25))
  np.testing.assert_array_equal(w[1], [0, 0, 1, 0])
  drawn = w[2:]
  assert np.all((drawn == 0) | (drawn >= 2e-4))
  # the cap held before the small weights were zeroed (renormalising can
  # only raise a weight by the mass zeroed, at most K x 2e-4)
  assert np.all(drawn <= np.minimum(15 * q, 1.0) * (1 + 4 * 2e-4 / (1 - 4 * 2e-4)) + 1e-12)
  np.testing.assert_array_equal(w, law.sample_mixtures(q, 64, seed=3, corners=(2,)))
  assert not np.array_equal(w, law.sample_mixtures(q, 64, seed=4, corners=(2,)))
  # RegMix's spread: several concentrations, so both near-prior and skewed draws
  assert drawn.max(axis=1).min() < 0.6 and drawn.max(axis=1).max() > 0.9


def test_sampler_bad_input():
  with pytest.raises(ConfigError, match="swarm's prior must be a distribution"):
    law.sample_mixtures([0.5, -0.5, 1.0], 8, 0)
  with pytest.raises(ConfigError, match="raise the swarm size"):
    law.sample_mixtures([0.5, 0.5], 2, 0, corners=(0, 1))
  with pytest.raises(ConfigError, match="cap of 0.5x"):
    law.sample_mixtures([0.5, 0.5], 8, 0, cap_factor=0.5, max_tries=200)


def np_capped_kl_projection(y, caps):
  """argmin KL(x || y) over {x >= 0, sum x = 1, x <= caps}: x = min(caps,
  c y), c found by bisection."""
  y = y / y.sum()
  lo, hi = 0.0, 1.0 / max(y[caps > 0].min(), 1e-300) + 1.0
  for _ in range(80):
    c = (lo + hi) / 2
    if np.minimum(caps, c * y).sum() > 1:
      hi = c
    else:
      lo = c
  return np.minimum(caps, lo * y)


def np_mirror_descent(t, w, q, lam, caps, steps=6000, lr=0.2):
  """Entropic mirror descent on sum_m w_m exp(t_m . x) + lam KL(x || q)."""
  x = q.copy() if caps is None else np_capped_kl_projection(q, caps)
  for _ in range(steps):
    grad = t.T @ (w * np.exp(t @ x)) + lam * (np.log(x / q) + 1)
    y = x * np.exp(-lr * (grad - grad.min()))
    x = y / y.sum() if caps is None else np_capped_kl_projection(y, caps)
    x = np.maximum(x, 1e-300)
  return x


@pytest.mark.parametrize("caps", [None, np.array([0.5, 0.15, 0.6, 0.6, 0.6])])
def test_olmix_proposer_matches_mirror_descent(caps):
  rng = np.random.default_rng(0)
  k, m = 5, 3
  t = rng.normal(0, 1, (m, k))
  w = np.array([0.5, 0.3, 0.2])
  q = rng.dirichlet(np.ones(k))
  x = law.olmix_propose(t, w, q, lam=0.5, caps_K=caps)
  want = np_mirror_descent(t, w, q, 0.5, caps)
  np.testing.assert_allclose(x, want, atol=1e-4)
  assert abs(x.sum() - 1) < 1e-12
  g = t.T @ (w * np.exp(t @ x))
  if caps is None:   # the KKT tilt: x proportional to q exp(-g / lambda)
    tilt = q * np.exp(-g / 0.5)
    np.testing.assert_allclose(x, tilt / tilt.sum(), rtol=1e-8)
  else:
    assert np.any(np.isclose(x, caps)) and np.all(x <= caps + 1e-12)


def test_olmix_one_target_domain_gets_the_most_weight_and_bad_caps_fail():
  k = 4
  t = np.zeros((1, k))
  t[0, 2] = -3.0      # the loss falls only with domain 2's share
  x = law.olmix_propose(t, [1.0], np.full(k, 0.25), lam=0.05)
  assert np.argmax(x) == 2 and x[2] > 0.5
  with pytest.raises(ConfigError, match="caps sum to 0.8000 < 1"):
    law.olmix_propose(t, [1.0], np.full(k, 0.25), lam=0.1, caps_K=[0.2] * 4)
