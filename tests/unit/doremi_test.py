"""The DoReMi math against an independent NumPy implementation."""

import numpy as np
import jax.numpy as jnp
import pytest

from doremi_jax import doremi

from np_reference import np_excess, np_update


@pytest.mark.parametrize("seed", range(5))
def test_excess_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  b, l, k = 13, 17, 5
  proxy = rng.gamma(2.0, 1.5, (b, l)).astype(np.float32)
  ref = rng.gamma(2.0, 1.5, (b, l)).astype(np.float32)
  lengths = rng.integers(0, l + 1, b)             # padding, some rows empty
  mask = (np.arange(l)[None] < lengths[:, None]).astype(np.float32)
  dom = rng.choice(k - 1, b, p=[0.5, 0.3, 0.15, 0.05]).astype(np.int32)  # domain 4 absent
  got = doremi.per_domain_excess_loss(jnp.asarray(proxy), jnp.asarray(ref), jnp.asarray(mask),
                                      jnp.asarray(dom), k)
  np.testing.assert_allclose(np.asarray(got), np_excess(proxy, ref, mask, dom, k),
                             rtol=1e-5, atol=1e-6)
  assert got[4] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_update_matches_numpy(seed):
  rng = np.random.default_rng(100 + seed)
  k = 7
  w = rng.dirichlet(np.ones(k))
  lam = rng.uniform(0, 3, k)
  for eta, c in ((1.0, 1e-3), (0.1, 0.01), (2.5, 0.0)):
    got = doremi.update_domain_weights(jnp.asarray(w, jnp.float32), jnp.asarray(lam, jnp.float32),
                                       eta, c)
    np.testing.assert_allclose(np.asarray(got), np_update(w, lam, eta, c), rtol=2e-6, atol=1e-7)
    assert abs(float(got.sum()) - 1) < 1e-6


def test_update_is_stable_for_large_excess():
  w = jnp.array([0.5, 0.5])
  got = doremi.update_domain_weights(w, jnp.array([1000.0, 0.0]), 1.0, 1e-3)
  np.testing.assert_allclose(np.asarray(got), [1 - 0.0005, 0.0005], rtol=1e-6)


def test_dro_state_average_excludes_initial_weights():
  s = doremi.DROState.create(np.array([0.7, 0.2, 0.1]))
  history = []
  for t in range(4):
    lam = np.array([0.1 * t, 0.3, 0.2])
    s = doremi.dro_update(s, jnp.asarray(lam, jnp.float32), 1.0, 1e-3)
    history.append(np.asarray(s.weights))
  np.testing.assert_allclose(np.asarray(s.average_weights), np.mean(history, 0), rtol=1e-6)
  assert int(s.num_updates) == 4
  # a skipped update changes neither the weights nor the average
  s2 = doremi.dro_update(s, jnp.array([5.0, 0, 0]), 1.0, 1e-3, do_update=False)
  np.testing.assert_array_equal(np.asarray(s2.weights), np.asarray(s.weights))
  np.testing.assert_array_equal(np.asarray(s2.average_weights), np.asarray(s.average_weights))
  np.testing.assert_allclose(np.asarray(s2.excess), [5, 0, 0])


def test_token_weights_give_weighted_per_domain_means():
  rng = np.random.default_rng(0)
  loss = rng.random((6, 5)).astype(np.float32)
  mask = (rng.random((6, 5)) > 0.3).astype(np.float32)
  dom = np.array([0, 1, 2, 0, 1, 2], np.int32)
  alpha = np.array([0.5, 0.3, 0.2], np.float32)
  w = doremi.token_weights(jnp.asarray(alpha), jnp.asarray(mask), jnp.asarray(dom), 3)
  expected = sum(alpha[i] * (loss * mask)[dom == i].sum() / mask[dom == i].sum() for i in range(3))
  np.testing.assert_allclose(float((loss * np.asarray(w)).sum()), expected, rtol=1e-6)
