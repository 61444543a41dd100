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

import gin
import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax.config import ConfigError, check_number
from doremi_jax.mixers import base


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


# --------------------------------------------------------------------------
# The mixer (issue 14's interface, `mixers.base`): host-orchestrated rounds


@base.register(prior="uniform")
@gin.configurable
class AioliMixer(base.Mixer):
  """Aioli in the main run. Round r covers steps [r T, (r + 1) T), T =
  `update_steps`. It starts with LearnParams: `lp_rounds` random orders
  of the domains (seeded by the run's seed and r), `lp_steps` real training
  steps on each burst mixture m^j, and a held-out evaluation (the `tune`
  split; everything reported is on `test`) before the first burst and after every burst. Then A is
  estimated and normalised, the mixture steps (`step_weights`), and the
  rest of the round trains on it. A round with fewer than T steps left
  skips LearnParams and keeps the mixture. Defaults: the authors' README
  (4 rounds of 4 steps, eta 0.2, T 250, one-hot factor 0.625, smoothing
  0.1).

  This runs on the host between steps (`on_step_done`), not in the jitted
  step: its signal is extra evaluation passes, not the step's losses. The
  evaluations' cost is counted (`cost`)."""
  name = "aioli"
  host_driven = True

  def __init__(self, num_domains: int, num_steps: int, update_steps: int = 250,
               lp_rounds: int = 4, lp_steps: int = 4, eta: float = 0.2,
               one_hot_factor: float = 0.625, smoothing=0.1):
    for name, v in (("update_steps", update_steps), ("lp_rounds", lp_rounds),
                    ("lp_steps", lp_steps)):
      check_number(f"AioliMixer.{name}", v, integer=True, low=1)
    check_number("AioliMixer.eta", eta, low=0, low_open=True)
    check_number("AioliMixer.one_hot_factor", one_hot_factor, low=1.0 / num_domains,
                 high=1, low_open=True, high_open=True)
    if smoothing is not None:
      check_number("AioliMixer.smoothing", smoothing, low=0, high=1, high_open=True)
    lp = lp_rounds * num_domains * lp_steps
    if lp >= update_steps or lp > num_steps:
      raise ConfigError(
          f"AioliMixer: LearnParams takes lp_rounds x domains x lp_steps = {lp_rounds} x "
          f"{num_domains} x {lp_steps} = {lp} steps, which does not fit in a round of "
          f"update_steps = {update_steps} (and a run of {num_steps}). Raise update_steps or "
          "lower lp_rounds / lp_steps.")
    super().__init__(num_domains, dict(update_steps=update_steps, lp_rounds=lp_rounds,
                                       lp_steps=lp_steps, eta=eta, one_hot_factor=one_hot_factor,
                                       smoothing=smoothing))
    self.num_steps, self.lp_len = num_steps, lp
    self.seed = 0   # the run's seed, set by the stage: the burst orders' randomness

  def init(self, prior_K):
    k = self.num_domains
    return {"g": jnp.zeros((k, k), jnp.float32), "abar": jnp.zeros((k, k), jnp.float32),
            "has_abar": jnp.asarray(False), "weights": jnp.asarray(prior_K, jnp.float32),
            "last_loss": jnp.zeros(k, jnp.float32), "a_colsum": jnp.zeros(k, jnp.float32),
            "evaluations": jnp.zeros((), jnp.int32)}

  def update(self, state, signals, step):
    return state

  def rates(self, state):
    return state["weights"]

  def report(self, state):
    return {"a_colsum": state["a_colsum"], "g_colsum": state["g"].sum(axis=0)}

  # host side ---------------------------------------------------------------

  def order(self, round_: int):
    """The burst domains of round `round_`, in training order."""
    return [int(j) for r in range(self.hyper["lp_rounds"]) for j in
            np.random.default_rng([self.seed, 0x41696F, round_, r]).permutation(
                self.num_domains)]

  def has_learnparams(self, round_: int) -> bool:
    return round_ * self.hyper["update_steps"] + self.lp_len <= self.num_steps

  def is_event(self, done: int) -> bool:
    """Whether `on_step_done(done, ...)` has anything to do."""
    t, lp = self.hyper["update_steps"], self.hyper["lp_steps"]
    into = done % t
    return done < self.num_steps and (into == 0 or (into <= self.lp_len and into % lp == 0))

  def on_step_done(self, done: int, state, held_out_losses):
    """After `done` steps (0 before the first): evaluates when LearnParams
    needs it (`held_out_losses()` -> [K]) and updates the state. Returns
    (state, {step: rates} for the steps whose rates are now known, the
    evaluated losses or None)."""
    h, k = self.hyper, self.num_domains
    t, lp = h["update_steps"], h["lp_steps"]
    r, into = divmod(done, t)
    state = jax.tree.map(jnp.asarray, state)
    end = min((r + 1) * t, self.num_steps)
    if done >= self.num_steps:
      return state, {}, None
    w_KxK = np.asarray(burst_mixtures(k, h["one_hot_factor"]))
    if into == 0 and not self.has_learnparams(r):
      return state, {s: np.asarray(state["weights"]) for s in range(done, end)}, None
    if into == 0 or (into <= self.lp_len and into % lp == 0):
      losses = jnp.asarray(held_out_losses(), jnp.float32)
      state = dict(state, evaluations=state["evaluations"] + 1)
    if into == 0:
      order = self.order(r)
      sched = {done + b * lp + i: w_KxK[j] for b, j in enumerate(order) for i in range(lp)}
      return dict(state, g=jnp.zeros((k, k), jnp.float32), last_loss=losses), sched, losses
    if into > self.lp_len or into % lp:
      return state, {}, None
    j = self.order(r)[into // lp - 1]
    g = accumulate(state["g"], j, state["last_loss"], losses)
    state = dict(state, g=g, last_loss=losses)
    if into < self.lp_len:
      return state, {}, losses
    a = normalize(estimate_matrix(g, h["lp_rounds"], h["one_hot_factor"]))
    if h["smoothing"] is None:
      weights, abar = step_weights(state["weights"], a, h["eta"])
    else:   # (the first round's previous Abar is A itself: Abar = A)
      weights, abar = step_weights(state["weights"], a, h["eta"], h["smoothing"],
                                   jnp.where(state["has_abar"], state["abar"], a))
    state = dict(state, weights=weights, abar=abar, has_abar=jnp.asarray(True),
                 a_colsum=a.sum(axis=0))
    return state, {s: np.asarray(weights) for s in range(done, end)}, losses

  def cost(self, state, tokens_per_eval: int, tokens_per_step: int) -> dict:
    """The evaluations' cost: forward tokens, and as a fraction of the
    training compute (a forward is a third of a training token's FLOPs)."""
    evaluations = int(state["evaluations"])
    eval_tokens = evaluations * tokens_per_eval
    burst_steps = sum(self.lp_len for r in range(-(-self.num_steps // self.hyper["update_steps"]))
                      if self.has_learnparams(r))
    return {"evaluations": evaluations, "eval_tokens": eval_tokens,
            "eval_compute_fraction": eval_tokens / (3.0 * self.num_steps * tokens_per_step),
            "learnparams_steps": burst_steps,
            "learnparams_step_fraction": burst_steps / self.num_steps}
