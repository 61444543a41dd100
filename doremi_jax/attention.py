"""Causal self-attention, with the fastest implementation each backend has.

`ModelConfig.attention` chooses:

  'auto'    'cudnn' on GPU, 'splash' on TPU, 'xla' elsewhere (chosen from
            the mesh's devices when the model is set up, so an ahead-of-time
            compile for a TPU topology gets the TPU kernel)
  'xla'     plain XLA ops (`xla_attention`), laid out for the CPU backend
  'cudnn'   cuDNN's fused flash attention (`implementation='cudnn'`); where
            cuDNN cannot serve the call (fp32 compute, a head size it does
            not support, no cuDNN) it falls back to 'xla' and says why once
  'splash'  the Pallas TPU splash-attention kernel
            (`jax.experimental.pallas.ops.tpu.splash_attention`), run per
            device inside `shard_map` over the batch (and head) shards of the
            mesh; sequence lengths that are not a multiple of 128 fall back
            to 'xla'. `interpret=True` runs the same kernel on CPU (tests).

Every implementation takes and returns [batch, length, heads, head_dim] and
computes softmax(q k^T / sqrt(head_dim)) v with a causal mask, the softmax
in fp32. With `segment_ids` ([batch, length] int, packed documents) a query
only meets keys of its own segment: attention never crosses a document
boundary ('xla' and 'splash' apply it as a mask; 'cudnn' passes it to cuDNN
as a mask and falls back to 'xla' where cuDNN refuses).

Incremental decoding (`doremi_jax.tasks.decode`) keeps each layer's keys and
values in a `KVCache` whose slot i holds position i: `cache_write` puts new
keys and values at their positions, and `cached_attention` lets a query at
position p meet slots 0..p only. Slots past a row's last written position
(padding, or nothing yet) are therefore never seen, and every row of the
batch has its own positions.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp

from doremi_jax.config import ConfigError

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
SPLASH_BLOCK = 128

_warned: set = set()


def _warn_once(key: str, msg: str):
  if key not in _warned:
    _warned.add(key)
    logging.warning(msg)


def choose(impl: str, platform: str, interpret: bool = False) -> str:
  """The implementation to trace for `impl` on `platform` ('cpu', 'gpu',
  'tpu'): 'auto' picks the backend's fastest. 'splash' needs a TPU (or
  `interpret`, which runs the kernel interpreted anywhere)."""
  if impl == "auto":
    return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")
  if impl == "splash" and platform != "tpu" and not interpret:
    raise ConfigError(f"ModelConfig.attention = 'splash' is the Pallas TPU kernel; this run's "
                      f"devices are {platform!r}. Use 'auto' or 'xla'.")
  return impl


def query_blocks(length: int) -> int:
  """How many query blocks `xla_attention` splits a sequence into: 4 when
  that gives blocks of at least 32 positions, else 1."""
  return 4 if length % 4 == 0 and length // 4 >= 32 else 1


def xla_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL=None):
  """Causal attention as plain XLA ops, laid out for XLA's CPU backend.

  - The heads move next to the batch once ([B, H, L, K]), so every matmul
    of the forward and backward pass is a batched matmul over leading axes
    with one contracting axis (no transposing copies).
  - The queries are split into `query_blocks(L)` blocks, and block i only
    meets the keys up to its own end: the causal mask's upper blocks are
    never computed (5/8 of the full score matrix for 4 blocks).
  - The softmax is normalised after the value matmul (a division over
    [B, H, L, K], not over the scores).

  Scores, softmax statistics and the normalisation are fp32; the value
  matmul takes the probabilities in the compute dtype, as
  jax.nn.dot_product_attention does. Equal to it up to fp32 rounding
  (tests/unit/attention_test.py)."""
  dtype = q_BxLxHxK.dtype
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)
  scale = jnp.asarray(q_BxLxHxK.shape[-1] ** -0.5, dtype)
  q_BxHxLxK = to_heads(q_BxLxHxK * scale)
  k_BxHxLxK, v_BxHxLxK = to_heads(k_BxLxHxK), to_heads(v_BxLxHxK)
  length = q_BxHxLxK.shape[2]
  n = query_blocks(length)
  block = length // n
  outs = []
  for i in range(n):
    end = (i + 1) * block      # keys this block of queries can see
    s_BxHxCxE = jnp.einsum("bhqk,bhsk->bhqs", q_BxHxLxK[:, :, i * block:end],
                           k_BxHxLxK[:, :, :end], preferred_element_type=jnp.float32)
    allowed = (i * block + jnp.arange(block))[:, None] >= jnp.arange(end)[None, :]
    if segment_ids_BxL is not None:
      same_BxCxE = (segment_ids_BxL[:, i * block:end, None] ==
                    segment_ids_BxL[:, None, :end])
      allowed = (allowed & same_BxCxE)[:, None]
    s_BxHxCxE = jnp.where(allowed, s_BxHxCxE, jnp.finfo(jnp.float32).min)
    m_BxHxC = jax.lax.stop_gradient(s_BxHxCxE.max(axis=-1, keepdims=True))
    p_BxHxCxE = jnp.exp(s_BxHxCxE - m_BxHxC)
    o_BxHxCxK = jnp.einsum("bhqs,bhsk->bhqk", p_BxHxCxE.astype(dtype), v_BxHxLxK[:, :, :end],
                           preferred_element_type=jnp.float32)
    outs.append(o_BxHxCxK / p_BxHxCxE.sum(axis=-1, keepdims=True))
  o_BxHxLxK = outs[0] if n == 1 else jnp.concatenate(outs, axis=2)
  return to_heads(o_BxHxLxK).astype(dtype)


def cudnn_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL=None):
  """cuDNN flash attention; XLA's where cuDNN cannot serve the call (the
  checks run at trace time, so the fallback costs nothing at run time).
  Segment ids go to cuDNN as a [B, 1, L, L] mask."""
  mask = None
  if segment_ids_BxL is not None:
    mask = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
  try:
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=mask,
                                        is_causal=True, implementation="cudnn")
  except (RuntimeError, NotImplementedError, ValueError) as e:
    _warn_once(f"cudnn:{q_BxLxHxK.shape}:{q_BxLxHxK.dtype}",
               f"attention: cuDNN cannot serve q {q_BxLxHxK.shape} {q_BxLxHxK.dtype} "
               f"({type(e).__name__}: {e}); using XLA's attention.")
    return xla_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL)


def _splash_local(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, seg_BxL, interpret: bool):
  """The splash kernel on one device's shard ([batch, heads, length, dim];
  segment ids [batch, length])."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  _, h, length, k = q_BxHxLxK.shape
  mask = sa.MultiHeadMask([sa.CausalMask((length, length)) for _ in range(h)])
  block = SPLASH_BLOCK
  sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  kernel = sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  scale = jnp.asarray(k ** -0.5, q_BxHxLxK.dtype)
  return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(q=s, kv=s)))(
      q_BxHxLxK * scale, k_BxHxLxK, v_BxHxLxK, seg_BxL)


