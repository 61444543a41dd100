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

import gin
import jax
import jax.numpy as jnp
import optax

from doremi_jax.config import ConfigError, check_number
from doremi_jax.mixers import base

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


# --------------------------------------------------------------------------
# The mixer (issue 14's interface, `mixers.base`)


def record(curve, n_K, loss_K, ok_K, capacity: int):
  """Adds one step to the bounded loss curve (`init_curve`): steps are
  averaged in windows of `stride` steps, one row per window; when the
  buffer is full, neighbouring rows are averaged in pairs and the stride
  doubles. So the curve always covers the whole run in at most `capacity`
  rows, each the mean of the (sequences seen, loss) of its steps (a box
  smoothing; the authors smooth with Savitzky-Golay), and a fit costs the
  same at step 1e3 and 1e6. A row counts for a domain (`ok`) when every
  step in it had seen the domain."""
  acc_n = curve["acc_n"] + n_K
  acc_loss = curve["acc_loss"] + loss_K
  acc_ok = curve["acc_ok"] & ok_K
  filled = curve["in_window"] + 1
  close = filled == curve["stride"]

  def closed(c):
    row = c["rows"]
    c = dict(c, n=c["n"].at[row].set(acc_n / filled.astype(jnp.float32)),
             loss=c["loss"].at[row].set(acc_loss / filled.astype(jnp.float32)),
             ok=c["ok"].at[row].set(acc_ok), rows=row + 1)

    def compact(c):
      half = capacity // 2

      def pair(x, f):
        return jnp.concatenate([f(x[0::2], x[1::2]), jnp.zeros_like(x[:half])])

      def mean(a, b):
        return (a + b) / 2
      return dict(c, n=pair(c["n"], mean), loss=pair(c["loss"], mean),
                  ok=pair(c["ok"], jnp.logical_and), rows=jnp.asarray(half, jnp.int32),
                  stride=c["stride"] * 2)
    return jax.lax.cond(c["rows"] == capacity, compact, lambda c: c, c)

  fresh = dict(curve, acc_n=acc_n, acc_loss=acc_loss, acc_ok=acc_ok, in_window=filled)
  reset = dict(closed(fresh), acc_n=jnp.zeros_like(acc_n), acc_loss=jnp.zeros_like(acc_loss),
               acc_ok=jnp.ones_like(acc_ok), in_window=jnp.asarray(0, jnp.int32))
  return jax.tree.map(lambda a, b: jnp.where(close, a, b), reset, fresh)


def init_curve(num_domains: int, capacity: int):
  k, c = num_domains, capacity
  return {"n": jnp.ones((c, k), jnp.float32), "loss": jnp.ones((c, k), jnp.float32),
          "ok": jnp.zeros((c, k), bool), "rows": jnp.asarray(0, jnp.int32),
          "stride": jnp.asarray(1, jnp.int32), "in_window": jnp.asarray(0, jnp.int32),
          "acc_n": jnp.zeros(k, jnp.float32), "acc_loss": jnp.zeros(k, jnp.float32),
          "acc_ok": jnp.ones(k, bool)}


