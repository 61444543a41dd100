"""ADO: adaptive data optimization (Jiang et al., "Adaptive Data
Optimization: Dynamic Sample Selection with Scaling Laws", ICLR 2025,
arXiv 2410.11820): per-domain scaling laws of loss against data seen, fitted
online, and a policy that favours the domains whose loss is still falling.
It runs as the authors' code does (yidingjiang/ado@bc3d8d0,
src/data_selectors/ado.py, "theirs" below) except where this says not.

Scaling law of domain k (Eq. 1), n the sequences seen:

  L_hat_k(n) = exp(e_k) + exp(a_k) n^(-alpha_k)

n is, by default (`same_step_size`, their `use_same_step_size=True`), the
sequences seen of all domains together, the same n for every domain;
`same_step_size=False` counts each domain's own.

What is fitted (theirs, `compute_scaling_law_params`): the curve of every
step's per-domain training loss (an absent domain repeats its last recorded
value; absent from the first step, it takes the batch's mean, the domains'
losses weighted by their rows), smoothed by Savitzky-Golay over the whole
run so far (scipy's `savgol_filter`, window 101, order 3, its 'interp'
edges: `savgol_window`, `savgol_order`), then every `fit_stride`-th (10)
step from step `ignore_steps` on: the first `ignore_steps` steps are
smoothed with the rest but not fitted. The jitted state holds this bounded:
a ring of the last `savgol_window` raw losses and the smoothed loss and n at
the fit steps only (`record`). A fit step's smoothed value is final once
`savgol_window // 2` later steps are in; those nearer the end are rewritten
every step from the ring by the end window's polynomial, so at every fit the
points are `savgol_filter` of the whole curve at the fit steps.

How (`fit_laws`): a Huber loss (delta 1e-3) on log L, L-BFGS from a grid
of starts, keeping the fit with the lowest objective, and penalties keeping
alpha in [0.001, 0.8], a <= 6.5 and e >= 0.5. Ours differ in form, not in
aim (documented deviations, tested by the fit's own tests): 27 starts
(`GRID`) where theirs are 512 (a in -2..5, e in -2..1.5 by 0.5, alpha in
0..0.7 by 0.1); optax's L-BFGS for `fit_iters` (200) iterations where
theirs is jaxopt's (at most 200, tol 1e-5); quadratic penalties weighted
`PENALTY` where theirs are linear with weight 1. e >= 0.5 means a loss
floor of at least 1.65 nats, which suits Pile-scale losses but not a toy
corpus: `e_min` sets it (None drops it).

When: a refit at every step s >= `ignore_steps` with s % `update_interval`
== 0 (theirs: s >= start_step, their start_step taken as `ignore_steps`:
it is <= it in their configs, and an earlier fit would have no points).
With the defaults the first fit, at step 1000, has one point, as theirs.
A fit with a non-finite parameter is dropped, the laws before it kept
(their `check_valid`).

Policy (`policy`, every step from the first fit on):

  s_k   = max(alpha_k, 0.05) (L_hat_k(n_k) - exp(e_k)) / n_k    (the rate
          at which domain k's loss is still falling)
  rho_k ~ s_k mu_k h_k^0.5, floored at 0.01 and renormalised (mu the prior,
          the token shares; h an EMA of the realised batch shares, 0.9 old
          and 0.1 new, from the first step on)
  pi_t  = 0.9 pibar_{t-1} + 0.1 rho_t
  pibar_t = (1 - 1/(t+1)) pibar_{t-1} + rho_t / (t+1),  t the global step

with pibar = pi = mu before the first fit. pibar is theirs: a running
average over the global step, so the prior's steps before the first fit
keep their weight after it (mu's share of pibar_t is s0 / (t + 1) after a
first fit at step s0). (The paper's text
updates h from pi and floors pi; this follows their code, whose latest
commit also changed (h (1 - h))^0.5 to h^0.5.)

A domain whose loss is flat (noise) has s near 0 and sinks towards the
floor slowly: from a prior of 0.181, pi is 0.164 at a first fit at step
1000 and pibar 0.095 by step 2000. A domain already learnt drops too.

Other differences: the rates reach the loader `base.DELAY` steps later
than theirs (every mixer's); a domain's loss is the mean over its tokens
(`Signals.loss_K`), theirs the mean of its examples' losses; n is floored
at 1 and the smoothed loss at 1e-6 before the fit's logs (theirs would make
a NaN fit and keep the old laws).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
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
  h_K: jax.Array       # EMA of the realised batch shares (every step)
  pibar_K: jax.Array   # running average of rho over the global step


def init_policy(prior_K) -> PolicyState:
  prior_K = jnp.asarray(prior_K, jnp.float32)
  return PolicyState(h_K=prior_K, pibar_K=prior_K)


def track_shares(state: PolicyState, batch_shares_K, h_decay: float = 0.9) -> PolicyState:
  """h after a batch with realised shares `batch_shares_K` (every step, the
  first fit or not)."""
  return state._replace(h_K=h_decay * state.h_K + (1 - h_decay) * batch_shares_K)


def policy(state: PolicyState, laws: Laws, n_K, prior_K, step, floor: float = 0.01,
           pi_decay: float = 0.9):
  """One policy step at global step `step` (0-based), after `track_shares`:
  returns (pi_K, new state). `n_K` the sequences seen so far."""
  reducible_K = jnp.exp(laws.a - laws.alpha * jnp.log(n_K))    # L_hat - exp(e)
  s_K = jnp.maximum(laws.alpha, 0.05) * reducible_K / n_K
  rho_K = s_K * prior_K * jnp.sqrt(state.h_K)
  rho_K = rho_K / rho_K.sum()
  rho_K = jnp.maximum(rho_K, floor)
  rho_K = rho_K / rho_K.sum()
  pi_K = pi_decay * state.pibar_K + (1 - pi_decay) * rho_K
  w = 1.0 / (jnp.asarray(step, jnp.float32) + 1.0)
  return pi_K, state._replace(pibar_K=(1 - w) * state.pibar_K + w * rho_K)


# --------------------------------------------------------------------------
# The smoothed curve


def savgol_matrix(window: int, order: int) -> np.ndarray:
  """[window, window] fp32: row p maps `window` consecutive values to the
  value at position p of their least-squares polynomial of degree `order`
  (row window // 2 is scipy.signal.savgol_coeffs(window, order); the rows
  before and after it are savgol_filter's 'interp' edges)."""
  x = np.arange(window, dtype=np.float64) - window // 2
  v = x[:, None] ** np.arange(order + 1)
  return (v @ np.linalg.pinv(v)).astype(np.float32)


def num_points(num_steps: int, ignore_steps: int, stride: int) -> int:
  """The fit steps of a run: ignore_steps, ignore_steps + stride, ..."""
  return max(0, (num_steps - 1 - ignore_steps) // stride + 1)


def init_curve(num_domains: int, points: int, window: int):
  k = num_domains
  return {"ring": jnp.zeros((window, k), jnp.float32),
          "n": jnp.ones((points, k), jnp.float32), "loss": jnp.ones((points, k), jnp.float32)}


def record(curve, step, n_K, loss_K, hat, ignore_steps: int, stride: int):
  """Adds step `step`'s loss (and n, at a fit step) to the curve: the ring
  of the last W raw losses shifts by one, and every fit step among the
  ring's last W // 2 + 1 (all W at step W - 1, the first full window)
  gets its value in the polynomial of the ring (`hat`, `savgol_matrix`).
  After step s >= W - 1 the fit steps <= s hold savgol_filter(curve[:s+1],
  W, order)'s values at them."""
  w, half, cap = hat.shape[0], hat.shape[0] // 2, curve["n"].shape[0]
  ring = jnp.concatenate([curve["ring"][1:], loss_K[None]])

  def point(t):   # the fit point of step t, or `cap` (dropped) if none
    on = (t >= ignore_steps) & ((t - ignore_steps) % stride == 0)
    return jnp.where(on, (t - ignore_steps) // stride, cap)

  n = curve["n"].at[point(step)].set(n_K, mode="drop")
  t_W = step - (w - 1) + jnp.arange(w)
  fresh = (step >= w - 1) & ((t_W >= step - half) | (step == w - 1))
  smooth_WxK = jnp.matmul(jnp.asarray(hat), ring, precision=jax.lax.Precision.HIGHEST)
  loss = curve["loss"].at[jnp.where(fresh, point(t_W), cap)].set(smooth_WxK, mode="drop")
  return {"ring": ring, "n": n, "loss": loss}


def fit_points(curve, step, ignore_steps: int, stride: int):
  """(n_KxJ, loss_KxJ, weight_KxJ) for `fit_laws` at step `step`: the fit
  steps <= step weigh 1, the rest of the buffer 0."""
  j = jnp.arange(curve["n"].shape[0])
  valid_J = ignore_steps + stride * j <= step
  weight_KxJ = jnp.broadcast_to(valid_J, curve["n"].shape[::-1]).astype(jnp.float32)
  return jnp.maximum(curve["n"].T, 1.0), jnp.maximum(curve["loss"].T, 1e-6), weight_KxJ


# --------------------------------------------------------------------------
# The mixer (issue 14's interface, `mixers.base`)


def first_fit(ignore_steps: int, update_interval: int) -> int:
  """The step of the first refit: the first multiple of update_interval at
  or after ignore_steps."""
  return -(-ignore_steps // update_interval) * update_interval


@base.register(prior="proportional")
@gin.configurable
class ADOMixer(base.Mixer):
  """ADO in the main run (the module docstring says what it computes and
  where it differs from the authors). Every step records each domain's
  training loss and n (`record`), moves h and, from the first fit on, runs
  `policy`, whose pi are the rates (the prior before); the refits run inside
  the step under `lax.cond`. The defaults are the authors' (ignore 1000
  steps, refit every 1000, floor 0.01, decays 0.9, e >= 0.5, one n for all
  domains, Savitzky-Golay window 101 and order 3, every 10th step fitted)."""
  name = "ado"

  def __init__(self, num_domains: int, num_steps: int, ignore_steps: int = 1000,
               update_interval: int = 1000, floor: float = 0.01, h_decay: float = 0.9,
               pi_decay: float = 0.9, e_min: Optional[float] = 0.5, fit_iters: int = 200,
               same_step_size: bool = True, savgol_window: int = 101, savgol_order: int = 3,
               fit_stride: int = 10):
    check_number("ADOMixer.ignore_steps", ignore_steps, integer=True, low=0)
    check_number("ADOMixer.update_interval", update_interval, integer=True, low=1)
    check_number("ADOMixer.floor", floor, low=0, high=1.0 / num_domains)
    check_number("ADOMixer.h_decay", h_decay, low=0, high=1, high_open=True)
    check_number("ADOMixer.pi_decay", pi_decay, low=0, high=1, high_open=True)
    check_number("ADOMixer.fit_iters", fit_iters, integer=True, low=1)
    check_number("ADOMixer.savgol_window", savgol_window, integer=True, low=1)
    if savgol_window % 2 == 0:
      raise ConfigError(f"ADOMixer.savgol_window must be odd, got {savgol_window}.")
    check_number("ADOMixer.savgol_order", savgol_order, integer=True, low=0,
                 high=savgol_window - 1)
    check_number("ADOMixer.fit_stride", fit_stride, integer=True, low=1)
    if not isinstance(same_step_size, bool):
      raise ConfigError(f"ADOMixer.same_step_size must be True or False, got "
                        f"{same_step_size!r}.")
    if e_min is not None:
      check_number("ADOMixer.e_min", e_min)
    first = first_fit(ignore_steps, update_interval)
    if first >= num_steps:
      raise ConfigError(f"ADOMixer's first fit would be at step {first} (the first multiple of "
                        f"update_interval = {update_interval} from ignore_steps = "
                        f"{ignore_steps}), not within the run ({num_steps} steps): ADO would "
                        "never fit its laws. Lower them.")
    if first + 1 < savgol_window:
      raise ConfigError(f"ADOMixer's first fit, at step {first}, would smooth {first + 1} steps "
                        f"with a Savitzky-Golay window of {savgol_window}, which the authors' "
                        "scipy.signal.savgol_filter refuses: lower ADOMixer.savgol_window or "
                        "raise ADOMixer.ignore_steps.")
    super().__init__(num_domains, dict(
        ignore_steps=ignore_steps, update_interval=update_interval, floor=floor,
        h_decay=h_decay, pi_decay=pi_decay, e_min=e_min, fit_iters=fit_iters,
        same_step_size=same_step_size, savgol_window=savgol_window,
        savgol_order=savgol_order, fit_stride=fit_stride))
    self.points = num_points(num_steps, ignore_steps, fit_stride)
    self.hat = savgol_matrix(savgol_window, savgol_order)

  def init(self, prior_K):
    k = self.num_domains
    prior_K = jnp.asarray(prior_K, jnp.float32)
    zeros = jnp.zeros(k, jnp.float32)
    return {"n": zeros, "last_loss": zeros,
            "curve": init_curve(k, self.points, self.hyper["savgol_window"]),
            "laws": Laws(zeros, zeros, zeros), "fitted": jnp.asarray(False),
            "policy": init_policy(prior_K), "pi": prior_K, "prior": prior_K}

  def update(self, state, signals, step):
    h = self.hyper
    n = state["n"] + signals.rows_K
    n_law = jnp.full_like(n, n.sum()) if h["same_step_size"] else n
    rows = jnp.maximum(signals.rows_K.sum(), 1.0)
    batch_mean = (signals.rows_K * signals.loss_K).sum() / rows
    loss = jnp.where(signals.observed_K, signals.loss_K,
                     jnp.where(step > 0, state["last_loss"], batch_mean))
    curve = record(state["curve"], step, n_law, loss, self.hat, h["ignore_steps"],
                   h["fit_stride"])
    refit = (step >= h["ignore_steps"]) & (step % h["update_interval"] == 0)

    def fit(_):
      laws = fit_laws(*fit_points(curve, step, h["ignore_steps"], h["fit_stride"]),
                      iters=h["fit_iters"], e_min=h["e_min"])
      return laws, jnp.all(jnp.isfinite(jnp.stack(laws)))
    laws, ok = jax.lax.cond(refit, fit, lambda _: (state["laws"], jnp.asarray(False)), None)
    laws = base.where_tree(ok, laws, state["laws"])
    fitted = state["fitted"] | ok
    pol = track_shares(state["policy"], signals.rows_K / rows, h["h_decay"])
    pi, moved = policy(pol, laws, jnp.maximum(n_law, 1.0), state["prior"], step, h["floor"],
                       h["pi_decay"])
    return {"n": n, "last_loss": loss, "curve": curve, "laws": laws, "fitted": fitted,
            "policy": base.where_tree(fitted, moved, pol),
            "pi": jnp.where(fitted, pi, state["pi"]), "prior": state["prior"]}

  def rates(self, state):
    return state["pi"]

  def report(self, state):
    laws = state["laws"]
    return {"law_e": laws.e, "law_a": laws.a, "law_alpha": laws.alpha, "sequences": state["n"]}
