"""Decoder-only transformer in Flax, with logical axis names on every
parameter and on the main activations.

Architecture (documented choice): pre-norm (RMSNorm), rotary position
embeddings, multi-head causal attention, SwiGLU MLP, no biases, untied input
and output embeddings by default (`tied_embeddings=True` ties them). Parameters
are stored in `param_dtype` (fp32); matmuls run in `compute_dtype` (bf16 on
TPU); the softmax and the logits used for the loss are fp32.

Shape suffixes: B batch, L length, D d_model, H heads, K head_dim, F mlp, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Optional

import gin
import jax
import jax.numpy as jnp
import flax.linen as nn

from doremi_jax import attention as attention_lib
from doremi_jax.config import ConfigError, check, check_number

# Floating dtypes the model can store parameters and compute in.
FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _check_float_dtype(where: str, value) -> None:
  try:
    ok = value is not None and jnp.dtype(value).name in FLOAT_DTYPES
  except (TypeError, ValueError):
    ok = False
  check(ok, f"{where} must be a floating dtype name, one of "
            f"{', '.join(repr(d) for d in FLOAT_DTYPES)}; got {value!r}.")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Transformer sizes. `vocab_size=None` takes the data's vocabulary size,
  rounded up to a multiple of `vocab_multiple` (TPU-friendly shapes)."""
  vocab_size: Optional[int] = None
  vocab_multiple: int = 128
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 256
  max_len: int = 2048
  rope_theta: float = 10_000.0
  tied_embeddings: bool = False
  norm_eps: float = 1e-6
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  # Variance scale of the (untied) output projection at init. 0 starts from
  # uniform predictions (loss log V on every domain), which keeps the
  # untrained proxy from showing spurious excess loss on unlearnable data.
  unembed_init_scale: float = 0.0
  remat: bool = False   # rematerialise each block in the backward pass
  scan_layers: bool = False  # one scanned block: faster compiles for deep models
  # Attention implementation (doremi_jax.attention): 'auto' picks cuDNN flash
  # attention on GPU, the Pallas splash kernel on TPU and XLA's elsewhere.
  attention: str = "auto"
  # Per-token cross-entropy in chunks of this many positions, never holding
  # the full fp32 [batch, length, vocab] logits (each chunk's logits are
  # recomputed in the backward pass); 0 computes all logits at once.
  loss_chunk: int = 0

  def __post_init__(self):
    for field in ("d_model", "num_layers", "num_heads", "head_dim", "mlp_dim", "max_len",
                  "vocab_multiple"):
      check_number(f"ModelConfig.{field}", getattr(self, field), integer=True, low=0,
                   low_open=True)
    check(self.head_dim % 2 == 0,
          f"ModelConfig.head_dim must be even (rotary embeddings rotate its two halves), "
          f"got {self.head_dim}.")
    v = self.vocab_size
    check(v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0),
          f"ModelConfig.vocab_size must be a positive integer or None (take it from the "
          f"data), got {v!r}.")
    check_number("ModelConfig.rope_theta", self.rope_theta, low=0, low_open=True)
    check_number("ModelConfig.norm_eps", self.norm_eps, low=0, low_open=True)
    check_number("ModelConfig.unembed_init_scale", self.unembed_init_scale, low=0)
    for field in ("compute_dtype", "param_dtype"):
      _check_float_dtype(f"ModelConfig.{field}", getattr(self, field))
    check(self.attention in attention_lib.IMPLEMENTATIONS,
          f"ModelConfig.attention must be one of {attention_lib.IMPLEMENTATIONS}, got "
          f"{self.attention!r}.")
    check_number("ModelConfig.loss_chunk", self.loss_chunk, integer=True, low=0)
    for field in ("tied_embeddings", "remat", "scan_layers"):
      value = getattr(self, field)
      check(isinstance(value, bool), f"ModelConfig.{field} must be True or False, got {value!r}.")

  def with_data_vocab(self, data_vocab_size: int) -> "ModelConfig":
    """Returns a copy whose vocab_size fits the data's vocabulary."""
    if self.vocab_size is None:
      m = self.vocab_multiple
      return dataclasses.replace(self, vocab_size=-(-data_vocab_size // m) * m)
    if self.vocab_size < data_vocab_size:
      raise ConfigError(
          f"ModelConfig.vocab_size={self.vocab_size} is smaller than the data's "
          f"vocabulary ({data_vocab_size} ids). Set ModelConfig.vocab_size to at least "
          f"{data_vocab_size} or to None (take it from the data).")
    return self

  def with_execution_of(self, other: "ModelConfig") -> "ModelConfig":
    """A copy that computes the way `other` does (its EXECUTION_FIELDS: the
    attention kernel, loss chunks, remat), e.g. the frozen reference inside
    the proxy's program."""
    return dataclasses.replace(self, **{f: getattr(other, f) for f in EXECUTION_FIELDS})

  def num_params(self) -> int:
    """Parameter count (exact for this architecture)."""
    d, f, v = self.d_model, self.mlp_dim, self.vocab_size
    attn = 4 * d * self.num_heads * self.head_dim
    block = attn + 3 * d * f + 2 * d
    emb = v * d * (1 if self.tied_embeddings else 2)
    return self.num_layers * block + emb + d

  def flops_per_token(self, seq_len: int) -> int:
    """Training FLOPs per token: 6 * (non-embedding-input params) plus the
    attention score/value matmuls (6 * 2 * layers * L * H*K, causal not
    discounted), the PaLM/Chinchilla convention."""
    n = self.num_params() - self.vocab_size * self.d_model * (0 if self.tied_embeddings else 1)
    attn = 12 * self.num_layers * seq_len * self.num_heads * self.head_dim
    return 6 * n + attn


# Fields that change how the model computes, not what: a run may resume, and
# a proxy may use a reference, with other values of these.
EXECUTION_FIELDS = ("remat", "attention", "loss_chunk")


def _dtype(name: str):
  return jnp.dtype(name)


class Linear(nn.Module):
  """`einsum(eqn, x, kernel)` with a logically partitioned kernel of any rank.

  (flax's DenseGeneral initialises a flattened 2-D kernel, which cannot carry
  per-axis logical names.)"""
  eqn: str
  shape: tuple
  names: tuple
  in_axes: tuple
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    out_axes = tuple(i for i in range(len(self.shape)) if i not in self.in_axes)
    init = nn.initializers.zeros if self.init_scale == 0 else nn.initializers.variance_scaling(
        self.init_scale, "fan_in", "truncated_normal", in_axis=self.in_axes, out_axis=out_axes)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names),
                        self.shape, self.param_dtype)
    return token_matmul(self.eqn, x.astype(self.dtype), kernel.astype(self.dtype))


