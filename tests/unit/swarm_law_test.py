"""Swarm math (issue 15): RegMix's mixture sampler, Olmix's exact proposer,
the laws, their cross-validation and every law's proposal, against
independent NumPy implementations and planted cases."""

import itertools

import numpy as np
import pytest
from scipy import optimize

from doremi_jax.config import ConfigError
from doremi_jax.swarm import fit, law


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


def random_law(rng, capped):
  """A 5-domain, 3-term problem with realistic law coefficients (t ~ N(0,
  1.5)); caps in [0.1, 0.5] scaled up to sum to at least 1.2."""
  k, m = 5, 3
  t, w, q = rng.normal(0, 1.5, (m, k)), rng.dirichlet(np.ones(m)), rng.dirichlet(np.ones(k))
  if not capped:
    return t, w, q, None
  caps = rng.uniform(0.1, 0.5, k)
  return t, w, q, caps * max(1.0, 1.2 / caps.sum())


def np_olmix_objective(t, w, q, lam, x):
  kl = np.sum(np.where(x > 0, x * np.log(np.maximum(x, 1e-300) / q), 0.0))
  return float(w @ np.exp(t @ x) + lam * kl)


def np_slsqp_primal(t, w, q, lam, caps):
  """The proposer's problem solved directly in x by SciPy's SLSQP."""
  upper = np.ones(len(q)) if caps is None else np.minimum(caps, 1.0)

  def f(x):
    xs, e = np.maximum(x, 1e-300), w * np.exp(t @ x)
    return e.sum() + lam * np.sum(xs * np.log(xs / q)), t.T @ e + lam * (np.log(xs / q) + 1)
  simplex = optimize.LinearConstraint(np.ones((1, len(q))), 1.0, 1.0)
  res = optimize.minimize(f, q if caps is None else np_capped_kl_projection(q, caps), jac=True,
                          method="SLSQP", bounds=optimize.Bounds(0.0, upper),
                          constraints=[simplex], options={"maxiter": 1000, "ftol": 1e-16})
  x = np.clip(res.x, 0, upper)
  return x / x.sum()


@pytest.mark.parametrize("capped", [False, True])
@pytest.mark.parametrize("lam", [0.05, 0.5, 5.0])
def test_olmix_proposer_matches_slsqp_on_random_laws(lam, capped):
  """Issue 25: the proposer's optimum on 50 random problems agrees with
  SLSQP's to 1e-4 and is never worse (the old damped fixed point was off
  by up to 0.5 at kl_weight 0.05)."""
  rng = np.random.default_rng([int(lam * 100), int(capped)])
  off, worse, binding = [], [], 0
  for i in range(50):
    t, w, q, caps = random_law(rng, capped)
    x = law.olmix_propose(t, w, q, lam, caps)
    want = np_slsqp_primal(t, w, q, lam, caps)
    assert abs(x.sum() - 1) < 1e-12 and np.all(x >= 0)
    if caps is not None:
      assert np.all(x <= caps * (1 + 1e-12))
      binding += bool(np.any(np.isclose(x, caps, rtol=1e-9)))
    if np.abs(x - want).max() > 1e-4:
      off.append((i, round(float(np.abs(x - want).max()), 4)))
    if np_olmix_objective(t, w, q, lam, x) > np_olmix_objective(t, w, q, lam, want) + 1e-10:
      worse.append(i)
  assert not off, f"{len(off)} of 50 off SLSQP's optimum by > 1e-4 (instance, max dev): {off}"
  assert not worse, f"{len(worse)} of 50 worse than SLSQP's optimum: {worse}"
  assert not capped or binding >= 10, binding


def test_olmix_proposer_says_when_it_does_not_converge():
  t, w, q, _ = random_law(np.random.default_rng(7), False)
  with pytest.raises(ConfigError, match=r"optimality residual .* Raise train_swarm\.kl_weight"):
    law.olmix_propose(t, w, q, 0.05, iters=2)
  x = law.olmix_propose(t, w, q, 0.05)  # the default limit is ample
  np.testing.assert_allclose(x, np_slsqp_primal(t, w, q, 0.05, None), atol=1e-4)


def test_olmix_proposer_edges():
  t, w, _, _ = random_law(np.random.default_rng(8), False)
  q = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
  # a domain without prior weight gets none; a zero-weight term is dropped
  x = law.olmix_propose(t, [0.5, 0.5, 0.0], q, 0.05)
  assert x[4] == 0
  np.testing.assert_allclose(x, np_slsqp_primal(t[:2, :4], np.array([0.5, 0.5]), q[:4], 0.05,
                                                None).tolist() + [0.0], atol=1e-4)
  # caps summing to exactly 1 leave one mixture; no terms leave the prior
  np.testing.assert_allclose(law.olmix_propose(t, w, np.full(5, 0.2), 0.05, [0.2] * 5), 0.2)
  np.testing.assert_allclose(law.olmix_propose(t, [0, 0, 0], q, 0.05), q)
  with pytest.raises(ConfigError, match="caps of the domains with prior weight sum to 0.4000"):
    law.olmix_propose(t, w, q, 0.05, caps_K=[0.1, 0.1, 0.1, 0.1, 0.9])
  with pytest.raises(ConfigError, match="must be > 0 and finite"):
    law.olmix_propose(t, w, q, np.inf)


