"""Every value a user can set in the gin configurables that cannot work is
rejected where the config is read, with a ConfigError naming the field."""

import math

import gin
import pytest

from doremi_jax import config as config_lib
from doremi_jax import distributed
from doremi_jax import model as model_lib
from doremi_jax import optimizer as opt_lib
from doremi_jax import sharding as sharding_lib
from doremi_jax.config import ConfigError

NAN, INF = math.nan, math.inf


def test_defaults_construct():
  model_lib.ModelConfig()
  opt_lib.OptimizerConfig()
  sharding_lib.MeshConfig()


@pytest.mark.parametrize("kw", [
    dict(vocab_size=256), dict(vocab_size=None), dict(compute_dtype="bfloat16"),
    dict(compute_dtype="float16", param_dtype="bfloat16"), dict(head_dim=2),
    dict(rope_theta=500_000), dict(unembed_init_scale=1.0), dict(remat=True, scan_layers=True),
    dict(tied_embeddings=True), dict(norm_eps=1e-5),
])
def test_model_config_valid(kw):
  model_lib.ModelConfig(**kw)


@pytest.mark.parametrize("field,value", [
    (f, v) for f in ("d_model", "num_layers", "num_heads", "head_dim", "mlp_dim", "max_len",
                     "vocab_multiple")
    for v in (0, -4, 64.0, "64", True, None)
] + [
    ("head_dim", 15),
    ("vocab_size", 0), ("vocab_size", -1), ("vocab_size", 256.0), ("vocab_size", "256"),
    ("rope_theta", 0), ("rope_theta", -1.0), ("rope_theta", INF), ("rope_theta", NAN),
    ("rope_theta", "1e4"),
    ("norm_eps", 0), ("norm_eps", -1e-6), ("norm_eps", INF),
    ("unembed_init_scale", -0.1), ("unembed_init_scale", NAN), ("unembed_init_scale", None),
    ("compute_dtype", "bf16"), ("compute_dtype", "int32"), ("compute_dtype", "float8_e4m3fn"),
    ("compute_dtype", None), ("compute_dtype", 3),
    ("param_dtype", "fp32"), ("param_dtype", "complex64"), ("param_dtype", "bool"),
    ("remat", 1), ("remat", "True"), ("scan_layers", None), ("tied_embeddings", "yes"),
])
def test_model_config_rejects(field, value):
  with pytest.raises(ConfigError, match=rf"ModelConfig\.{field}\b"):
    model_lib.ModelConfig(**{field: value})


def test_model_config_messages():
  with pytest.raises(ConfigError, match=r"^ModelConfig\.head_dim must be even .*got 15\.(\n|$)"):
    model_lib.ModelConfig(head_dim=15)
  with pytest.raises(ConfigError, match="ModelConfig.d_model must be a positive integer, got 0."):
    model_lib.ModelConfig(d_model=0)
  with pytest.raises(ConfigError, match="'float32', 'bfloat16'.*got 'bf16'"):
    model_lib.ModelConfig(compute_dtype="bf16")


def test_model_config_replace_is_checked():
  with pytest.raises(ConfigError, match="ModelConfig.vocab_size"):
    model_lib.ModelConfig(vocab_size=0)
  assert model_lib.ModelConfig().with_data_vocab(259).vocab_size == 384


@pytest.mark.parametrize("kw", [
    dict(schedule="linear"), dict(schedule="constant"), dict(warmup_steps=0),
    dict(end_learning_rate_fraction=0), dict(end_learning_rate_fraction=1), dict(b1=0),
    dict(b2=0.999), dict(weight_decay=0), dict(grad_clip_norm=0), dict(learning_rate=1),
])
def test_optimizer_config_valid(kw):
  opt_lib.make_optimizer(opt_lib.OptimizerConfig(**kw), 10)


