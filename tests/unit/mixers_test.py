"""Online mixing methods' updates against independent NumPy implementations
(replayed sequences of per-domain losses), including the first update and an
update after a resume (the state through NumPy and back)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax import mixers
from doremi_jax.config import ConfigError
from doremi_jax.mixers import ado
from doremi_jax.mixers import aioli
from doremi_jax.mixers import base as mixer_base
from doremi_jax.mixers import doremi_online
from doremi_jax.mixers import odm
from np_reference import np_update


def np_odm(losses, observed, a, form, probs0=None):
  """EXP3 as ODM states it, written from the paper's equations: returns
  the sampling rates after each update (pi(0) = `probs0`, uniform if None)."""
  n, k = losses.shape
  reward, eps_prev = np.zeros(k), 1.0 / k
  probs = np.full(k, 1.0 / k) if probs0 is None else np.asarray(probs0, np.float64)
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


# --------------------------------------------------------------------------
# The mixers (the interface the main stage trains with): replayed through
# their `update`, jitted, against NumPy, with a resume half way.

def _signals(rng, k, absent):
  loss = rng.uniform(1, 5, k).astype(np.float32)
  rows = rng.integers(1, 6, k).astype(np.float32)
  rows[absent] = 0
  loss[absent] = 0
  return mixer_base.Signals(jnp.asarray(loss), jnp.asarray(rows * 32), jnp.asarray(rows),
                            jnp.asarray(rng.uniform(0, 1, k).astype(np.float32)))


def _mixer_replay(mixer, prior, signals_seq):
  update = jax.jit(mixer.update)
  state, out = mixer.init(prior), []
  for t, sig in enumerate(signals_seq):
    state = update(state, sig, jnp.asarray(t, jnp.int32))
    if t == len(signals_seq) // 2:   # resume: the state through NumPy and back
      state = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)
    out.append(np.asarray(mixer.rates(state)))
  return np.array(out)


def test_doremi_online_matches_numpy_with_held_excess_and_a_resume():
  rng = np.random.default_rng(5)
  k, prior = 4, np.full(4, 0.25)
  seq = [_signals(rng, k, absent=[t % k] if t % 3 else []) for t in range(10)]
  mixer = doremi_online.DoReMiOnlineMixer(k, 10, step_size=1.0, smoothing=1e-3,
                                          warmup_steps=2)
  got = _mixer_replay(mixer, prior, seq)
  w, held, want = prior.copy(), np.zeros(k), []
  for t, sig in enumerate(seq):
    observed = np.asarray(sig.tokens_K) > 0
    held = np.where(observed, np.asarray(sig.excess_K, np.float64), held)
    if t >= 2:
      w = np_update(w, held, 1.0, 1e-3)
    want.append(w.copy())
  np.testing.assert_allclose(got, np.array(want), rtol=2e-5, atol=1e-7)
  assert np.all(got[:2] == 0.25)    # the warm-up keeps the prior


def test_odm_mixer_keeps_the_prior_through_its_warmup_then_updates():
  rng = np.random.default_rng(6)
  k, prior = 3, np.array([0.5, 0.3, 0.2])
  seq = [_signals(rng, k, absent=[]) for _ in range(8)]
  got = _mixer_replay(odm.ODMMixer(k, 8, smoothing=0.9, warmup_steps=3), prior, seq)
  np.testing.assert_allclose(got[:3], np.tile(prior, (3, 1)), rtol=1e-6)
  losses = np.stack([np.asarray(s.loss_K) for s in seq[3:]])
  want = np_odm(losses, np.ones_like(losses, bool), 0.9, "paper", probs0=prior)
  np.testing.assert_allclose(got[3:], want, rtol=2e-5, atol=1e-7)


def test_ado_mixer_fits_at_its_interval_and_follows_the_policy():
  """The ADO mixer: the prior until the first fit; the fit at step
  ignore_steps on the recorded curve equals fit_laws on the same points;
  then the policy's pi each step."""
  k, prior, steps = 2, np.array([0.5, 0.5]), 12
  mixer = ado.ADOMixer(k, steps, ignore_steps=8, update_interval=100, e_min=None)
  rows = np.array([4.0, 4.0])
  seq = [mixer_base.Signals(jnp.asarray([1 + 3 * (4 * (t + 1)) ** -0.5, 4.85], jnp.float32),
                            jnp.asarray(rows * 32), jnp.asarray(rows)) for t in range(steps)]
  got = _mixer_replay(mixer, prior, seq)
  np.testing.assert_allclose(got[:7], np.tile(prior, (7, 1)))
  n = np.stack([4.0 * np.arange(1, 9)] * 2).astype(np.float32)
  y = np.stack([[float(s.loss_K[i]) for s in seq[:8]] for i in range(k)]).astype(np.float32)
  laws = ado.fit_laws(jnp.asarray(n), jnp.asarray(y), e_min=None)
  state, want = ado.init_policy(prior), []
  for t in range(7, steps):
    pi, state = ado.policy(state, laws, jnp.asarray(4.0 * (t + 1) * np.ones(k), jnp.float32),
                           jnp.asarray(prior, jnp.float32), jnp.asarray([0.5, 0.5]))
    want.append(np.asarray(pi))
  np.testing.assert_allclose(got[7:], np.array(want), rtol=1e-4, atol=1e-6)
  assert got[-1][1] < got[-1][0]    # the flat (noise-like) curve loses


