"""The DoReMi Group-DRO update (Xie et al. 2023, Algorithm 1), as pure jnp.

These functions are the public math of the method; the proxy stage
(`doremi_jax.proxy`) calls them inside its jitted step. Conventions follow
`shared/doremi-algorithm.md`:

  lambda_t[i] = sum_{x in B_i} sum_j max(l_proxy(x_j) - l_ref(x_j), 0) / sum_{x in B_i} |x|
  alpha'_t    = normalise(alpha_{t-1} * exp(eta * lambda_t))       (in log space)
  alpha_t     = (1 - c) * alpha'_t + c / k

The proxy is trained on sum_i alpha_t[i] * (mean proxy token loss of domain
i); the output is the average of alpha_1..alpha_T (alpha_0 excluded).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


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
  onehot_BxK = jax.nn.one_hot(domain_ids, num_domains, dtype=jnp.float32)
  numer_K = onehot_BxK.T @ excess_BxL.sum(axis=1)
  denom_K = onehot_BxK.T @ mask.sum(axis=1)
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
  onehot_BxK = jax.nn.one_hot(domain_ids, num_domains, dtype=jnp.float32)
  counts_K = onehot_BxK.T @ mask.sum(axis=1)
  per_token_K = jnp.where(counts_K > 0, domain_weights / jnp.maximum(counts_K, 1.0), 0.0)
  return (onehot_BxK @ per_token_K)[:, None] * mask