@pytest.mark.parametrize("field,value", [
    ("learning_rate", 0), ("learning_rate", -1e-3), ("learning_rate", INF),
    ("learning_rate", NAN), ("learning_rate", "3e-3"), ("learning_rate", None),
    ("warmup_steps", -1), ("warmup_steps", 2.5), ("warmup_steps", 20.0), ("warmup_steps", None),
    ("schedule", "cos"), ("schedule", "Cosine"), ("schedule", None),
    ("end_learning_rate_fraction", -0.1), ("end_learning_rate_fraction", 1.5),
    ("end_learning_rate_fraction", NAN),
    ("b1", -0.1), ("b1", 1), ("b1", 1.0), ("b2", 1.5), ("b2", 1.0), ("b2", NAN),
    ("eps", 0), ("eps", -1e-8), ("eps", INF),
    ("weight_decay", -0.1), ("weight_decay", INF), ("weight_decay", "0.1"),
    ("grad_clip_norm", -1), ("grad_clip_norm", NAN), ("grad_clip_norm", None),
])
def test_optimizer_config_rejects(field, value):
  with pytest.raises(ConfigError, match=rf"OptimizerConfig\.{field}\b"):
    opt_lib.OptimizerConfig(**{field: value})


def test_optimizer_config_messages():
  with pytest.raises(ConfigError,
                     match=r"^OptimizerConfig\.b2 must be in \[0, 1\), got 1\.5\.(\n|$)"):
    opt_lib.OptimizerConfig(b2=1.5)
  with pytest.raises(ConfigError, match="'cosine', 'linear' or 'constant', got 'cos'"):
    opt_lib.OptimizerConfig(schedule="cos")


@pytest.mark.parametrize("kw", [
    dict(data=1, fsdp=1, tensor=1), dict(data=2, fsdp=-1, tensor=2),
    dict(rules=[["vocab", "tensor"], ["act_batch", ["data", "fsdp"]], ["kv", None]]),
    dict(rules=[("embed", ("fsdp",)), ("mlp", "tensor")]), dict(rules=()),
])
def test_mesh_config_valid(kw):
  sharding_lib.MeshConfig(**kw)


def test_mesh_config_rules_lists_become_tuples():
  cfg = sharding_lib.MeshConfig(rules=[["vocab", "tensor"], ["act_batch", ["data", "fsdp"]],
                                       ["kv", None]])
  assert cfg.rules == (("vocab", "tensor"), ("act_batch", ("data", "fsdp")), ("kv", None))
  assert sharding_lib.MeshConfig().rules == sharding_lib.DEFAULT_RULES


@pytest.mark.parametrize("field,value", [
    (f, v) for f in ("data", "fsdp", "tensor") for v in (0, -2, 2.0, "2", None, True)
])
def test_mesh_config_rejects_sizes(field, value):
  with pytest.raises(ConfigError, match=rf"MeshConfig\.{field}\b"):
    sharding_lib.MeshConfig(**{field: value})


def test_mesh_config_at_most_one_fill():
  with pytest.raises(ConfigError, match="at most one of MeshConfig.data/fsdp/tensor"):
    sharding_lib.MeshConfig(data=-1, fsdp=-1)


@pytest.mark.parametrize("rules", [
    "vocab:tensor", None, [("vocab",)], [("vocab", "tensor", "x")], ["vocab"],
    [(None, "tensor")], [("", "tensor")], [(3, "tensor")],
    [("vocab", "model")], [("act_batch", ("data", "expert"))], [("vocab", 0)],
    [("act_batch", ("data", "data"))], [("act_batch", ("data", None))],
])
def test_mesh_config_rejects_rules(rules):
  with pytest.raises(ConfigError, match=r"MeshConfig\.rules"):
    sharding_lib.MeshConfig(rules=rules)


def test_mesh_config_unknown_axis_lists_valid_ones():
  with pytest.raises(ConfigError, match="unknown mesh axis 'model'.*'data', 'fsdp', 'tensor'"):
    sharding_lib.MeshConfig(rules=[("vocab", "model")])