@pytest.mark.parametrize("bad, match", [
    (lambda: odm.ODMMixer(3, 100, smoothing=1.5), r"ODMMixer.smoothing must be in \[0, 1\)"),
    (lambda: odm.ODMMixer(3, 100, warmup_steps=100), "never adapt"),
    (lambda: odm.ODMMixer(3, 100, form="fast"), "ODMMixer.form"),
    (lambda: ado.ADOMixer(3, 100, floor=0.5), r"ADOMixer.floor must be in \[0, 0.333"),
    (lambda: ado.ADOMixer(3, 100), "never fit"),
    (lambda: doremi_online.DoReMiOnlineMixer(3, 100, step_size=-1.0),
     "DoReMiOnlineMixer.step_size must be a positive"),
])
def test_mixer_settings_out_of_range_are_refused(bad, match):
  with pytest.raises(ConfigError, match=match):
    bad()


def test_unknown_method_is_refused():
  with pytest.raises(ConfigError, match="unknown mixing method 'dro'.*odm, ado"):
    mixers.make("dro", 3, 100)


@pytest.mark.parametrize("smoothing", [None, 0.1])
def test_aioli_mixer_rounds_match_numpy_with_a_resume(smoothing):
  """The Aioli mixer driven step by step (`on_step_done`) with a fake
  held-out evaluation: its burst schedule is each domain's m^j for lp_steps
  steps in its seeded order, it evaluates once before and once after every
  burst, and its rounds' weights equal the NumPy rounds; a resume (state
  through NumPy) half way changes nothing."""
  rng = np.random.default_rng(8)
  k, rounds, lp, t, steps = 3, 2, 2, 16, 48
  mixer = aioli.AioliMixer(k, steps, update_steps=t, lp_rounds=rounds, lp_steps=lp, eta=0.5,
                           one_hot_factor=0.625, smoothing=smoothing)
  mixer.seed = 3
  prior = np.array([0.5, 0.3, 0.2])
  state, schedule, calls = mixer.init(prior), {}, []

  def held_out():
    calls.append(5.0 - 0.05 * len(calls) - rng.uniform(0, 0.05, k))
    return calls[-1]

  w_np, abar_np = prior.copy(), None
  w_burst = np.asarray(aioli.burst_mixtures(k, 0.625))
  for done in range(steps):
    first = len(calls)
    assert mixer.is_event(done) == (done % t == 0 or (done % t <= rounds * k * lp and
                                                      done % t % lp == 0))
    if mixer.is_event(done):
      state, sched, _ = mixer.on_step_done(done, state, held_out)
      schedule.update(sched)
    if done == 20:
      state = jax.tree.map(lambda x: np.asarray(x), state)
    if done % t == rounds * k * lp:   # the round's update: replay it in NumPy
      order = mixer.order(done // t)
      assert sorted(order) == sorted(list(range(k)) * rounds)
      seq = np.array(calls[first - rounds * k:first + 1])
      w_np, abar_np = np_aioli_round(w_np, seq, order, rounds, 0.625, 0.5, smoothing, abar_np)
      np.testing.assert_allclose(schedule[done], w_np, rtol=2e-5, atol=1e-7)
      for b, j in enumerate(order):
        for i in range(lp):
          np.testing.assert_allclose(schedule[done // t * t + b * lp + i], w_burst[j])
  assert sorted(schedule) == list(range(steps))
  assert int(state["evaluations"]) == len(calls) == 3 * (rounds * k + 1)
  cost = mixer.cost(state, tokens_per_eval=100, tokens_per_step=50)
  assert cost["learnparams_steps"] == 3 * rounds * k * lp
  assert cost["eval_compute_fraction"] == pytest.approx(len(calls) * 100 / (3 * steps * 50))


def np_record(ns, losses, oks, capacity):
  """ADO's bounded curve in NumPy: window means of `stride` steps, one row
  each; a full buffer averages neighbouring rows in pairs, stride doubles."""
  rows, stride, window = [], 1, []
  for n, y, ok in zip(ns, losses, oks):
    window.append((n, y, ok))
    if len(window) == stride:
      rows.append((np.mean([w[0] for w in window], 0), np.mean([w[1] for w in window], 0),
                   np.all([w[2] for w in window], 0)))
      window = []
      if len(rows) == capacity:
        rows = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, a[2] & b[2])
                for a, b in zip(rows[0::2], rows[1::2])]
        stride *= 2
  return rows, stride


def test_ado_curve_stays_bounded_and_matches_numpy():
  rng = np.random.default_rng(9)
  k, cap, steps = 3, 8, 45
  ns = np.cumsum(rng.integers(0, 4, (steps, k)), axis=0).astype(np.float32)
  losses = rng.uniform(1, 5, (steps, k)).astype(np.float32)
  oks = ns > 0
  curve = ado.init_curve(k, cap)
  rec = jax.jit(lambda c, n, y, ok: ado.record(c, n, y, ok, cap))
  for t in range(steps):
    curve = rec(curve, ns[t], losses[t], oks[t])
    if t == 20:   # resume: through NumPy and back
      curve = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), curve)
  want, stride = np_record(ns, losses, oks, cap)
  assert int(curve["stride"]) == stride == 8 and int(curve["rows"]) == len(want) == 5
  for i, (n, y, ok) in enumerate(want):
    np.testing.assert_allclose(curve["n"][i], n, rtol=1e-5)
    np.testing.assert_allclose(curve["loss"][i], y, rtol=1e-5)
    np.testing.assert_array_equal(curve["ok"][i], ok)


def test_every_method_is_registered_once_with_its_authors_prior():
  """One registry: names, classes and starting mixtures; an unknown name is
  refused with the list."""
  from doremi_jax import mixers
  assert mixers.names() == ("odm", "ado", "doremi_online", "aioli")
  assert {n: mixers.prior(n) for n in mixers.names()} == {
      "odm": "proportional", "ado": "proportional", "doremi_online": "uniform",
      "aioli": "uniform"}
  assert [n for n in mixers.names() if mixers.needs_reference(n)] == ["doremi_online"]
  assert mixers.make("odm", 3, 10_000).name == "odm"
  with pytest.raises(ConfigError, match="unknown mixing method 'exp3'.*odm, ado"):
    mixers.make("exp3", 3, 100)