def token_matmul(eqn: str, x, kernel):
  """`jnp.einsum(eqn, x, kernel)` for an `eqn` whose activation operand and
  output start with the batch and length axes ('bl...'), computed with those
  two axes merged into one token axis (a free reshape). Numerically the same
  einsum; but the weight gradient then contracts over one axis instead of
  two, which XLA's CPU backend serves without transposing copies of the
  activations (measured in docs/benchmarks.md)."""
  lhs, out = eqn.split("->")
  lhs, rhs = lhs.split(",")
  if not (lhs.startswith("bl") and out.startswith("bl")):
    return jnp.einsum(eqn, x, kernel)
  b, length = x.shape[:2]
  y = jnp.einsum(f"n{lhs[2:]},{rhs}->n{out[2:]}", x.reshape(b * length, *x.shape[2:]), kernel)
  return y.reshape(b, length, *y.shape[1:])


class RMSNorm(nn.Module):
  eps: float
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(x.dtype)


def rotary(x_BxLxHxK, positions_BxL, theta: float):
  k = x_BxLxHxK.shape[-1]
  freq = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
  angle_BxLxK2 = positions_BxL[..., None].astype(jnp.float32) * freq
  sin, cos = jnp.sin(angle_BxLxK2)[:, :, None, :], jnp.cos(angle_BxLxK2)[:, :, None, :]
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


