"""Per-token cross-entropy and per-domain sums: the loss every step and the
evaluation share. Step 1 and Step 3 average it; Step 2 needs it per token
and per domain."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def per_token_cross_entropy(logits_BxLxV, targets_BxL, mask_BxL):
  """Returns loss_BxL (fp32, nats): -log p(target), zero where mask is 0."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  lse_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return (lse_BxL - target_logit_BxL) * mask_BxL.astype(jnp.float32)


def segment_positions(segment_ids_BxL):
  """Each token's position within its document: 0 where a segment starts."""
  length = segment_ids_BxL.shape[1]
  idx_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids_BxL.shape)
  start_BxL = jnp.pad(segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1], ((0, 0), (1, 0)),
                      constant_values=True)
  return idx_BxL - jax.lax.cummax(jnp.where(start_BxL, idx_BxL, 0), axis=1)


def model_inputs(tokens):
  """Teacher forcing within each packed document. `tokens` is
  `{'targets': [B, L], 'segment_ids': [B, L]}` (a batch's rows; see
  `data.packing`). Returns (inputs_BxL, positions_BxL, mask_BxL): input t
  is target t-1 of the same document, 0 (pad/BOS) where a document
  starts; positions restart at 0 in every document; the loss mask is 1 on
  real tokens (segment id not 0)."""
  targets_BxL, segment_ids_BxL = tokens["targets"], tokens["segment_ids"]
  same_BxL1 = segment_ids_BxL[:, 1:] == segment_ids_BxL[:, :-1]
  inputs_BxL = jnp.pad(jnp.where(same_BxL1, targets_BxL[:, :-1], 0), ((0, 0), (1, 0)))
  mask_BxL = (segment_ids_BxL != 0).astype(jnp.float32)
  return inputs_BxL, segment_positions(segment_ids_BxL), mask_BxL


def tokens_of(batch: dict) -> dict:
  """The rows a model reads: `{'targets', 'segment_ids'}` of a batch."""
  return {"targets": batch["targets"], "segment_ids": batch["segment_ids"]}


def unpacked(targets_BxL):
  """`{'targets', 'segment_ids'}` for rows of one document each, padded
  with 0 (segment id 1 on every non-zero token)."""
  return {"targets": targets_BxL, "segment_ids": (targets_BxL != 0).astype(jnp.int32)}


def chunked_cross_entropy(head, x_BxLxD, targets_BxL, mask_BxL, chunk: int):
  """`per_token_cross_entropy(head(x_BxLxD), ...)` without ever holding the
  fp32 [batch, length, vocab] logits: a scan over chunks of `chunk`
  positions, each chunk's logits made by `head` ([B, chunk, D] -> fp32
  [B, chunk, V]) and, being under `jax.checkpoint`, made again in the
  backward pass instead of saved. Live logits: [B, chunk, V]. The length
  must be a multiple of `chunk`."""
  b, length, d = x_BxLxD.shape
  if length % chunk:
    raise ValueError(f"ModelConfig.loss_chunk={chunk} must divide the sequence length "
                     f"{length}.")
  n = length // chunk
  x_NxBxCxD = jnp.swapaxes(x_BxLxD.reshape(b, n, chunk, d), 0, 1)
  t_NxBxC = jnp.swapaxes(targets_BxL.reshape(b, n, chunk), 0, 1)
  m_NxBxC = jnp.swapaxes(mask_BxL.reshape(b, n, chunk), 0, 1)

  @jax.checkpoint
  def one_chunk(x_BxCxD, t_BxC, m_BxC):
    return per_token_cross_entropy(head(x_BxCxD), t_BxC, m_BxC)

  _, loss_NxBxC = jax.lax.scan(lambda c, a: (c, one_chunk(*a)), None,
                               (x_NxBxCxD, t_NxBxC, m_NxBxC))
  return jnp.swapaxes(loss_NxBxC, 0, 1).reshape(b, length)


def per_token_loss(model, params, tokens):
  """Forward pass over packed rows `tokens` (`{'targets', 'segment_ids'}`,
  [B, L] each); returns (loss_BxL, mask_BxL). Attention stays within each
  document. With `ModelConfig.loss_chunk` the output layer and the loss run
  chunk by chunk (`chunked_cross_entropy`); the result is the same."""
  targets_BxL, segment_ids_BxL = tokens["targets"], tokens["segment_ids"]
  inputs_BxL, positions_BxL, mask_BxL = model_inputs(tokens)
  chunk = model.cfg.loss_chunk
  if chunk and chunk < targets_BxL.shape[1]:
    x_BxLxD = model.apply({"params": params}, inputs_BxL, positions_BxL, segment_ids_BxL,
                          features=True)
    head = lambda x: model.apply({"params": params}, head=x)
    return chunked_cross_entropy(head, x_BxLxD, targets_BxL, mask_BxL, chunk), mask_BxL
  logits_BxLxV = model.apply({"params": params}, inputs_BxL, positions_BxL, segment_ids_BxL)
  return per_token_cross_entropy(logits_BxLxV, targets_BxL, mask_BxL), mask_BxL


def per_domain_sums(values_BxL, mask_BxL, domain_ids_B, num_domains: int):
  """Per domain, the sum of `values_BxL` over its sequences and its number of
  real tokens. Returns (sum_K, token_count_K) in fp32; `values_BxL` should
  already be zero on padding."""
  onehot_BxK = jax.nn.one_hot(domain_ids_B, num_domains, dtype=jnp.float32)
  return (onehot_BxK.T @ values_BxL.sum(axis=1).astype(jnp.float32),
          onehot_BxK.T @ mask_BxL.sum(axis=1).astype(jnp.float32))
