"""Online mixing methods' updates against independent NumPy implementations
(replayed sequences of per-domain losses), including the first update and an
update after a resume (the state through NumPy and back)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax.mixers import ado
from doremi_jax.mixers import aioli
from doremi_jax.mixers import odm


def np_odm(losses, observed, a, form):
  """EXP3 as ODM states it, written from the paper's equations: returns
  the sampling rates after each update."""
  n, k = losses.shape
  reward, probs, eps_prev = np.zeros(k), np.full(k, 1.0 / k), 1.0 / k
  out = []
  for t in range(1, n + 1):
    eps = min(1.0 / k, np.sqrt(np.log(k) / (k * t)))
    for i in range(k):
      if observed[t - 1, i]:
        r = losses[t - 1, i] / probs[i] if form == "paper" else np.exp(losses[t - 1, i])
        reward[i] = a * reward[i] + (1 - a) * r
    if form == "paper":
      z = np.exp(eps_prev * reward - (eps_prev * reward).max())
      base = z / z.sum()
    else:
      base = reward / reward.sum() if reward.sum() > 0 else np.full(k, 1.0 / k)
    probs = (1 - k * eps) * base + eps
    eps_prev = eps
    out.append(probs.copy())
  return np.array(out)


def _replay(state, losses, observed, a, form):
  step = jax.jit(lambda s, l, o: odm.update(s, l, o, a, form))
  out = []
  for l, o in zip(losses, observed):
    state = step(state, jnp.asarray(l, jnp.float32), jnp.asarray(o))
    out.append(np.asarray(state.probs_K))
  return state, np.array(out)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_odm_update_matches_numpy_with_a_resume(form):
  rng = np.random.default_rng(0)
  n, k, a = 40, 5, 0.9
  losses = rng.uniform(0.5, 5.0, (n, k))
  observed = rng.random((n, k)) < 0.6
  want = np_odm(losses, observed, a, form)
  first, got1 = _replay(odm.init(k), losses[:17], observed[:17], a, form)
  # resume: the state leaves the device as numpy (a checkpoint) and comes back
  restored = odm.ODMState(*[jnp.asarray(np.asarray(x)) for x in first])
  _, got2 = _replay(restored, losses[17:], observed[17:], a, form)
  got = np.concatenate([got1, got2])
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
  eps = np.array([min(1 / k, np.sqrt(np.log(k) / (k * t))) for t in range(1, n + 1)])
  assert (got >= eps[:, None] - 1e-7).all()
  # eps_1 = 1/K: the first update keeps the uniform rates
  np.testing.assert_allclose(got[0], np.full(k, 1 / k), atol=1e-7)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_odm_rewards_the_domain_whose_loss_stays_high(form):
  """The signal is raw loss: a domain stuck at log V (noise) ends with the
  largest rate, above uniform, over two domains whose loss falls (ODM's own
  prediction on a corpus with noise). The importance weight 1/pi of the
  paper's form pulls the rates back towards balance; the code's form
  concentrates on the noise."""
  k, n = 3, 300
  t = np.arange(1, n + 1)[:, None]
  losses = np.concatenate([np.full((n, 1), np.log(128)), 4.0 / np.sqrt(t), 2.0 / np.sqrt(t)], 1)
  _, probs = _replay(odm.init(k), losses, np.ones((n, k), bool), 0.9, form)
  assert probs[-1].argmax() == 0 and probs[-1, 0] > 1 / k + 0.05, probs[-1]
  if form == "code":
    assert probs[-1, 0] > 0.9, probs[-1]


def test_odm_rejects_an_unknown_form():
  with pytest.raises(ValueError, match="ODM form must be one of"):
    odm.update(odm.init(2), jnp.ones(2), jnp.ones(2, bool), form="linear")


# --------------------------------------------------------------------------
# Aioli


def np_aioli_round(weights, losses_seq, order, rounds, ohf, eta, smoothing, abar):
  """One Aioli round from the paper's Alg. 2 and the authors' update, in
  NumPy: `losses_seq[r]` the held-out losses after the r-th burst (index 0:
  before the first), `order` the domains trained on, in order."""
  k = len(weights)
  g = np.zeros((k, k))
  for r, j in enumerate(order):
    g[:, j] += losses_seq[r] - losses_seq[r + 1]
  g /= rounds
  w = np.array([[ohf if c == j else (1 - ohf) / (k - 1) for c in range(k)] for j in range(k)])
  a = np.stack([np.linalg.solve(w, g[i]) for i in range(k)])
  if a.min() < 0:
    a = a - a.min()
  a = a / a.sum()
  if smoothing is None:
    new = weights * np.exp(eta * a.sum(axis=0))
    return new / new.sum(), a
  abar = a if abar is None else (1 - smoothing) * a + smoothing * abar
  z = np.exp(eta * abar.sum(axis=0))
  return z / z.sum(), abar


def test_aioli_recovers_the_mixing_matrix():
  rng = np.random.default_rng(1)
  k, ohf = 5, 0.625
  a = rng.normal(size=(k, k))
  w = np.asarray(aioli.burst_mixtures(k, ohf), np.float64)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
  g = 3 * (a @ w.T)          # G[i, j] = sum_k A[i, k] m^j_k, summed over 3 rounds
  got = np.asarray(aioli.estimate_matrix(jnp.asarray(g, jnp.float32), 3, ohf))
  np.testing.assert_allclose(got, a, atol=2e-5)


@pytest.mark.parametrize("smoothing", [None, 0.1])
def test_aioli_rounds_match_numpy_with_a_resume(smoothing):
  rng = np.random.default_rng(2)
  k, rounds, ohf, eta = 4, 2, 0.625, 0.5
  weights_np, abar_np = np.full(k, 1 / k), None
  weights, abar = jnp.full(k, 1 / k, jnp.float32), None
  for r in range(4):
    order = np.concatenate([rng.permutation(k) for _ in range(rounds)])
    losses_seq = np.cumsum(np.concatenate([np.full((1, k), 5.0),
                                           -rng.uniform(0, 0.1, (len(order), k))]), axis=0)
    weights_np, abar_np = np_aioli_round(weights_np, losses_seq, order, rounds, ohf, eta,
                                         smoothing, abar_np)
    g = jnp.zeros((k, k), jnp.float32)
    for i, j in enumerate(order):
      g = aioli.accumulate(g, int(j), jnp.asarray(losses_seq[i], jnp.float32),
                           jnp.asarray(losses_seq[i + 1], jnp.float32))
    a = aioli.normalize(aioli.estimate_matrix(g, rounds, ohf))
    weights, abar = aioli.step_weights(weights, a, eta, smoothing, abar)
    if r == 1:   # resume: through NumPy (a checkpoint) and back
      weights, abar = jnp.asarray(np.asarray(weights)), jnp.asarray(np.asarray(abar))
    np.testing.assert_allclose(weights, weights_np, rtol=1e-5, atol=1e-6)
  if smoothing is not None:
    assert weights_np.max() / weights_np.min() <= np.exp(eta) + 1e-9


def test_aioli_down_weights_a_domain_whose_training_lowers_nothing():
  """Bursts on domain 0 (noise) lower no held-out loss; bursts on the others
  lower their own: Aioli's step moves weight off domain 0."""
  k, ohf = 3, 0.625
  a_true = np.diag([0.0, 0.2, 0.1])
  w = np.asarray(aioli.burst_mixtures(k, ohf), np.float64)
  a = aioli.normalize(aioli.estimate_matrix(jnp.asarray(a_true @ w.T, jnp.float32), 1, ohf))
  weights, _ = aioli.step_weights(jnp.full(k, 1 / k), a, 1.0)
  assert weights[0] < 1 / k < weights[1] and weights[2] > weights[0], weights