class Block(nn.Module):
  """One layer: `__call__(x, positions, segment_ids=None, cache=None) ->
  (x, kv)`. kv is None in a plain call; with `keep_kv` it is the layer's
  KVCache of this call's keys and values (slot i: the i-th token); given
  a `cache`, the new keys and values go in at their positions and the
  queries attend to the cache (`attention.cached_attention`), and kv is
  the updated cache."""
  cfg: ModelConfig
  attention_impl: str = "xla"     # chosen (doremi_jax.attention.choose), never 'auto'
  interpret: bool = False         # run Pallas kernels interpreted (CPU tests)
  keep_kv: bool = False           # also return this call's keys and values

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL=None, cache=None):
    cfg = self.cfg
    cdt, pdt = _dtype(cfg.compute_dtype), _dtype(cfg.param_dtype)
    linear = functools.partial(Linear, dtype=cdt, param_dtype=pdt)
    act = nn.with_logical_constraint
    d, h_, k_, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim

    h = RMSNorm(cfg.norm_eps, pdt, name="attn_norm")(x_BxLxD)
    qkv = functools.partial(linear, "bld,dhk->blhk", (d, h_, k_), ("embed", "heads", "kv"), (0,))
    qkv_axes = ("act_batch", "act_length", "act_heads", "act_kv")
    q_BxLxHxK = act(rotary(qkv(name="query")(h), positions_BxL, cfg.rope_theta), qkv_axes)
    k_BxLxHxK = act(rotary(qkv(name="key")(h), positions_BxL, cfg.rope_theta), qkv_axes)
    v_BxLxHxK = act(qkv(name="value")(h), qkv_axes)
    if cache is not None:
      kv = attention_lib.cache_write(cache, k_BxLxHxK, v_BxLxHxK, positions_BxL)
      o_BxLxHxK = attention_lib.cached_attention(q_BxLxHxK, kv, positions_BxL)
    else:
      kv = attention_lib.KVCache(k_BxLxHxK, v_BxLxHxK) if self.keep_kv else None
      o_BxLxHxK = attention_lib.attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, self.attention_impl,
                                       self.interpret, segment_ids_BxL)
    o_BxLxHxK = act(o_BxLxHxK, qkv_axes)
    o_BxLxD = linear("blhk,hkd->bld", (h_, k_, d), ("heads", "kv", "embed"), (0, 1),
                     name="out")(o_BxLxHxK)
    x_BxLxD = act(x_BxLxD + o_BxLxD, ("act_batch", "act_length", "act_embed"))

    h = RMSNorm(cfg.norm_eps, pdt, name="mlp_norm")(x_BxLxD)
    up = functools.partial(linear, "bld,df->blf", (d, f), ("embed", "mlp"), (0,))
    h_BxLxF = act(nn.silu(up(name="gate")(h)) * up(name="up")(h),
                  ("act_batch", "act_length", "act_mlp"))
    down_BxLxD = linear("blf,fd->bld", (f, d), ("mlp", "embed"), (0,), name="down")(h_BxLxF)
    return act(x_BxLxD + down_BxLxD, ("act_batch", "act_length", "act_embed")), kv


class _ScanBlock(nn.Module):
  cfg: ModelConfig
  attention_impl: str = "xla"
  interpret: bool = False
  keep_kv: bool = False

  @nn.compact
  def __call__(self, x, positions, segment_ids, cache):
    return Block(self.cfg, self.attention_impl, self.interpret, self.keep_kv, name="block")(
        x, positions, segment_ids, cache)


