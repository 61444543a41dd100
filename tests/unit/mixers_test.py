"""Online mixing methods' updates against independent NumPy implementations
(replayed sequences of per-domain losses), including the first update and an
update after a resume (the state through NumPy and back)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import savgol_coeffs, savgol_filter

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


def test_ado_prior_keeps_its_weight_in_pibar_after_the_first_fit():
  """pibar is the authors' running average over the global step: a domain
  with prior 0.181 whose rho is at the floor (0.0099 after renormalising)
  from a first fit at step 1000 keeps 0.181 in pibar (pi 0.164 at that
  step) and is at 0.095 by step 2000; a running mean restarted at the first
  fit would put it at 0.0099 one step later."""
  prior = jnp.asarray([0.181, 0.819])
  laws = ado.Laws(jnp.zeros(2), jnp.asarray([-10.0, 5.0]), jnp.asarray([0.001, 0.5]))
  step = jax.jit(lambda st, t: ado.policy(st, laws, jnp.full(2, 1e4), prior, t))
  state, pis, pibars = ado.init_policy(prior), {}, {}
  for t in range(1000, 2001):
    pis[t], state = step(state, t)
    pibars[t] = float(state.pibar_K[0])
  rho = 0.01 / (1 + 0.01)
  assert float(pis[1000][0]) == pytest.approx(0.9 * 0.181 + 0.1 * rho, rel=1e-4)
  assert pibars[1000] == pytest.approx((1000 * 0.181 + rho) / 1001, rel=1e-4)
  assert float(pis[1001][0]) == pytest.approx(0.9 * pibars[1000] + 0.1 * rho, rel=1e-4)
  assert pibars[2000] == pytest.approx((1000 * 0.181 + 1001 * rho) / 2001, rel=1e-4)
  assert round(pibars[2000], 3) == 0.095


def test_ado_sinks_a_flat_curve_and_favours_a_falling_one():
  """ADO's own prediction: noise (flat loss at log V) goes to the floor; of
  two learnable domains the one still falling faster gains."""
  n = np.arange(1, 101, dtype=np.float32) * 20
  curves = np.stack([np.full_like(n, np.log(128)), 1 + 4 * n ** -0.5, 1 + 4 * n ** -0.1])
  laws = ado.fit_laws(jnp.asarray(np.stack([n] * 3)), jnp.asarray(curves), e_min=None)
  prior = jnp.full(3, 1 / 3)
  step = jax.jit(lambda st, t: ado.policy(ado.track_shares(st, prior), laws, jnp.full(3, 2000.0),
                                           prior, t))
  state, pi = ado.init_policy(prior), None
  for t in range(200):
    pi, state = step(state, t)
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


def _ado_signals(rng, k, steps, batch=16):
  """Per-step signals: power-law losses in the sequences seen, noisy; the
  last domain flat at log V (noise); domain 0 absent from the first batch;
  random absences (multinomial batches)."""
  p = rng.dirichlet(np.full(k, 2.0))
  e, a, alpha = rng.uniform(0.3, 1.0, k), rng.uniform(0.5, 1.5, k), rng.uniform(0.1, 0.6, k)
  seen, seq = np.zeros(k), []
  for t in range(steps):
    rows = rng.multinomial(batch, p).astype(np.float32)
    if t == 0:
      rows[1], rows[0] = rows[1] + rows[0], 0
    seen += rows
    loss = np.exp(e) + np.exp(a) * np.maximum(seen, 1) ** -alpha + rng.normal(0, 0.05, k)
    loss[-1] = np.log(128) + rng.normal(0, 0.05)
    loss = np.where(rows > 0, loss, 0).astype(np.float32)
    seq.append(mixer_base.Signals(jnp.asarray(loss), jnp.asarray(rows * 32), jnp.asarray(rows)))
  return seq


def np_ado(seq, prior, laws_at, ignore, interval, window, order, stride, same):
  """The authors' ADO selector (yidingjiang/ado@bc3d8d0,
  src/data_selectors/ado.py: `update`, `compute_scaling_law_params`,
  `curr_dist`), written in NumPy from its rules: returns the rates after
  every step and the (n, loss) points each fit was given. Their fit
  (L-BFGS) is not replayed: the fit of step s returns `laws_at[s]`, the
  mixer's (e, a, alpha)."""
  k = len(prior)
  steps_n, losses, laws, out, fits = [], [], None, [], {}
  h, pi, pibar = prior.copy(), prior.copy(), prior.copy()
  for t, sig in enumerate(seq):
    rows, loss = np.asarray(sig.rows_K, np.float64), np.asarray(sig.loss_K, np.float64)
    steps_n.append(np.full(k, rows.sum()) if same else rows)   # use_same_step_size
    h = 0.9 * h + 0.1 * rows / rows.sum()
    prev = losses[-1] if losses else np.full(k, (rows * loss).sum() / rows.sum())
    losses.append(np.where(rows > 0, loss, prev))
    if t >= ignore and t % interval == 0:
      n_KxJ = np.cumsum(steps_n, axis=0)[ignore::stride].T
      y_KxJ = savgol_filter(np.array(losses).T, window, order, axis=-1)[:, ignore::stride]
      fits[t] = (n_KxJ, y_KxJ)
      laws = laws_at[t]
    if laws is not None:
      e, a, alpha = laws
      n = np.sum(steps_n, axis=0)
      reducible = np.exp(e) + np.exp(a) * n ** -alpha - np.exp(e)
      rho = np.maximum(alpha, 0.05) * reducible / n * prior * np.sqrt(h)
      rho = np.maximum(rho / rho.sum(), 0.01)
      rho = rho / rho.sum()
      pi = 0.9 * pibar + 0.1 * rho
      pibar = (1 - 1 / (t + 1)) * pibar + rho / (t + 1)
    out.append(pi.copy())
  return np.array(out), fits


