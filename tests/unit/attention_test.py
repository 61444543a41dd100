"""Attention implementations against NumPy and each other, and the chunked
cross-entropy against the plain loss (values and gradients)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax import attention
from doremi_jax import loss as loss_lib
from doremi_jax import model as model_lib
from doremi_jax import sharding as sharding_lib
from doremi_jax.config import ConfigError
from np_reference import np_causal_attention, np_token_cross_entropy


def _qkv(b=2, length=128, h=2, k=64, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(key, (b, length, h, k), jnp.float32) for key in keys]


def test_choose_by_platform():
  assert attention.choose("auto", "gpu") == "cudnn"
  assert attention.choose("auto", "tpu") == "splash"
  assert attention.choose("auto", "cpu") == "xla"
  assert attention.choose("xla", "tpu") == "xla"
  with pytest.raises(ConfigError, match="Pallas TPU kernel"):
    attention.choose("splash", "cpu")
  assert attention.choose("splash", "cpu", interpret=True) == "splash"
  with pytest.raises(ConfigError, match="ModelConfig.attention must be one of"):
    model_lib.ModelConfig(attention="flash3")


def test_xla_and_cudnn_fallback_match_numpy():
  q, k, v = _qkv()
  want = np_causal_attention(q, k, v)
  np.testing.assert_allclose(attention.attend(q, k, v, "xla"), want, atol=2e-5)
  # no cuDNN on this machine: 'cudnn' falls back to XLA's, same numbers
  np.testing.assert_allclose(attention.attend(q, k, v, "cudnn"), want, atol=2e-5)


@pytest.mark.parametrize("length", [256, 96])   # 4 query blocks; 1 block
def test_xla_attention_equals_jax_reference_with_gradients(length):
  """Our CPU-laid-out attention (head-major, causal blocks skipped, late
  normalisation) against jax.nn.dot_product_attention, values and gradients."""
  q, k, v = _qkv(b=2, length=length, h=2, k=32, seed=3)
  assert attention.query_blocks(length) == (4 if length == 256 else 1)
  plain = lambda *a: jax.nn.dot_product_attention(*a, is_causal=True, implementation="xla")
  np.testing.assert_allclose(attention.xla_attention(q, k, v), plain(q, k, v), atol=2e-6)
  loss = lambda f: lambda *a: (f(*a) * jnp.cos(jnp.arange(32.0))).sum()
  got = jax.grad(loss(attention.xla_attention), (0, 1, 2))(q, k, v)
  want = jax.grad(loss(plain), (0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_token_matmul_equals_einsum_with_gradients():
  x = jax.random.normal(jax.random.key(0), (3, 8, 4, 6))
  w = jax.random.normal(jax.random.key(1), (4, 6, 5))
  f = lambda mm: lambda x, w: (mm("blhk,hkd->bld", x, w) ** 2).sum()
  np.testing.assert_allclose(model_lib.token_matmul("blhk,hkd->bld", x, w),
                             jnp.einsum("blhk,hkd->bld", x, w), rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.grad(f(model_lib.token_matmul), (0, 1))(x, w),
                  jax.grad(f(jnp.einsum), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_splash_kernel_interpreted_matches_xla_with_gradients():
  q, k, v = _qkv(b=1, length=256, h=2, k=64, seed=1)
  np.testing.assert_allclose(attention.attend(q, k, v, "splash", interpret=True),
                             np_causal_attention(q, k, v), atol=2e-5)
  f = lambda impl: jax.grad(lambda *a: (attention.attend(*a, impl, interpret=True) ** 2).sum(),
                            (0, 1, 2))(q, k, v)
  for a, b in zip(f("splash"), f("xla")):
    np.testing.assert_allclose(a, b, atol=5e-4, rtol=1e-4)


def test_splash_falls_back_on_lengths_it_cannot_tile():
  q, k, v = _qkv(length=96)
  np.testing.assert_allclose(attention.attend(q, k, v, "splash", interpret=True),
                             np_causal_attention(q, k, v), atol=2e-5)


def _mesh_forward(cfg, impl_kwargs, params, tokens, mesh_cfg):
  mesh = sharding_lib.make_mesh(mesh_cfg, jax.devices())
  rules = tuple(tuple(r) for r in mesh_cfg.rules)
  m = model_lib.Transformer(cfg, platform="cpu", **impl_kwargs)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(lambda p, t: m.apply({"params": p}, t))(params, tokens)


@pytest.mark.parametrize("mesh", [dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=2, tensor=2)])
def test_splash_in_the_model_on_the_8_device_mesh_equals_xla(mesh):
  cfg = model_lib.ModelConfig(vocab_size=128, d_model=64, num_layers=1, num_heads=2,
                              head_dim=32, mlp_dim=128, max_len=128, unembed_init_scale=1.0)
  tokens = jax.random.randint(jax.random.key(0), (8, 128), 1, 128)
  params = model_lib.Transformer(cfg).init(jax.random.key(1), tokens)["params"]
  params = nn.meta.unbox(params)
  mesh_cfg = sharding_lib.MeshConfig(**mesh)
  want = _mesh_forward(cfg, {}, params, tokens, mesh_cfg)
  got = _mesh_forward(dataclasses.replace(cfg, attention="splash"), {"interpret": True},
                      params, tokens, mesh_cfg)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_equals_plain_loss_and_numpy(tied):
  cfg = model_lib.ModelConfig(vocab_size=256, d_model=32, num_layers=1, num_heads=2,
                              head_dim=16, mlp_dim=64, max_len=64, unembed_init_scale=1.0,
                              tied_embeddings=tied)
  targets = jax.random.randint(jax.random.key(0), (3, 64), 0, 256)   # some 0s: padding
  plain = model_lib.Transformer(cfg)
  chunked = model_lib.Transformer(dataclasses.replace(cfg, loss_chunk=16))
  params = nn.meta.unbox(plain.init(jax.random.key(1), targets)["params"])

  def total(model, p):
    loss, mask = loss_lib.per_token_loss(model, p, loss_lib.unpacked(targets))
    return loss.sum() / mask.sum(), loss

  (l0, tok0), g0 = jax.value_and_grad(lambda p: total(plain, p), has_aux=True)(params)
  (l1, tok1), g1 = jax.value_and_grad(lambda p: total(chunked, p), has_aux=True)(params)
  np.testing.assert_allclose(tok1, tok0, atol=1e-5)
  inputs, positions, mask = loss_lib.model_inputs(loss_lib.unpacked(targets))
  logits = plain.apply({"params": params}, inputs, positions,
                       loss_lib.unpacked(targets)["segment_ids"])
  np.testing.assert_allclose(tok1, np_token_cross_entropy(logits, targets, mask), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g1, g0)


def test_chunked_loss_never_holds_the_full_logits():
  """The compiled backward pass of the chunked loss needs far less temporary
  memory than the plain one at a vocabulary where logits dominate."""
  cfg = model_lib.ModelConfig(vocab_size=32768, d_model=32, num_layers=1, num_heads=2,
                              head_dim=16, mlp_dim=64, max_len=256, unembed_init_scale=1.0)
  targets = jax.ShapeDtypeStruct((4, 256), jnp.int32)

  def temp_bytes(chunk):
    m = model_lib.Transformer(dataclasses.replace(cfg, loss_chunk=chunk))
    params = jax.eval_shape(lambda: nn.meta.unbox(
        m.init(jax.random.key(0), jnp.zeros((1, 256), jnp.int32))["params"]))
    f = jax.jit(jax.grad(lambda p, t: loss_lib.per_token_loss(m, p, loss_lib.unpacked(t))[0]
                         .sum()))
    return f.lower(params, targets).compile().memory_analysis().temp_size_in_bytes

  full_logits = 4 * 256 * 32768 * 4
  plain, chunked = temp_bytes(0), temp_bytes(32)
  assert plain >= full_logits and chunked < full_logits / 2 and plain > 4 * chunked, \
      (plain, chunked)


def test_loss_chunk_must_divide_the_sequence():
  from doremi_jax import state as state_lib
  with pytest.raises(ConfigError, match="loss_chunk=48 must divide TrainConfig.seq_len=128"):
    state_lib.build_setup(128, state_lib.TrainConfig(seq_len=128, global_batch_size=8),
                          model_cfg=model_lib.ModelConfig(loss_chunk=48, max_len=128))
