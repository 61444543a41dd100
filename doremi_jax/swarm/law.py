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
run's tokens). Its optimum satisfies the tilt x_i = q_i exp(-(g_i + nu) /
lambda) on uncapped domains (g the objective's gradient at x, nu the
simplex multiplier), x_i = cap_i on capped ones; `olmix_propose` solves it
by damped fixed-point iteration on that condition.
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


def capped_tilt(logits, caps: Optional[np.ndarray]) -> np.ndarray:
  """argmin over the capped simplex of KL(x || softmax(logits)): the
  softmax, with every domain over its cap fixed at it and the rest
  rescaled (repeated until no cap is exceeded)."""
  z = np.exp(logits - logits.max())
  if caps is None:
    return z / z.sum()
  fixed = np.zeros(len(z), bool)
  for _ in range(len(z) + 1):
    free_mass = 1.0 - caps[fixed].sum()
    x = np.where(fixed, caps, free_mass * z / max(z[~fixed].sum(), 1e-300))
    over = (x > caps * (1 + 1e-12)) & ~fixed
    if not over.any():
      return x
    fixed |= over
  return x


def olmix_propose(t_MxK, weights_M, prior_K, lam: float, caps_K=None, iters: int = 20000,
                  damping: float = 0.5, tol: float = 1e-12) -> np.ndarray:
  """Olmix's exact proposer (module docstring), by damped fixed-point
  iteration on the tilt x = capped_tilt(log q - g(x) / lambda)."""
  t = np.asarray(t_MxK, np.float64)
  w = np.asarray(weights_M, np.float64)
  q = check_distribution(prior_K, "the proposer's prior")
  if not lam > 0:
    raise ConfigError(f"the KL weight lambda must be > 0, got {lam!r}.")
  caps = check_caps(caps_K, len(q))
  x = capped_tilt(np.log(np.maximum(q, 1e-300)), caps)
  for _ in range(iters):
    g = t.T @ (w * np.exp(t @ x))
    new = capped_tilt(np.log(np.maximum(q, 1e-300)) - g / lam, caps)
    step = (1 - damping) * new + damping * x
    if np.abs(step - x).max() < tol:
      return step
    x = step
  return x
