"""Swarm methods' math (issue 15, first part): the mixtures a swarm trains
on, and the mixture a fitted law proposes. Pure NumPy; tested against
independent implementations in tests/unit/swarm_law_test.py.

RegMix (Liu et al., ICLR 2025, arXiv 2407.01492) draws the swarm's
mixtures from a Dirichlet around the prior q:

  w ~ Dirichlet(s * q^0.5 / sum q^0.5),  s drawn from `concentrations`
  (RegMix: 15 values log-spaced over [0.1, 5]); a draw with any
  w_i > min(cap_factor * q_i, 1) is rejected (cap_factor 15); weights
  below `min_weight` (2e-4) are zeroed and the rest renormalised.

Olmix (Chen et al., 2026, arXiv 2602.12237) proposes a mixture from
log-linear laws y_m(x) = exp(c_m) + exp(t_m . x), one per metric m with
weight w_m:

  minimise  sum_m w_m exp(t_m . x) + lambda KL(x || q)
  subject to  x >= 0, sum x = 1, x_i <= cap_i

(cap_i = R D_i / T: R repetitions allowed, D_i domain i's tokens, T the
run's tokens). The problem is strictly convex, so its optimum is unique:
the tilt x_i = q_i exp(-(g_i + nu) / lambda) on uncapped domains (g the
objective's gradient at x, nu the simplex multiplier), x_i = cap_i on
capped ones; that is, x = capped_tilt(log q - g(x) / lambda).

Iterating that map (Olmix's fixed point) need not converge: at lambda 0.05
it is often not a contraction and oscillates (issue 25). `olmix_propose`
solves the Fenchel dual instead: with T the [M, K] coefficients, u in R^M
(u_m > 0) and x(u) = capped_tilt(log q - T^T u / lambda),

  maximise  D(u) = sum_m (u_m - u_m log(u_m / w_m)) + u . T x(u)
                   + lambda KL(x(u) || q),

a continuously differentiable, strictly concave function of M variables
(the caps put kinks in its Hessian) whose maximiser has u_m = w_m exp(t_m .
x(u)), so x(u) is the optimum. It takes damped Newton steps with Armijo
backtracking, then checks the optimality residual max |x - capped_tilt(log
q - g(x) / lambda)| <= 1e-9, raising ConfigError (naming
train_swarm.kl_weight) when the step limit runs out or the steps stall
first. On 5-domain laws with t ~ N(0, 1.5) it needs 3-11 steps at lambda
0.05-5, and 9 on the swarm study's fitted laws (docs/reproduction.md;
coefficients down to -116); in trials it failed only on random laws with
t ~ N(0, 6-10) and lambda <= 0.005, where the residual itself loses
float64 precision and, with caps, Newton zigzags across their kinks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from doremi_jax.config import ConfigError

REGMIX_CONCENTRATIONS = tuple(np.logspace(np.log10(0.1), np.log10(5.0), 15))


def check_distribution(p, where: str) -> np.ndarray:
  p = np.asarray(p, np.float64)
  if p.ndim != 1 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
    raise ConfigError(f"{where} must be a distribution over the domains (finite, "
                      f"non-negative, positive sum); got {p.tolist()}.")
  return p / p.sum()


def sample_mixtures(prior, n: int, seed: int, concentrations: Sequence[float] =
                    REGMIX_CONCENTRATIONS, cap_factor: float = 15.0, min_weight: float = 2e-4,
                    corners: Sequence[int] = (), include_uniform: bool = True,
                    max_tries: int = 100_000) -> np.ndarray:
  """[n, K] mixtures: the uniform mixture (if asked), the one-hot corners
  named (domain indices), then RegMix draws until there are n."""
  q = check_distribution(prior, "the swarm's prior")
  k = len(q)
  fixed = ([np.full(k, 1.0 / k)] if include_uniform else []) + [np.eye(k)[c] for c in corners]
  if len(fixed) > n:
    raise ConfigError(f"the swarm has {n} members but {len(fixed)} fixed mixtures (uniform and "
                      "corners); raise the swarm size.")
  rng = np.random.default_rng([seed, 0x737761])
  base = np.sqrt(q) / np.sqrt(q).sum()
  cap = np.minimum(cap_factor * q, 1.0)
  out = list(fixed)
  for _ in range(max_tries):
    if len(out) == n:
      break
    s = concentrations[rng.integers(len(concentrations))]
    w = rng.dirichlet(np.maximum(s * base, 1e-12))
    if np.any(w > cap):
      continue
    w = np.where(w < min_weight, 0.0, w)
    if w.sum() <= 0:
      continue
    out.append(w / w.sum())
  if len(out) < n:
    raise ConfigError(f"could not draw {n} swarm mixtures within the cap of {cap_factor}x the "
                      f"prior in {max_tries} tries; raise the cap factor or flatten the prior.")
  return np.stack(out)


def check_caps(caps, k: int) -> Optional[np.ndarray]:
  """Repetition caps as K finite non-negative shares that some mixture fits
  within (sum >= 1); None passes through."""
  if caps is None:
    return None
  caps = np.asarray(caps, np.float64)
  if caps.shape != (k,) or np.any(~np.isfinite(caps)) or np.any(caps < 0):
    raise ConfigError(f"the repetition caps must be {k} finite non-negative shares, got "
                      f"{caps.tolist()}.")
  if caps.sum() < 1 - 1e-12:
    raise ConfigError(f"the repetition caps sum to {caps.sum():.4f} < 1: no mixture fits within "
                      "them. Allow more repetitions (train_swarm.repetitions), or give the "
                      "main run fewer tokens.")
  return caps


def tilt_and_caps(logits, caps: Optional[np.ndarray]):
  """`capped_tilt`'s mixture and which domains sit at their caps."""
  logits = np.asarray(logits, np.float64)
  fixed = np.zeros(len(logits), bool)
  for _ in range(len(logits) + 1):
    x = np.where(fixed, caps, 0.0) if caps is not None else np.zeros(len(logits))
    if not fixed.all():
      z = np.exp(logits[~fixed] - logits[~fixed].max())
      x[~fixed] = (1.0 - (caps[fixed].sum() if caps is not None else 0.0)) * z / z.sum()
    if caps is None:
      return x, fixed
    over = (x > caps * (1 + 1e-12)) & ~fixed
    if not over.any():
      return x, fixed
    fixed |= over
  return x, fixed


