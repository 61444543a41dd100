"""Aioli (Chen, Hu et al., "Aioli: A Unified Optimization Framework for
Language Model Data Mixing", ICLR 2025, arXiv 2411.05735): online estimates
of a linear mixing law and an exponentiated-gradient step on the mixture.

The mixing law says the held-out loss of domain i falls, over a short
stretch of training on mixture p, by about sum_j A[i, j] p_j. Every round
(`update_steps` steps) Aioli estimates A with LearnParams (Alg. 2):

  for `lp_rounds` random orders of the K domains, for each domain j:
    train `lp_steps` steps on the skewed mixture m^j (`one_hot_factor` on j,
    (1 - one_hot_factor)/(K - 1) on every other domain), evaluate the
    held-out losses l, and add the decrease to column j:
    G[:, j] += l_before - l_after
  G /= lp_rounds;  A[i, :] = W^-1 G[i, :]  with  W[j, :] = m^j

(`accumulate`, `estimate_matrix`), normalises A (`normalize`: subtract the
whole matrix's minimum when it is negative, divide by its sum; the authors'
`--aioli_normalize_A`, used in all their runs) and steps the mixture
(`step_weights`):

  without smoothing:  p <- p * exp(eta * sum_i A[i, :]),  renormalised
  with smoothing g:   Abar <- (1 - g) A + g Abar  (Abar = A in the first
                      round);  p = softmax(eta * sum_i Abar[i, :]), rebuilt
                      from uniform every round, so max p / min p <= e^eta

The authors' README example: `lp_rounds` 4, `lp_steps` 4, eta 0.2,
`update_steps` 250, `one_hot_factor` 0.625, smoothing 0.1 (its advice: try
without smoothing first); their 7-domain run: eta 1, smoothing 0.1,
`update_steps` 200, `lp_rounds` 2, `lp_steps` 10, `one_hot_factor` 0.75.

Training on noise or on an already-learnt domain lowers no held-out loss,
so Aioli is expected to down-weight both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def burst_mixtures(num_domains: int, one_hot_factor: float):
  """W [K, K]: row j is the mixture LearnParams trains on for domain j."""
  k = num_domains
  off = (1.0 - one_hot_factor) / (k - 1)
  return jnp.full((k, k), off, jnp.float32) + (one_hot_factor - off) * jnp.eye(k)


def accumulate(g_KxK, j, loss_before_K, loss_after_K):
  """G[:, j] += l_before - l_after: the held-out losses' decrease over a
  burst on mixture m^j, added to column j."""
  return g_KxK.at[:, j].add(loss_before_K - loss_after_K)


def estimate_matrix(g_KxK, lp_rounds: int, one_hot_factor: float):
  """A with A[i, :] = W^-1 (G[i, :] / lp_rounds): G[i, j] (the decrease of
  domain i's loss after a burst on m^j) is modelled as sum_k A[i, k] m^j_k."""
  w_KxK = burst_mixtures(g_KxK.shape[0], one_hot_factor)
  return jnp.linalg.solve(w_KxK, (g_KxK / lp_rounds).T).T


def normalize(a_KxK):
  """Shift by the whole matrix's minimum when it is negative, then divide
  by the sum."""
  a_KxK = a_KxK - jnp.minimum(a_KxK.min(), 0.0)
  return a_KxK / a_KxK.sum()


def step_weights(weights_K, a_KxK, eta: float, smoothing=None, abar_KxK=None):
  """Returns (new weights, new Abar). `smoothing=None`: the multiplicative
  step from `weights_K`; else the smoothed matrix's softmax (`abar_KxK` None
  in the first round)."""
  if smoothing is None:
    w = weights_K * jnp.exp(eta * a_KxK.sum(axis=0))
    return w / w.sum(), a_KxK
  abar = a_KxK if abar_KxK is None else (1 - smoothing) * a_KxK + smoothing * abar_KxK
  return jax.nn.softmax(eta * abar.sum(axis=0)), abar