# --------------------------------------------------------------------------
# ADO


def test_ado_fit_recovers_a_known_law():
  n = np.arange(1, 201, dtype=np.float32) * 10
  y = 2 + 3 * n ** -0.3
  e, a, alpha = np.asarray(jax.jit(ado.fit_law)(jnp.asarray(n), jnp.asarray(y)))
  np.testing.assert_allclose([np.exp(e), np.exp(a), alpha], [2, 3, 0.3], atol=1e-3)


def test_ado_fit_respects_the_bounds():
  """A curve steeper than alpha 0.8 allows is fitted at the bound (within the
  penalty's slack), and e_min keeps the floor up."""
  n = np.arange(1, 101, dtype=np.float32) * 10
  laws = ado.fit_laws(jnp.asarray(np.stack([n, n])),
                      jnp.asarray(np.stack([2 + 30 * n ** -1.5, 0.2 + 3 * n ** -0.3])))
  assert float(laws.alpha[0]) < 0.81
  assert float(laws.e[1]) > 0.5 - 1e-2      # the published floor: e >= 0.5


def np_ado_policy(h, pibar, count, e, a, alpha, n, prior, shares):
  h = 0.9 * h + 0.1 * shares
  s = np.maximum(alpha, 0.05) * (np.exp(a) * n ** -alpha) / n
  rho = s * prior * np.sqrt(h)
  rho = rho / rho.sum()
  rho = np.maximum(rho, 0.01)
  rho = rho / rho.sum()
  count += 1
  pi = 0.9 * pibar + 0.1 * rho
  pibar = pibar + (rho - pibar) / count
  return pi, h, pibar, count


def test_ado_policy_matches_numpy_with_a_resume():
  rng = np.random.default_rng(3)
  k = 4
  prior = rng.dirichlet(np.ones(k))
  e, a, alpha = rng.uniform(0, 1, k), rng.uniform(0, 3, k), rng.uniform(0.05, 0.8, k)
  laws = ado.Laws(*(jnp.asarray(x, jnp.float32) for x in (e, a, alpha)))
  state = ado.init_policy(prior)
  h, pibar, count = prior.copy(), prior.copy(), 0
  n = np.full(k, 100.0)
  for t in range(12):
    shares = rng.dirichlet(np.ones(k))
    want, h, pibar, count = np_ado_policy(h, pibar, count, e, a, alpha, n, prior, shares)
    got, state = jax.jit(ado.policy)(state, laws, jnp.asarray(n, jnp.float32),
                                     jnp.asarray(prior, jnp.float32),
                                     jnp.asarray(shares, jnp.float32))
    if t == 5:    # resume: through NumPy (a checkpoint) and back
      state = ado.PolicyState(*[jnp.asarray(np.asarray(x)) for x in state])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(float(got.sum()), 1.0, atol=1e-5)
    n += 1000 * shares


def test_ado_sinks_a_flat_curve_and_favours_a_falling_one():
  """ADO's own prediction: noise (flat loss at log V) goes to the floor; of
  two learnable domains the one still falling faster gains."""
  n = np.arange(1, 101, dtype=np.float32) * 20
  curves = np.stack([np.full_like(n, np.log(128)), 1 + 4 * n ** -0.5, 1 + 4 * n ** -0.1])
  laws = ado.fit_laws(jnp.asarray(np.stack([n] * 3)), jnp.asarray(curves), e_min=None)
  prior = jnp.full(3, 1 / 3)
  state, pi = ado.init_policy(prior), None
  for _ in range(200):
    pi, state = ado.policy(state, laws, jnp.full(3, 2000.0), prior, prior)
  assert pi[0] < 0.05 and pi[2] > pi[1] > pi[0], pi