def capped_tilt(logits, caps: Optional[np.ndarray]) -> np.ndarray:
  """argmin over the capped simplex of KL(x || softmax(logits)): the
  softmax, with every domain over its cap fixed at it and the rest
  rescaled (repeated until no cap is exceeded)."""
  return tilt_and_caps(logits, caps)[0]


def check_law(t_MxK, weights_M, k: int):
  """The law's [M, K] finite coefficients and M finite non-negative weights."""
  t = np.asarray(t_MxK, np.float64)
  w = np.asarray(weights_M, np.float64)
  if t.ndim != 2 or t.shape[1] != k or w.shape != (t.shape[0],):
    raise ConfigError(f"the proposer needs [M, {k}] law coefficients and M objective weights; "
                      f"got shapes {t.shape} and {w.shape}.")
  if not (np.all(np.isfinite(t)) and np.all(np.isfinite(w)) and np.all(w >= 0)):
    raise ConfigError("the proposer's law coefficients must be finite and its objective "
                      f"weights finite and non-negative; got weights {w.tolist()}.")
  return t, w


class OlmixDual:
  """The proposer's problem on the prior's support, seen from its dual
  (module docstring): u in R^M, x(u) the capped tilt at gradient T^T u."""

  def __init__(self, t, w, q, lam: float, caps):
    self.t, self.w, self.q, self.lam, self.caps = t, w, q, lam, caps
    self.log_q = np.log(q)

  def primal(self, u):
    return tilt_and_caps(self.log_q - self.t.T @ u / self.lam, self.caps)

  def value(self, u, x) -> float:
    """D(u) = sum_m (u_m - u_m log(u_m / w_m)) + u . T x(u) + lam KL(x(u) || q)."""
    kl = np.sum(np.where(x > 0, x * np.log(np.maximum(x, 1e-300) / self.q), 0.0))
    return float(np.sum(u - u * np.log(u / self.w)) + u @ (self.t @ x) + self.lam * kl)

  def residual(self, x) -> float:
    """max |x - capped_tilt(log q - g(x) / lam)|: zero exactly at the optimum."""
    return float(np.abs(x - self.primal(self.w * np.exp(self.t @ x))[0]).max())

  def newton(self, u, x, fixed):
    """The ascent direction (diag(1/u) + T J T^T)^-1 grad D, J = dx/d(-T^T u)
    (the free domains' tilt covariance over lam), solved in sqrt(u) scaling."""
    grad = self.t @ x - np.log(u / self.w)
    a, xf = self.t[:, ~fixed], x[~fixed]
    ax, mass = a @ xf, xf.sum()
    cov = (a * xf) @ a.T - (np.outer(ax, ax) / mass if mass > 0 else 0.0)
    s = np.sqrt(u)
    step = s * np.linalg.solve(np.eye(len(u)) + s[:, None] * cov * s[None, :] / self.lam, s * grad)
    return step, float(grad @ step)

  def line_search(self, u, x, step, slope):
    """Armijo backtracking on D from u along `step`, keeping u > 0 (None
    when no step of at least 2^-60 of it raises D)."""
    d0 = self.value(u, x)
    shrink = step < 0
    a = min(1.0, 0.99 * float(np.min(-u[shrink] / step[shrink]))) if shrink.any() else 1.0
    for _ in range(60):
      trial = u + a * step
      # slack for rounding: near the optimum D's rise is below its precision
      if self.value(trial, self.primal(trial)[0]) >= d0 + 1e-4 * a * slope - 1e-14 * (1 + abs(d0)):
        return trial
      a *= 0.5
    return None