# --------------------------------------------------------------------------
# Laws, cross-validation and proposals (swarm.fit)


def _simplex(rng, n, k):
  return rng.dirichlet(np.ones(k), n)


def np_loglinear_gauss_newton(X, y, c, t, iters=200):
  """Least squares on exp(c) + exp(X t) by damped Gauss-Newton (the Huber
  fit equals it on noiseless data: every residual ends inside delta)."""
  theta = np.concatenate([[c], t])
  for _ in range(iters):
    e = np.exp(X @ theta[1:])
    r = np.exp(theta[0]) + e - y
    J = np.concatenate([np.exp(theta[0]) * np.ones((len(y), 1)), X * e[:, None]], axis=1)
    theta = theta - np.linalg.lstsq(J.T @ J + 1e-9 * np.eye(len(theta)), J.T @ r,
                                    rcond=None)[0]
  return theta


def test_loglinear_law_recovers_a_planted_law():
  rng = np.random.default_rng(1)
  k = 5
  X = _simplex(rng, 40, k)
  c, t = np.log(1.5), np.array([1.0, 0.2, -0.5, 0.8, -1.2])
  y = np.exp(c) + np.exp(X @ t)
  f = fit.Fitted("loglinear", X, y)
  np.testing.assert_allclose(f.params["t"], t, atol=1e-4)
  assert abs(f.params["c"] - c) < 1e-4
  gn = np_loglinear_gauss_newton(X, y, 0.0, np.zeros(k))
  np.testing.assert_allclose(np.concatenate([[f.params["c"]], f.params["t"]]), gn, atol=1e-4)
  np.testing.assert_allclose(f.predict(X[:3]), y[:3], atol=1e-6)


def test_linear_law_and_cross_validation_against_numpy():
  rng = np.random.default_rng(2)
  X = _simplex(rng, 23, 4)
  y = X @ np.array([3.0, 2.0, 4.0, 1.0]) + rng.normal(0, 0.05, 23)
  np.testing.assert_allclose(fit.Fitted("linear", X, y).params["a"], np.linalg.pinv(X) @ y,
                             rtol=1e-9)
  cv = fit.cross_validate("linear", X, y, folds=5, seed=7)
  ids = fit.fold_ids(23, 5, 7)
  assert sorted(np.bincount(ids)) == [4, 4, 5, 5, 5]
  want = np.empty(23)
  for f in range(5):
    held = ids == f
    want[held] = X[held] @ (np.linalg.pinv(X[~held]) @ y[~held])
  np.testing.assert_allclose(cv["predicted"], want, rtol=1e-9)
  # Spearman as the Pearson correlation of ranks (no ties here)
  ra, rb = np.argsort(np.argsort(want)), np.argsort(np.argsort(y))
  assert cv["spearman"] == pytest.approx(np.corrcoef(ra, rb)[0, 1], rel=1e-12)
  assert cv["rmse"] == pytest.approx(np.sqrt(np.mean((want - y) ** 2)), rel=1e-12)
  assert np.isnan(fit.spearman([1, 1, 1], [1, 2, 3]))


def test_targets_and_objectives():
  y = fit.targets([[1.0, 3.0], [2.0, 0.5]], ["a", "b"])
  np.testing.assert_allclose(y["average"], [2.0, 1.25])
  np.testing.assert_allclose(y["worst"], [3.0, 2.0])
  assert fit.objective_terms("average", ["a", "b"]) == {"a": 0.5, "b": 0.5}
  assert fit.objective_terms("worst", ["a", "b"]) == {"worst": 1.0}
  assert fit.objective_terms(["b"], ["a", "b"]) == {"b": 1.0}
  with pytest.raises(ConfigError, match="each must be one of the corpus's domains"):
    fit.objective_terms(["c"], ["a", "b"])


