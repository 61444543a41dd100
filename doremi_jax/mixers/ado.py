"""ADO: adaptive data optimization (Jiang et al., "Adaptive Data
Optimization: Dynamic Sample Selection with Scaling Laws", ICLR 2025,
arXiv 2410.11820): per-domain scaling laws of loss against data seen, fitted
online, and a policy that favours the domains whose loss is still falling.

Scaling law of domain k (Eq. 1), n its sequences seen:

  L_hat_k(n) = exp(e_k) + exp(a_k) n^(-alpha_k)

fitted (`fit_laws`) to the loss curve by a Huber loss (delta 1e-3) on log
L, with L-BFGS from a grid of starting points, keeping the fit with the
lowest objective, and quadratic penalties that keep alpha in [0.001, 0.8],
a <= 6.5 and e >= 0.5 (the authors' bounds; the penalty's weight,
`PENALTY`, is ours: their code's exact form was not checked). e >= 0.5 means
a loss floor of at least 1.65 nats, which suits Pile-scale losses but not a
toy corpus: `e_min` sets it (None drops it).

Policy (`policy`, every step once laws are fitted):

  s_k   = max(alpha_k, 0.05) (L_hat_k(n_k) - exp(e_k)) / n_k    (the rate
          at which domain k's loss is still falling)
  rho_k ~ s_k mu_k h_k^0.5, floored at 0.01 and renormalised (mu the prior,
          the token shares; h an EMA of the realised batch shares, 0.9 old
          and 0.1 new)
  pi_t  = 0.9 pibar_{t-1} + 0.1 rho,  pibar the running mean of rho

and pi = mu before the first fit. (The paper's text updates h from pi and
floors pi; this follows the authors' code, which also changed
(h (1 - h))^0.5 to h^0.5 in its latest commit.)

A domain whose loss is flat (noise) has s near 0 and sinks to the floor
slowly (pibar averages from the start); a domain already learnt drops too.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

PENALTY = 1e3
GRID = tuple(itertools.product((-1.0, 0.5, 1.5), (0.0, 2.0, 4.0), (0.1, 0.4, 0.7)))


class Laws(NamedTuple):
  """Per-domain fitted (e, a, alpha), each [K]."""
  e: jax.Array
  a: jax.Array
  alpha: jax.Array


def predict(laws: Laws, n_K):
  """L_hat(n) = exp(e) + exp(a) n^-alpha."""
  return jnp.exp(laws.e) + jnp.exp(laws.a) * n_K ** (-laws.alpha)


def _objective(params_3, log_n_N, log_y_N, weight_N, delta, e_min, alpha_range, a_max):
  e, a, alpha = params_3[0], params_3[1], params_3[2]
  r = jnp.logaddexp(e, a - alpha * log_n_N) - log_y_N
  fit = (weight_N * optax.losses.huber_loss(r, delta=delta)).sum()
  pen = jax.nn.relu(alpha_range[0] - alpha) ** 2 + jax.nn.relu(alpha - alpha_range[1]) ** 2
  pen = pen + jax.nn.relu(a - a_max) ** 2
  if e_min is not None:
    pen = pen + jax.nn.relu(e_min - e) ** 2
  return fit + PENALTY * pen


def fit_law(n_N, loss_N, weight_N=None, *, iters: int = 200, delta: float = 1e-3,
            e_min: Optional[float] = 0.5, alpha_range=(0.001, 0.8), a_max: float = 6.5):
  """(e, a, alpha) of one loss curve (`loss_N` at `n_N` > 0; `weight_N` 0
  masks points out), the best of L-BFGS runs from every start in GRID."""
  weight_N = jnp.ones_like(loss_N) if weight_N is None else weight_N
  f = lambda p: _objective(p, jnp.log(n_N), jnp.log(loss_N), weight_N, delta, e_min,
                           alpha_range, a_max)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(f)

  def run(p0):
    def body(_, carry):
      p, state = carry
      value, grad = value_and_grad(p, state=state)
      updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=f)
      return optax.apply_updates(p, updates), state
    p, _ = jax.lax.fori_loop(0, iters, body, (p0, opt.init(p0)))
    return p, f(p)

  params_Sx3, values_S = jax.vmap(run)(jnp.asarray(GRID, jnp.float32))
  values_S = jnp.where(jnp.isfinite(values_S), values_S, jnp.inf)
  return params_Sx3[jnp.argmin(values_S)]


def fit_laws(n_KxN, loss_KxN, weight_KxN=None, **kw) -> Laws:
  """`fit_law` for every domain (rows)."""
  weight_KxN = jnp.ones_like(loss_KxN) if weight_KxN is None else weight_KxN
  p_Kx3 = jax.vmap(lambda n, y, w: fit_law(n, y, w, **kw))(n_KxN, loss_KxN, weight_KxN)
  return Laws(p_Kx3[:, 0], p_Kx3[:, 1], p_Kx3[:, 2])


class PolicyState(NamedTuple):
  h_K: jax.Array       # EMA of the realised batch shares
  pibar_K: jax.Array   # running mean of rho
  count: jax.Array     # policy updates so far (for the running mean), int32


def init_policy(prior_K) -> PolicyState:
  prior_K = jnp.asarray(prior_K, jnp.float32)
  return PolicyState(h_K=prior_K, pibar_K=prior_K, count=jnp.asarray(0, jnp.int32))


def policy(state: PolicyState, laws: Laws, n_K, prior_K, batch_shares_K,
           floor: float = 0.01, h_decay: float = 0.9, pi_decay: float = 0.9):
  """One policy step: returns (pi_K, new state). `n_K` the sequences of each
  domain seen so far, `batch_shares_K` the last batch's realised shares."""
  h_K = h_decay * state.h_K + (1 - h_decay) * batch_shares_K
  s_K = jnp.maximum(laws.alpha, 0.05) * (predict(laws, n_K) - jnp.exp(laws.e)) / n_K
  rho_K = s_K * prior_K * jnp.sqrt(h_K)
  rho_K = rho_K / rho_K.sum()
  rho_K = jnp.maximum(rho_K, floor)
  rho_K = rho_K / rho_K.sum()
  count = state.count + 1
  pi_K = pi_decay * state.pibar_K + (1 - pi_decay) * rho_K
  pibar_K = state.pibar_K + (rho_K - state.pibar_K) / count
  return pi_K, PolicyState(h_K=h_K, pibar_K=pibar_K, count=count)