@base.register(prior="proportional")
@gin.configurable
class ADOMixer(base.Mixer):
  """ADO in the main run. Every step records each domain's sequences seen
  and its training loss (an absent domain repeats its last loss) in a
  bounded curve of at most `curve_points` window-averaged rows (`record`);
  after `ignore_steps`, every `update_interval` steps the laws are refitted
  on that curve (inside the step, under `lax.cond`); from the first fit
  on, `policy` runs every step and its pi are the rates (the prior before).
  The curve's window averages stand in for the authors' Savitzky-Golay
  smoothing, and the Huber loss on log loss keeps the fit robust to the
  per-batch noise. The defaults are the authors' (1000 and 1000 steps,
  floor 0.01, decays 0.9, e >= 0.5)."""
  name = "ado"

  def __init__(self, num_domains: int, num_steps: int, ignore_steps: int = 1000,
               update_interval: int = 1000, floor: float = 0.01, h_decay: float = 0.9,
               pi_decay: float = 0.9, e_min: Optional[float] = 0.5, fit_iters: int = 200,
               curve_points: int = 256):
    check_number("ADOMixer.ignore_steps", ignore_steps, integer=True, low=1)
    check_number("ADOMixer.update_interval", update_interval, integer=True, low=1)
    check_number("ADOMixer.floor", floor, low=0, high=1.0 / num_domains)
    check_number("ADOMixer.h_decay", h_decay, low=0, high=1, high_open=True)
    check_number("ADOMixer.pi_decay", pi_decay, low=0, high=1, high_open=True)
    check_number("ADOMixer.fit_iters", fit_iters, integer=True, low=1)
    check_number("ADOMixer.curve_points", curve_points, integer=True, low=8)
    if curve_points % 2:
      raise ConfigError(f"ADOMixer.curve_points must be even, got {curve_points}.")
    if e_min is not None:
      check_number("ADOMixer.e_min", e_min)
    if ignore_steps >= num_steps:
      raise ConfigError(f"ADOMixer.ignore_steps = {ignore_steps} is not shorter than the run "
                        f"({num_steps} steps): ADO would never fit its laws. Lower it.")
    super().__init__(num_domains, dict(ignore_steps=ignore_steps,
                                       update_interval=update_interval, floor=floor,
                                       h_decay=h_decay, pi_decay=pi_decay, e_min=e_min,
                                       fit_iters=fit_iters, curve_points=curve_points))

  def init(self, prior_K):
    k = self.num_domains
    prior_K = jnp.asarray(prior_K, jnp.float32)
    zeros = jnp.zeros(k, jnp.float32)
    return {"n": zeros, "last_loss": zeros, "seen": jnp.zeros(k, bool),
            "curve": init_curve(k, self.hyper["curve_points"]),
            "laws": Laws(zeros, zeros, zeros), "fitted": jnp.asarray(False),
            "policy": init_policy(prior_K), "pi": prior_K, "prior": prior_K}

  def update(self, state, signals, step):
    h = self.hyper
    n = state["n"] + signals.rows_K
    seen = state["seen"] | signals.observed_K
    last = jnp.where(signals.observed_K, signals.loss_K, state["last_loss"])
    curve = record(state["curve"], n, jnp.where(seen, last, 1.0), seen & (n > 0),
                   h["curve_points"])
    done = step + 1
    refit = (done >= h["ignore_steps"]) & ((done - h["ignore_steps"]) % h["update_interval"] == 0)

    def fit(_):
      valid = jnp.arange(h["curve_points"])[:, None] < curve["rows"]
      w = (curve["ok"] & valid).T.astype(jnp.float32)
      return fit_laws(jnp.maximum(curve["n"].T, 1.0), jnp.maximum(curve["loss"].T, 1e-6), w,
                      iters=h["fit_iters"], e_min=h["e_min"])
    laws = jax.lax.cond(refit, fit, lambda _: state["laws"], None)
    fitted = state["fitted"] | refit
    shares = signals.rows_K / jnp.maximum(signals.rows_K.sum(), 1.0)
    pi, pol = policy(state["policy"], laws, jnp.maximum(n, 1.0), state["prior"], shares,
                     h["floor"], h["h_decay"], h["pi_decay"])
    return {"n": n, "last_loss": last, "seen": seen, "curve": curve, "laws": laws,
            "fitted": fitted, "policy": base.where_tree(fitted, pol, state["policy"]),
            "pi": jnp.where(fitted, pi, state["pi"]), "prior": state["prior"]}

  def rates(self, state):
    return state["pi"]

  def report(self, state):
    laws = state["laws"]
    return {"law_e": laws.e, "law_a": laws.a, "law_alpha": laws.alpha, "sequences": state["n"]}