@pytest.mark.parametrize("caps", [None, np.array([0.3, 0.5, 0.6, 0.4])])
def test_linear_proposal_is_the_capped_tilt_or_the_cheapest_fill(caps):
  rng = np.random.default_rng(3)
  k = 4
  X = _simplex(rng, 20, k)
  fits = {d: fit.Fitted("linear", X, X @ rng.normal(2, 1, k)) for d in "ab"}
  q = rng.dirichlet(np.ones(k))
  terms = {"a": 0.25, "b": 0.75}
  g = 0.25 * fits["a"].params["a"] + 0.75 * fits["b"].params["a"]
  x = fit.propose("linear", fits, terms, q, 0.3, caps)
  tilt = q * np.exp(-g / 0.3)
  want = tilt / tilt.sum() if caps is None else np_capped_kl_projection(tilt, caps)
  np.testing.assert_allclose(x, want, atol=1e-9)
  # kl 0: a linear program; its optimum is a vertex of the capped simplex,
  # found here by brute force over a grid
  x0 = fit.propose("linear", fits, terms, q, 0.0, caps)
  grid = np.array([p for p in itertools.product(np.linspace(0, 1, 21), repeat=k)
                   if abs(sum(p) - 1) < 1e-9 and (caps is None or np.all(p <= caps + 1e-9))])
  assert g @ x0 <= (grid @ g).min() + 1e-9


def test_loglinear_proposal_without_kl_matches_mirror_descent():
  rng = np.random.default_rng(4)
  k = 4
  X = _simplex(rng, 30, k)
  fits = {d: fit.Fitted("loglinear", X, 1.0 + np.exp(X @ rng.normal(0, 1, k))) for d in "ab"}
  terms = {"a": 0.5, "b": 0.5}
  caps = np.array([0.6, 0.6, 0.6, 0.6])
  x = fit.propose("loglinear", fits, terms, np.full(k, 0.25), 0.0, caps)
  t = np.stack([fits["a"].params["t"], fits["b"].params["t"]])
  want = np_mirror_descent(t, np.array([0.5, 0.5]), np.full(k, 0.25), 0.0, caps, steps=20000)
  np.testing.assert_allclose(x, want, atol=2e-3)
  f = lambda z: 0.5 * np.exp(t @ z).sum()
  assert f(x) <= f(want) + 1e-9


def test_regmix_search_finds_a_quadratic_optimum():
  """RegMix's top-k averaging recovers the optimum of a quadratic predictor."""
  class Quadratic:
    def predict(self, X):
      return ((X - np.array([0.1, 0.5, 0.3, 0.1])) ** 2).sum(axis=1)
  x = fit.propose("gbm", {"a": Quadratic()}, {"a": 1.0}, np.full(4, 0.25), 0.0, None,
                  candidates=100_000, top_k=128, seed=0)
  np.testing.assert_allclose(x, [0.1, 0.5, 0.3, 0.1], atol=0.03)
  with pytest.raises(ConfigError, match="within the repetition caps"):
    fit.propose("gbm", {"a": Quadratic()}, {"a": 1.0}, np.full(4, 0.25), 0.0,
                [0.26, 0.26, 0.26, 0.26], candidates=1000, top_k=128)


def planted_swarm(n=40, k=5, target=3, seed=5):
  """Each domain's loss falls with its own share (and a little with the
  others'), like a real swarm's; domain `target` is the one the objective
  counts."""
  rng = np.random.default_rng(seed)
  X = law.sample_mixtures(np.full(k, 1.0 / k), n, seed)
  floors = rng.uniform(1.0, 3.0, k)
  losses = floors + 2.0 * np.exp(-4.0 * X) + 0.1 * np.exp(-X.sum(1, keepdims=True))
  return X, losses + rng.normal(0, 0.01, losses.shape), target


@pytest.mark.parametrize("name", fit.LAWS)
def test_planted_case_one_domain_objective_puts_most_weight_on_it(name):
  X, losses, target = planted_swarm()
  domains = [f"d{i}" for i in range(5)]
  fits = {d: fit.Fitted(name, X, losses[:, i]) for i, d in enumerate(domains)}
  x = fit.propose(name, fits, fit.objective_terms([domains[target]], domains),
                  np.full(5, 0.2), 0.05, None, candidates=20_000, top_k=64)
  assert np.argmax(x) == target and x[target] > 0.5, x
  cv = fit.cross_validate(name, X, losses[:, target], folds=5)
  assert cv["spearman"] > 0.8, cv["spearman"]


def test_bad_caps_and_kl_weight():
  fits = {"a": fit.Fitted("linear", np.eye(3), [1.0, 2.0, 3.0])}
  with pytest.raises(ConfigError, match="caps sum to 0.6000 < 1"):
    fit.propose("linear", fits, {"a": 1.0}, np.full(3, 1 / 3), 0.1, [0.2] * 3)
  with pytest.raises(ConfigError, match="kl_weight must be >= 0"):
    fit.propose("linear", fits, {"a": 1.0}, np.full(3, 1 / 3), -1.0)
  with pytest.raises(ConfigError, match="prior must be a distribution"):
    fit.propose("linear", fits, {"a": 1.0}, [0.0, 0.0, 0.0], 0.1)