def _mesh_specs(shape_BxHxLxK):
  """(mesh, spec of [batch, heads, length, dim]) for `shard_map` from the
  mesh and logical-axis rules being traced under; (None, None) off a mesh.
  A batch or head count the mesh axes do not divide (e.g. the batch of 1
  that initialisation traces) is not split."""
  import flax.linen as nn
  from jax.sharding import PartitionSpec as P
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return None, None
  spec = nn.logical_to_mesh_axes(("act_batch", "act_heads", "act_length", "act_kv"))
  if spec[2] is not None or spec[3] is not None:
    raise ValueError("splash attention: the length and head_dim axes must not be sharded "
                     f"(the rules give {spec}).")

  def fit(axes, size):
    if axes is None:
      return None
    names = axes if isinstance(axes, tuple) else (axes,)
    n = 1
    for a in names:
      n *= mesh.shape[a]
    return axes if size % n == 0 else None
  return mesh, P(fit(spec[0], shape_BxHxLxK[0]), fit(spec[1], shape_BxHxLxK[1]), None, None)


def splash_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, interpret: bool = False,
                     segment_ids_BxL=None):
  """The Pallas splash kernel (TPU; `interpret=True` anywhere), per device
  under `shard_map` when traced on a mesh."""
  length = q_BxLxHxK.shape[1]
  if length % SPLASH_BLOCK:
    _warn_once(f"splash:{length}", f"attention: splash needs a length that is a multiple of "
               f"{SPLASH_BLOCK}, got {length}; using XLA's.")
    return xla_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL)
  to_bhlk = lambda x: jnp.swapaxes(x, 1, 2)
  q, k, v = to_bhlk(q_BxLxHxK), to_bhlk(k_BxLxHxK), to_bhlk(v_BxLxHxK)
  if segment_ids_BxL is None:
    segment_ids_BxL = jnp.ones(q_BxLxHxK.shape[:2], jnp.int32)
  seg = segment_ids_BxL.astype(jnp.int32)
  fn = functools.partial(_splash_local, interpret=interpret)
  mesh, spec = _mesh_specs(q.shape)
  if mesh is not None:
    from jax.sharding import PartitionSpec as P
    fn = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, P(spec[0], None)),
                       out_specs=spec, check_vma=False)
  return to_bhlk(fn(q, k, v, seg))


def attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, impl: str = "xla", interpret: bool = False,
           segment_ids_BxL=None):
  """Causal attention with `impl` (already chosen: not 'auto'), within the
  segments of `segment_ids_BxL` when given."""
  if impl == "xla":
    return xla_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL)
  if impl == "cudnn":
    return cudnn_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL)
  if impl == "splash":
    return splash_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, interpret, segment_ids_BxL)
  raise ValueError(f"attention implementation {impl!r}; use one of {IMPLEMENTATIONS}.")


class KVCache(NamedTuple):
  """One layer's keys and values, [batch, cache length, heads, head_dim]
  each (slot i holds position i), in the compute dtype. With
  `ModelConfig.scan_layers` the model's cache is one KVCache with a leading
  layer axis; otherwise a tuple of one KVCache per layer."""
  key: jax.Array
  value: jax.Array


def cache_write(cache: KVCache, k_BxLxHxK, v_BxLxHxK, positions_BxL) -> KVCache:
  """`cache` with each row's new keys and values at the slots of their
  positions (positions past the cache are dropped)."""
  rows_Bx1 = jnp.arange(k_BxLxHxK.shape[0])[:, None]
  put = lambda c, x: c.at[rows_Bx1, positions_BxL].set(x.astype(c.dtype), mode="drop")
  return KVCache(put(cache.key, k_BxLxHxK), put(cache.value, v_BxLxHxK))


def cached_attention(q_BxLxHxK, cache: KVCache, positions_BxL):
  """Attention of queries at `positions_BxL` to the cache's slots
  0..position of their own row (the causal mask of a cache indexed by
  position). The numerics follow `xla_attention`: fp32 scores and softmax
  statistics, probabilities in the compute dtype for the value matmul,
  normalised after it."""
  dtype = q_BxLxHxK.dtype
  scale = jnp.asarray(q_BxLxHxK.shape[-1] ** -0.5, dtype)
  s_BxHxLxM = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK * scale, cache.key.astype(dtype),
                         preferred_element_type=jnp.float32)
  slots_M = jnp.arange(cache.key.shape[1])
  allowed_Bx1xLxM = (slots_M[None, None, :] <= positions_BxL[:, :, None])[:, None]
  s_BxHxLxM = jnp.where(allowed_Bx1xLxM, s_BxHxLxM, jnp.finfo(jnp.float32).min)
  p_BxHxLxM = jnp.exp(s_BxHxLxM - s_BxHxLxM.max(axis=-1, keepdims=True))
  o_BxHxLxK = jnp.einsum("bhlm,bmhk->bhlk", p_BxHxLxM.astype(dtype), cache.value.astype(dtype),
                         preferred_element_type=jnp.float32)
  o_BxHxLxK = o_BxHxLxK / p_BxHxLxM.sum(axis=-1, keepdims=True)
  return jnp.swapaxes(o_BxHxLxK, 1, 2).astype(dtype)
