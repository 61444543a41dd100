"""Sharded training: shardings follow the rules, a 2x2x2 mesh matches one
device, gradient accumulation matches one big batch."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from doremi_jax import sharding as sharding_lib
from doremi_jax import state as state_lib
from doremi_jax import steps as steps_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import synthetic
from doremi_jax.data.synthetic_tasks import synthetic_corpus
from doremi_jax.model import ModelConfig

TINY = ModelConfig(d_model=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64)


@pytest.fixture(scope="module")
def corpus():
  return synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=32))


def _batches(corpus, n, batch_size=16, seq_len=32):
  loader = loader_lib.BatchLoader(corpus, loader_lib.MixtureAssignment([0.2] * 5, 0),
                                  batch_size, seq_len, seed=0)
  out = [loader.next()[0] for _ in range(n)]
  loader.close()
  return out


def _run(corpus, mesh_cfg, devices, batches, accum=1, steps=4):
  cfg = state_lib.TrainConfig(num_steps=steps, global_batch_size=16, seq_len=32,
                              grad_accum_steps=accum)
  setup = state_lib.build_setup(corpus.vocab_size, cfg, model_cfg=TINY, mesh_cfg=mesh_cfg,
                                devices=devices)
  program = steps_lib.lm_program(setup, corpus.num_domains, accum, cfg.seq_len)
  state = program.init(0)
  losses = []
  for b in batches[:steps]:
    state, m = program(state, state_lib.to_global(b, setup.batch_shardings))
    losses.append(np.asarray(m["loss"]))
  return setup, state, np.array(losses)


def test_params_are_sharded_as_the_rules_say(corpus):
  mesh_cfg = sharding_lib.MeshConfig(data=2, fsdp=2, tensor=2)
  setup, state, _ = _run(corpus, mesh_cfg, jax.devices(), _batches(corpus, 1), steps=1)
  p = state.params
  q = p["layer_0"]["query"]["kernel"]      # (embed, heads, kv)
  assert q.sharding.spec == P("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (TINY.d_model // 2, TINY.num_heads // 2, 8)
  assert p["layer_0"]["down"]["kernel"].sharding.spec == P("tensor", "fsdp")   # (mlp, embed)
  assert p["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")         # (vocab, embed)
  assert p["layer_0"]["attn_norm"]["scale"].sharding.spec == P(None)
  # optimizer moments are sharded like their parameters
  mu = state.opt_state[1][0].mu["layer_0"]["query"]["kernel"]
  assert mu.sharding.spec == P("fsdp", "tensor", None)
  assert len({s.device for s in q.addressable_shards}) == 8


def test_2x2x2_mesh_matches_one_device(corpus):
  batches = _batches(corpus, 4)
  _, s1, l1 = _run(corpus, sharding_lib.MeshConfig(1, 1, 1), jax.devices()[:1], batches)
  _, s8, l8 = _run(corpus, sharding_lib.MeshConfig(2, 2, 2), jax.devices(), batches)
  np.testing.assert_allclose(l8, l1, rtol=1e-5, atol=1e-5)
  assert l1[-1] < l1[0]
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_matches_full_batch(corpus):
  batches = _batches(corpus, 3)
  mesh = sharding_lib.MeshConfig(2, 2, 2)
  _, s1, l1 = _run(corpus, mesh, jax.devices(), batches, accum=1, steps=3)
  _, s4, l4 = _run(corpus, mesh, jax.devices(), batches, accum=4, steps=3)
  np.testing.assert_allclose(l4, l1, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_batch_not_divisible_by_data_parallel(corpus):
  from doremi_jax.config import ConfigError
  cfg = state_lib.TrainConfig(global_batch_size=12, seq_len=32)
  with pytest.raises(ConfigError, match="not divisible by the data-parallel size 8"):
    state_lib.build_setup(corpus.vocab_size, cfg, model_cfg=TINY, mesh_cfg=sharding_lib.MeshConfig(8, 1, 1))
  with pytest.raises(ConfigError, match="needs 16 devices but 8"):
    state_lib.build_setup(corpus.vocab_size, cfg, model_cfg=TINY, mesh_cfg=sharding_lib.MeshConfig(4, 4, 1))
