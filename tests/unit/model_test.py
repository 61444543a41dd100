import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from doremi_jax import model as model_lib
from doremi_jax import sharding as sharding_lib
from doremi_jax.config import ConfigError


def _tiny(**kw):
  return model_lib.ModelConfig(vocab_size=128, **kw)


@pytest.mark.parametrize("tied,scan", [(False, False), (True, False), (False, True)])
def test_param_count_matches_formula(tied, scan):
  cfg = _tiny(tied_embeddings=tied, scan_layers=scan)
  params = jax.eval_shape(model_lib.Transformer(cfg).init, jax.random.key(0),
                          jnp.zeros((1, 8), jnp.int32))["params"]
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(params)))
  assert n == cfg.num_params()


def test_paper_scale_sizes():
  import gin
  from doremi_jax import config as config_lib
  sizes = {}
  for name in ("280m", "1b", "8b"):
    gin.clear_config()
    config_lib.parse_gin([f"gin/models/{name}.gin"], [])
    sizes[name] = model_lib.ModelConfig().num_params()
  assert 0.25e9 < sizes["280m"] < 0.31e9, sizes
  assert 0.9e9 < sizes["1b"] < 1.2e9, sizes
  assert 7.5e9 < sizes["8b"] < 8.5e9, sizes


def test_causal():
  cfg = _tiny(unembed_init_scale=1.0)
  m = model_lib.Transformer(cfg)
  x = jax.random.randint(jax.random.key(1), (2, 16), 2, 128)
  params = nn.meta.unbox(m.init(jax.random.key(0), x))
  y1 = m.apply(params, x)
  x2 = x.at[:, 10:].set(5)
  y2 = m.apply(params, x2)
  np.testing.assert_allclose(y1[:, :10], y2[:, :10], atol=1e-5)
  assert not np.allclose(y1[:, 10:], y2[:, 10:])
  assert y1.shape == (2, 16, 128) and y1.dtype == jnp.float32


def test_zero_init_output_predicts_uniform():
  m = model_lib.Transformer(_tiny())
  x = jax.random.randint(jax.random.key(1), (2, 16), 2, 128)
  y = m.apply(nn.meta.unbox(m.init(jax.random.key(0), x)), x)
  np.testing.assert_array_equal(y, 0.0)


def test_data_vocab():
  assert model_lib.ModelConfig().with_data_vocab(259).vocab_size == 384
  with pytest.raises(ConfigError, match="vocab_size"):
    model_lib.ModelConfig(vocab_size=100).with_data_vocab(259)


def test_mesh_fill_and_errors():
  assert sharding_lib.resolve_mesh_shape(sharding_lib.MeshConfig(-1, 2, 2), 8) == (2, 2, 2)
  assert sharding_lib.resolve_mesh_shape(sharding_lib.MeshConfig(1, -1, 1), 8) == (1, 8, 1)
  with pytest.raises(ConfigError, match="needs 12 devices but 8"):
    sharding_lib.resolve_mesh_shape(sharding_lib.MeshConfig(3, 2, 2), 8)
  with pytest.raises(ConfigError, match="not divisible by 3"):
    sharding_lib.resolve_mesh_shape(sharding_lib.MeshConfig(-1, 3, 1), 8)
  with pytest.raises(ConfigError, match="at most one"):
    sharding_lib.resolve_mesh_shape(sharding_lib.MeshConfig(-1, -1, 1), 8)