@pytest.fixture
def no_dist_env(monkeypatch):
  for var in ("DOREMI_COORDINATOR_ADDRESS", "DOREMI_NUM_PROCESSES", "DOREMI_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  # Never touch jax.distributed from these tests.
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda *a, **k: pytest.fail("jax.distributed.initialize called"))
  monkeypatch.setattr(distributed, "on_tpu_vm", lambda: False)


def test_initialize_defaults_do_nothing(no_dist_env):
  assert distributed.initialize() is False
  assert distributed.initialize(cpu_collectives="mpi") is False


@pytest.mark.parametrize("kw,field", [
    (dict(cpu_collectives="nccl"), "cpu_collectives"),
    (dict(cpu_collectives=None), "cpu_collectives"),
    (dict(num_processes=0), "num_processes"),
    (dict(num_processes=-2), "num_processes"),
    (dict(num_processes=2.0), "num_processes"),
    (dict(process_id=-1), "process_id"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0),
     "coordinator_address"),
    (dict(coordinator_address="localhost:http", num_processes=2, process_id=0),
     "coordinator_address"),
    (dict(coordinator_address="localhost:70000", num_processes=2, process_id=0),
     "coordinator_address"),
    (dict(coordinator_address=":1234", num_processes=2, process_id=0), "coordinator_address"),
    (dict(coordinator_address="10.0.0.1:1234", num_processes=0, process_id=0),
     "num_processes"),
    (dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=2), "process id"),
])
def test_initialize_rejects(no_dist_env, kw, field):
  with pytest.raises(ConfigError, match=field):
    distributed.initialize(**kw)


def test_initialize_rejects_bad_env(no_dist_env, monkeypatch):
  monkeypatch.setenv("DOREMI_COORDINATOR_ADDRESS", "10.0.0.1:8476")
  monkeypatch.setenv("DOREMI_NUM_PROCESSES", "two")
  monkeypatch.setenv("DOREMI_PROCESS_ID", "0")
  with pytest.raises(ConfigError, match="DOREMI_NUM_PROCESSES must be an integer"):
    distributed.initialize()
  monkeypatch.setenv("DOREMI_NUM_PROCESSES", "2")
  monkeypatch.setenv("DOREMI_COORDINATOR_ADDRESS", "10.0.0.1")
  with pytest.raises(ConfigError, match="DOREMI_COORDINATOR_ADDRESS"):
    distributed.initialize()


def test_initialize_valid_address_reaches_jax(no_dist_env, monkeypatch):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda *a: calls.append(a))
  monkeypatch.setattr(distributed.jax.config, "update", lambda *a: calls.append(a))
  assert distributed.initialize("[::1]:8476", 2, 1, cpu_collectives="gloo")
  assert calls == [("jax_cpu_collectives_implementation", "gloo"), ("[::1]:8476", 2, 1)]


def test_gin_binding_of_bad_value_raises_on_construction():
  config_lib.parse_gin([], ["ModelConfig.d_model = 0"])
  with pytest.raises(ConfigError, match="ModelConfig.d_model must be a positive integer"):
    model_lib.ModelConfig()


def test_gin_lists_are_accepted():
  config_lib.parse_gin([], [
      "MeshConfig.rules = [['vocab', 'tensor'], ['act_batch', ['data', 'fsdp']]]",
      "OptimizerConfig.learning_rate = 1",
      "ModelConfig.compute_dtype = 'bfloat16'",
  ])
  assert sharding_lib.MeshConfig().rules == (("vocab", "tensor"), ("act_batch", ("data", "fsdp")))
  assert opt_lib.OptimizerConfig().learning_rate == 1
  assert model_lib.ModelConfig().compute_dtype == "bfloat16"
  gin.clear_config()
  config_lib.parse_gin([], ["MeshConfig.rules = [('vocab', 'model')]"])
  with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
    sharding_lib.MeshConfig()