class Transformer(nn.Module):
  """`__call__(tokens_BxL, positions_BxL=None, segment_ids_BxL=None) ->
  logits_BxLxV` (fp32). With `segment_ids_BxL` (packed documents; 0 is
  padding) attention never crosses a segment boundary; the positions
  (default 0..L-1) are the caller's (`loss.model_inputs` restarts them per
  document).

  `__call__(tokens_BxL, features=True)` stops before the output layer and
  returns the final-normed hidden states x_BxLxD; `__call__(head=x_BxLxD)`
  applies only the output layer to them (the chunked loss calls it chunk by
  chunk). `platform` ('cpu', 'gpu', 'tpu'; default: JAX's default backend)
  is what `ModelConfig.attention = 'auto'` chooses for; `interpret` runs the
  Pallas attention kernel interpreted (tests on CPU).

  Incremental decoding (`doremi_jax.tasks.decode`), same parameters:
  `fill_cache=True` is a plain call that also returns the keys and values
  of every layer, `(out, cache)`, cache slot i holding the i-th token (so
  slot = position when the positions are 0..L-1); `cache=` a cache of that
  structure (`attention.KVCache`: one per layer, or one with a leading
  layer axis under `scan_layers`) writes the new tokens' keys and values
  at the slots of their positions (required), attends each query to its
  row's slots 0..its position and returns `(out, updated cache)`. Neither
  adds a parameter: a trained model's parameters decode as they are."""
  cfg: ModelConfig
  platform: Optional[str] = None
  interpret: bool = False

  @property
  def attention_impl(self) -> str:
    return attention_lib.choose(self.cfg.attention, self.platform or jax.default_backend(),
                                self.interpret)

  @nn.compact
  def __call__(self, tokens_BxL=None, positions_BxL=None, segment_ids_BxL=None, *,
               features: bool = False, head=None, cache=None, fill_cache: bool = False):
    cfg = self.cfg
    if cfg.vocab_size is None:
      raise ConfigError("ModelConfig.vocab_size is unset; call with_data_vocab first.")
    cdt, pdt = _dtype(cfg.compute_dtype), _dtype(cfg.param_dtype)
    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cdt, param_dtype=pdt,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        name="embed")
    if head is not None:
      return self._logits(embed, head)
    if positions_BxL is None and cache is not None:
      raise ValueError("a cached call needs the positions of its tokens (their cache slots)")
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
    x_BxLxD = embed(tokens_BxL)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("act_batch", "act_length", "act_embed"))

    x_BxLxD, kv = self._layers(x_BxLxD, positions_BxL, segment_ids_BxL, cache, fill_cache)
    x_BxLxD = RMSNorm(cfg.norm_eps, pdt, name="final_norm")(x_BxLxD)
    out = x_BxLxD if features else self._logits(embed, x_BxLxD)
    return out if cache is None and not fill_cache else (out, kv)

  def _layers(self, x_BxLxD, positions_BxL, segment_ids_BxL, cache, fill_cache: bool):
    """The blocks, scanned or in a loop; returns (x_BxLxD, the model's
    KVCache: None in a plain call)."""
    cfg, impl = self.cfg, self.attention_impl
    decoding = cache is not None or fill_cache
    if cache is not None and segment_ids_BxL is not None:
      raise ValueError("a cached call takes no segment ids: one document per row")
    remat = lambda cls: cls
    if cfg.remat and not decoding:    # rematerialising only matters for a backward pass
      remat = functools.partial(nn.remat, policy=jax.checkpoint_policies.nothing_saveable)
    if cfg.scan_layers:
      return nn.scan(
          remat(_ScanBlock), variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(cfg, impl, self.interpret, fill_cache,
                                                          name="layers")(
              x_BxLxD, positions_BxL, segment_ids_BxL, cache)
    block_cls, kvs = remat(Block), []
    for i in range(cfg.num_layers):
      x_BxLxD, kv = block_cls(cfg, impl, self.interpret, fill_cache, name=f"layer_{i}")(
          x_BxLxD, positions_BxL, segment_ids_BxL, None if cache is None else cache[i])
      kvs.append(kv)
    return x_BxLxD, tuple(kvs) if decoding else None

  def _logits(self, embed, x_BxLxD):
    """The output layer: fp32 logits of the final-normed hidden states."""
    cfg = self.cfg
    cdt, pdt = _dtype(cfg.compute_dtype), _dtype(cfg.param_dtype)
    if cfg.tied_embeddings:
      b, length, d = x_BxLxD.shape
      logits_BxLxV = (embed.attend(x_BxLxD.reshape(b * length, d)).reshape(b, length, -1) /
                      jnp.sqrt(cfg.d_model).astype(cdt))
    else:
      logits_BxLxV = Linear("bld,dv->blv", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                            (0,), cdt, pdt, cfg.unembed_init_scale, name="unembed")(x_BxLxD)
    logits_BxLxV = nn.with_logical_constraint(
        logits_BxLxV, ("act_batch", "act_length", "act_vocab"))
    return logits_BxLxV.astype(jnp.float32)
