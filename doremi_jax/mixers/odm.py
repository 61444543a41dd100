"""ODM: online data mixing as a multi-armed bandit (Albalak, Pan, Raffel and
Wang, "Efficient Online Data Mixing For Language Model Pre-Training",
arXiv 2312.02406, 2023).

Each domain is an arm; its reward is the model's training loss on that
domain before the update, so domains whose loss stays high are sampled
more. Per update t = 1, 2, ... (t counts the bandit's own updates, from the
end of any warm-up, not the global step: counted from the global step the
exploration rate is already tiny when adaptation starts):

  exploration    eps_t = min(1/K, sqrt(ln K / (K t)))               (Alg. 1)
  reward         R_i <- a R_i + (1 - a) L_i / pi_i(t-1)   for every domain
                 i observed in the batch (the paper's smoothed
                 importance-weighted reward; ODM samples one domain per
                 batch, a mixed batch observes several)
  policy         pi(t) = (1 - K eps_t) softmax(eps_{t-1} R) + eps_t

`form='code'` is the authors' released variant instead: reward
exp(L_i) without the 1/pi weight, and pi(t) = (1 - K eps_t) R / sum(R) +
eps_t (linear, not a softmax). Default smoothing a = 0.9 (the authors'
scripts; one uses 0.5).

The reward is raw loss, so irreducible loss is rewarded: on a corpus with a
pure-noise domain ODM up-weights the noise (its loss stays near log V) and
the easy domain falls to the exploration floor. That is the method's own
behaviour.
"""

from __future__ import annotations

from typing import NamedTuple

import gin
import jax
import jax.numpy as jnp

from doremi_jax.config import ConfigError, check_number
from doremi_jax.mixers import base

FORMS = ("paper", "code")


class ODMState(NamedTuple):
  reward_K: jax.Array    # R, fp32
  probs_K: jax.Array     # pi(t-1): the sampling rates in use, fp32
  eps: jax.Array         # eps_{t-1}, fp32 scalar (1/K before the first update)
  t: jax.Array           # updates done, int32 scalar


def init(num_domains: int) -> ODMState:
  k = num_domains
  return ODMState(reward_K=jnp.zeros(k, jnp.float32), probs_K=jnp.full(k, 1.0 / k, jnp.float32),
                  eps=jnp.asarray(1.0 / k, jnp.float32), t=jnp.asarray(0, jnp.int32))


def exploration(t, num_domains: int):
  """eps_t = min(1/K, sqrt(ln K / (K t))) for t >= 1."""
  k = float(num_domains)
  t = jnp.maximum(jnp.asarray(t, jnp.float32), 1.0)
  return jnp.minimum(1.0 / k, jnp.sqrt(jnp.log(k) / (k * t)))


def update(state: ODMState, losses_K, observed_K, smoothing: float = 0.9,
           form: str = "paper") -> ODMState:
  """One bandit update from the per-domain mean training losses `losses_K`
  (nats, before the optimizer step) of the domains marked in `observed_K`
  (bool); unobserved domains keep their reward."""
  if form not in FORMS:
    raise ValueError(f"ODM form must be one of {FORMS}, got {form!r}.")
  k = losses_K.shape[0]
  a = jnp.asarray(smoothing, jnp.float32)
  losses_K = losses_K.astype(jnp.float32)
  t = state.t + 1
  eps_t = exploration(t, k)
  if form == "paper":
    signal_K = losses_K / state.probs_K
  else:
    signal_K = jnp.exp(losses_K)
  reward_K = jnp.where(observed_K, a * state.reward_K + (1 - a) * signal_K, state.reward_K)
  if form == "paper":
    base_K = jax.nn.softmax(state.eps * reward_K)
  else:
    total = reward_K.sum()
    base_K = jnp.where(total > 0, reward_K / jnp.where(total > 0, total, 1.0), 1.0 / k)
  probs_K = (1 - k * eps_t) * base_K + eps_t
  return ODMState(reward_K=reward_K, probs_K=probs_K, eps=eps_t, t=t)


# --------------------------------------------------------------------------
# The mixer (issue 14's interface, `mixers.base`)


@base.register(prior="proportional")
@gin.configurable
class ODMMixer(base.Mixer):
  """ODM in the main run: the prior mixture for `warmup_steps` (the
  authors' scripts: 2000 naturally mixed steps), then one bandit update per
  step from the step's per-domain training losses; the rates are pi(t).
  The paper's importance weight 1/pi_i(t-1) uses the mixer's latest pi; the
  batch was drawn from the rates of `base.DELAY` + 1 steps before, which
  differ from it by three updates' worth (ODM samples one domain per step
  and has no such lag)."""
  name = "odm"

  def __init__(self, num_domains: int, num_steps: int, smoothing: float = 0.9,
               warmup_steps: int = 2000, form: str = "paper"):
    check_number("ODMMixer.smoothing", smoothing, low=0, high=1, high_open=True)
    check_number("ODMMixer.warmup_steps", warmup_steps, integer=True, low=0)
    if form not in FORMS:
      raise ConfigError(f"ODMMixer.form must be one of {FORMS}, got {form!r}.")
    if warmup_steps >= num_steps:
      raise ConfigError(f"ODMMixer.warmup_steps = {warmup_steps} is not shorter than the run "
                        f"({num_steps} steps): ODM would never adapt. Lower it (the authors "
                        "warm up for about 2000 steps of a long run).")
    super().__init__(num_domains, dict(smoothing=smoothing, warmup_steps=warmup_steps,
                                       form=form))

  def init(self, prior_K):
    # pi(0) is the warm-up's mixture: the first rewards divide by the rates
    # the warm-up batches were drawn from.
    prior_K = jnp.asarray(prior_K, jnp.float32)
    return {"odm": init(self.num_domains)._replace(probs_K=prior_K), "prior": prior_K}

  def update(self, state, signals, step):
    h = self.hyper
    new = update(state["odm"], signals.loss_K, signals.observed_K, h["smoothing"], h["form"])
    return {"odm": base.where_tree(step >= h["warmup_steps"], new, state["odm"]),
            "prior": state["prior"]}

  def rates(self, state):
    return jnp.where(state["odm"].t > 0, state["odm"].probs_K, state["prior"])

  def report(self, state):
    return {"reward": state["odm"].reward_K, "exploration": state["odm"].eps}