@pytest.mark.parametrize("same, window, order, stride, ignore, interval, steps, resume", [
    (True, 101, 3, 10, 105, 60, 190, 150),    # the authors' n, smoothing and stride
    (False, 11, 2, 3, 13, 20, 70, 39)])       # each domain's own n
def test_ado_mixer_matches_the_authors_update_with_a_resume(same, window, order, stride, ignore,
                                                             interval, steps, resume):
  """The ADO mixer, jitted, against the authors' update in NumPy on random
  curves: the prior until the first fit; each fit's points (the smoothed
  curve from step ignore_steps on, n) and the rates after every step,
  including the first fit; its state after a mid-run step through NumPy (a
  checkpoint) and continued is bitwise the uninterrupted run's."""
  rng = np.random.default_rng(11)
  k = 3
  prior = rng.dirichlet(np.full(k, 3.0))
  seq = _ado_signals(rng, k, steps)
  mixer = ado.ADOMixer(k, steps, ignore_steps=ignore, update_interval=interval, e_min=None,
                       fit_iters=20, same_step_size=same, savgol_window=window,
                       savgol_order=order, fit_stride=stride)
  update = jax.jit(mixer.update)
  state, states = mixer.init(prior), []
  for t, sig in enumerate(seq):
    state = update(state, sig, jnp.asarray(t, jnp.int32))
    states.append(state)
  got = np.array([np.asarray(mixer.rates(s)) for s in states])
  fit_steps = [t for t in range(ignore, steps) if t % interval == 0]
  laws_at = {t: np.asarray(jnp.stack(states[t]["laws"]), np.float64) for t in fit_steps}
  want, fits = np_ado(seq, prior, laws_at, ignore, interval, window, order, stride, same)

  assert sorted(fits) == fit_steps and len(fit_steps) >= 2
  for t in fit_steps:
    n, y, w = (np.asarray(x) for x in ado.fit_points(states[t]["curve"], t, ignore, stride))
    m = fits[t][0].shape[1]
    np.testing.assert_allclose(n[:, :m], fits[t][0], rtol=1e-6)
    np.testing.assert_allclose(y[:, :m], fits[t][1], rtol=1e-5, atol=1e-5)
    assert w[:, :m].all() and not w[:, m:].any()
    assert not np.array_equal(laws_at[t], np.asarray(jnp.stack(states[t - 1]["laws"])))
  np.testing.assert_array_equal(got[:fit_steps[0]], np.tile(prior.astype(np.float32),
                                                            (fit_steps[0], 1)))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)

  state = jax.tree.map(np.asarray, states[resume])    # a checkpoint, restored
  for t in range(resume + 1, steps):
    state = update(state, seq[t], jnp.asarray(t, jnp.int32))
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(states[t])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("bad, match", [
    (lambda: odm.ODMMixer(3, 100, smoothing=1.5), r"ODMMixer.smoothing must be in \[0, 1\)"),
    (lambda: odm.ODMMixer(3, 100, warmup_steps=100), "never adapt"),
    (lambda: odm.ODMMixer(3, 100, form="fast"), "ODMMixer.form"),
    (lambda: ado.ADOMixer(3, 100, floor=0.5), r"ADOMixer.floor must be in \[0, 0.333"),
    (lambda: ado.ADOMixer(3, 100), "never fit"),
    (lambda: ado.ADOMixer(3, 100, ignore_steps=10, update_interval=10),
     "first fit, at step 10, would smooth 11 steps with a Savitzky-Golay window of 101"),
    (lambda: ado.ADOMixer(3, 100, ignore_steps=10, savgol_window=10), "savgol_window must be odd"),
    (lambda: ado.ADOMixer(3, 100, ignore_steps=10, savgol_window=3, savgol_order=3),
     r"savgol_order must be in \[0, 2\]"),
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


def test_ado_curve_is_savgol_filter_of_the_whole_curve_at_the_fit_steps():
  """After every step s >= W - 1 the bounded curve holds scipy's
  savgol_filter(losses[:s + 1], 101, 3) (the authors' call, 'interp' edges)
  at steps ignore, ignore + 10, ... <= s, and n there; a resume (through
  NumPy) changes nothing. Its interior row is savgol_coeffs."""
  rng = np.random.default_rng(9)
  k, steps, ignore, stride, w = 3, 240, 37, 10, 101
  hat = ado.savgol_matrix(w, 3)
  np.testing.assert_allclose(hat[w // 2], savgol_coeffs(w, 3), atol=1e-7)
  ns = np.cumsum(rng.integers(0, 4, (steps, k)), axis=0).astype(np.float32)
  losses = rng.uniform(1, 5, (steps, k)).astype(np.float32)
  curve = ado.init_curve(k, ado.num_points(steps, ignore, stride), w)
  rec = jax.jit(lambda c, t, n, y: ado.record(c, t, n, y, hat, ignore, stride))
  for t in range(steps):
    curve = rec(curve, t, ns[t], losses[t])
    if t == 120:   # resume: through NumPy and back
      curve = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), curve)
    if t < w - 1:
      continue
    n, y, weight = (np.asarray(x) for x in ado.fit_points(curve, t, ignore, stride))
    want = savgol_filter(losses[:t + 1].T.astype(np.float64), w, 3, axis=-1)[:, ignore::stride]
    m = want.shape[1]
    np.testing.assert_allclose(y[:, :m], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(n[:, :m], np.maximum(ns[ignore:t + 1:stride].T, 1))
    assert weight[:, :m].all() and not weight[:, m:].any()
  assert curve["n"].shape == (ado.num_points(steps, ignore, stride), k) == (21, k)


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
