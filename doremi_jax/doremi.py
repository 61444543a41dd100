"""The DoReMi Group-DRO update (Xie et al. 2023, Algorithm 1), as pure jnp.

These functions are the public math of the method; the Group-DRO step
program (`doremi_jax.steps`) calls them inside its jitted step. Conventions follow
`shared/doremi-algorithm.md`:

  lambda_t[i] = sum_{x in B_i} sum_j max(l_proxy(x_j) - l_ref(x_j), 0) / sum_{x in B_i} |x|
  alpha'_t    = normalise(alpha_{t-1} * exp(eta * lambda_t))       (in log space)
  alpha_t     = (1 - c) * alpha'_t + c / k

The proxy is trained on sum_i alpha_t[i] * (mean proxy token loss of domain
i); the output is the average of alpha_1..alpha_T (alpha_0 excluded).

`DROConfig` holds the update's settings, including the gate (a warm-up
before the first update, then an update every N steps) that the Group-DRO
step program (`doremi_jax.steps.dro_program`) applies.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax.config import ConfigError
from doremi_jax.loss import per_domain_sums


@dataclasses.dataclass(frozen=True)
class DROConfig:
  """eta (`step_size`), c (`smoothing`), and when the weights change: not
  before step `weights_warmup_steps`, then every `update_every` steps. Set
  through `train_proxy`'s arguments of the same names."""
  step_size: float = 1.0
  smoothing: float = 1e-3
  weights_warmup_steps: int = 0
  update_every: int = 1

  def __post_init__(self):
    if not (isinstance(self.step_size, (int, float)) and np.isfinite(self.step_size)
            and self.step_size > 0):
      raise ConfigError(f"train_proxy.step_size must be a positive number, got "
                        f"{self.step_size!r}.")
    if not (isinstance(self.smoothing, (int, float)) and 0 <= self.smoothing <= 1):
      raise ConfigError(f"train_proxy.smoothing must be in [0, 1], got {self.smoothing!r}.")
    if not (isinstance(self.update_every, int) and self.update_every >= 1):
      raise ConfigError(f"train_proxy.update_every must be an integer >= 1, got "
                        f"{self.update_every!r}.")
    if not (isinstance(self.weights_warmup_steps, int) and self.weights_warmup_steps >= 0):
      raise ConfigError(f"train_proxy.weights_warmup_steps must be an integer >= 0, got "
                        f"{self.weights_warmup_steps!r}.")

  def update_gate(self, step):
    """Whether the weights are updated at (traced int) `step`."""
    w = self.weights_warmup_steps
    return (step >= w) & ((step - w) % self.update_every == 0)


def per_domain_excess_loss(proxy_loss, reference_loss, mask, domain_ids, num_domains: int):
  """Clipped per-domain excess loss lambda.

  Args:
    proxy_loss, reference_loss: [batch, length] per-token losses (nats).
    mask: [batch, length], 1 on real tokens, 0 on padding.
    domain_ids: [batch] int domain of each sequence.
    num_domains: k.
  Returns:
    [k] float32: per domain, the sum over its real tokens of
    max(proxy - reference, 0) divided by its number of real tokens; 0 for a
    domain with no tokens.
  """
  mask = mask.astype(jnp.float32)
  excess_BxL = jnp.maximum(proxy_loss.astype(jnp.float32) - reference_loss.astype(jnp.float32),
                           0.0) * mask
  numer_K, denom_K = per_domain_sums(excess_BxL, mask, domain_ids, num_domains)
  return jnp.where(denom_K > 0, numer_K / jnp.where(denom_K > 0, denom_K, 1.0), 0.0)


def update_domain_weights(weights, excess, step_size, smoothing):
  """One exponentiated-gradient step on the domain weights.

  Args:
    weights: [k] current weights alpha_{t-1} (non-negative, sum 1).
    excess: [k] lambda_t.
    step_size: eta.
    smoothing: c, the mass mixed in from the uniform distribution.
  Returns:
    [k] alpha_t = (1 - c) * softmax(log alpha_{t-1} + eta * lambda_t) + c / k.
  """
  weights = jnp.asarray(weights, jnp.float32)
  k = weights.shape[-1]
  log_w = jnp.log(weights) + step_size * jnp.asarray(excess, jnp.float32)
  new = jax.nn.softmax(log_w, axis=-1)
  return (1.0 - smoothing) * new + smoothing / k


@flax.struct.dataclass
class DROState:
  """Domain-weight state of the proxy stage (checkpointed with the proxy).

  weights: [k] current alpha_t.
  average_weights: [k] mean of alpha_1..alpha_t over the updates so far
    (equal to the initial weights before the first update).
  excess: [k] the last lambda_t computed.
  num_updates: scalar int32, number of weight updates made.
  """
  weights: jax.Array
  average_weights: jax.Array
  excess: jax.Array
  num_updates: jax.Array

  @classmethod
  def create(cls, initial_weights) -> "DROState":
    # Distinct buffers for each field: the proxy step donates its state.
    w = lambda: jnp.array(initial_weights, jnp.float32, copy=True)
    return cls(weights=w(), average_weights=w(), excess=jnp.zeros_like(w()),
               num_updates=jnp.zeros((), jnp.int32))


def dro_update(state: DROState, excess, step_size, smoothing, do_update=True) -> DROState:
  """Applies `update_domain_weights` (when `do_update`) and the running mean."""
  new_w = update_domain_weights(state.weights, excess, step_size, smoothing)
  n = state.num_updates + 1
  new_avg = state.average_weights + (new_w - state.average_weights) / n.astype(jnp.float32)
  new_avg = jnp.where(state.num_updates == 0, new_w, new_avg)
  do = jnp.asarray(do_update)
  return DROState(
      weights=jnp.where(do, new_w, state.weights),
      average_weights=jnp.where(do, new_avg, state.average_weights),
      excess=jnp.asarray(excess, jnp.float32),
      num_updates=jnp.where(do, n, state.num_updates))


def token_weights(domain_weights, mask, domain_ids, num_domains: int):
  """[batch, length] weights w such that sum(loss * w) equals
  sum_i alpha[i] * (sum of domain i's token losses / its token count)."""
  mask = mask.astype(jnp.float32)
  _, counts_K = per_domain_sums(mask, mask, domain_ids, num_domains)
  per_token_K = jnp.where(counts_K > 0, domain_weights / jnp.maximum(counts_K, 1.0), 0.0)
  onehot_BxK = jax.nn.one_hot(domain_ids, num_domains, dtype=jnp.float32)
  return (onehot_BxK @ per_token_K)[:, None] * mask