def olmix_propose(t_MxK, weights_M, prior_K, lam: float, caps_K=None, iters: int = 100,
                  tol: float = 1e-9) -> np.ndarray:
  """Olmix's exact proposer (module docstring): damped Newton ascent on the
  dual for at most `iters` steps, then the optimality check max |x -
  capped_tilt(log q - g(x) / lambda)| <= tol; ConfigError if it fails."""
  q = check_distribution(prior_K, "the proposer's prior")
  t, w = check_law(t_MxK, weights_M, len(q))
  if not (lam > 0 and np.isfinite(lam)):
    raise ConfigError(f"the KL weight lambda must be > 0 and finite, got {lam!r}.")
  caps = check_caps(caps_K, len(q))
  on, terms = q > 0, w > 0
  if caps is not None and caps[on].sum() < 1 - 1e-12:
    raise ConfigError("the repetition caps of the domains with prior weight sum to "
                      f"{caps[on].sum():.4f} < 1: no mixture that the prior allows fits within "
                      "them. Allow more repetitions (train_swarm.repetitions), or give the main "
                      "run fewer tokens.")
  dual = OlmixDual(t[terms][:, on], w[terms], q[on], lam, None if caps is None else caps[on])
  x = dual.primal(np.zeros(int(terms.sum())))[0]   # the prior, within the caps
  u = dual.w * np.exp(dual.t @ x)
  res, steps, tilt = dual.residual(x), 0, dual.primal(u)
  while res > 1e-2 * tol and steps < iters:
    step, slope = dual.newton(u, *tilt)
    u = dual.line_search(u, tilt[0], step, slope)
    if u is None:
      break
    tilt, steps = dual.primal(u), steps + 1
    x = tilt[0]
    res = dual.residual(x)
  if res > tol:
    why = "the limit" if steps == iters else "where they stalled"
    raise ConfigError(f"Olmix's proposer did not reach its optimum: after {steps} Newton steps "
                      f"({why}) the optimality residual is {res:.1e} > {tol:.0e} at KL weight "
                      f"{lam}. Raise train_swarm.kl_weight (a stronger pull to the prior makes "
                      "the problem better conditioned), or check the fitted laws' coefficients.")
  out = np.zeros(len(q))
  out[on] = x
  return out
