"""What a training step needs before it runs: the run's `TrainConfig`, the
`TrainState` pytree, and `ModelSetup` (model, mesh, rules, optimizer and the
abstract, sharded shape of the state).

The train state is initialised directly sharded: its abstract shape comes
from `jax.eval_shape`, its shardings from the model's logical axis names and
the gin rules, and one jitted init writes each shard where it lives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from doremi_jax import attention as attention_lib
from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import context as context_lib
from doremi_jax import model as model_lib
from doremi_jax import optimizer as opt_lib
from doremi_jax import sharding as sharding_lib
from doremi_jax.config import ConfigError, check_number


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One stage's training run. Steps, batch and sequence length are counted
  in sequences of `seq_len` tokens; `*_every` are in steps."""
  num_steps: int = 200
  global_batch_size: int = 32
  seq_len: int = 128
  seed: int = 0
  grad_accum_steps: int = 1
  log_every: int = 10
  checkpoint_every: int = 50          # 0: only the final checkpoint
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  eval_every: int = 0                 # 0: evaluate at the start and the end only
  eval_examples_per_domain: int = 128
  eval_batch_size: int = 64
  # Downstream tasks evaluated with the per-domain losses (built-in task
  # names, request files, OLMo task names: doremi_jax.tasks.registry), each
  # on its first `eval_task_examples` items of the split evaluated.
  eval_tasks: tuple = ()
  eval_task_examples: int = 256
  # Score the tasks only at step 0, every `eval_tasks_every` steps and at
  # the end (they cost more than the losses); 0: at every evaluation.
  eval_tasks_every: int = 0
  tensorboard: bool = True

  def __post_init__(self):
    positive = ("num_steps", "global_batch_size", "seq_len", "grad_accum_steps", "log_every",
                "keep_checkpoints", "eval_examples_per_domain", "eval_batch_size",
                "eval_task_examples")
    for name in positive:
      check_number(f"TrainConfig.{name}", getattr(self, name), integer=True, low=0,
                   low_open=True)
    for name in ("seed", "checkpoint_every", "eval_every", "eval_tasks_every"):
      check_number(f"TrainConfig.{name}", getattr(self, name), integer=True, low=0)
    for name in ("async_checkpointing", "tensorboard"):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f"TrainConfig.{name} must be True or False, got "
                          f"{getattr(self, name)!r}.")
    tasks = self.eval_tasks
    if (isinstance(tasks, str) or not isinstance(tasks, (tuple, list))
            or not all(isinstance(t, str) and t for t in tasks)):
      raise ConfigError(f"TrainConfig.eval_tasks must be a list of task names or request "
                        f"files, e.g. ['markov_next', 'my_task.jsonl'], got {tasks!r}.")
    object.__setattr__(self, "eval_tasks", tuple(tasks))
    if self.global_batch_size % self.grad_accum_steps:
      raise ConfigError(
          f"TrainConfig.global_batch_size={self.global_batch_size} is not divisible by "
          f"grad_accum_steps={self.grad_accum_steps}.")

  @property
  def tokens_per_step(self) -> int:
    return self.global_batch_size * self.seq_len


def train_config(seed=None) -> "TrainConfig":
  """The stage's TrainConfig (gin's, in the current scope), its seed
  replaced by `seed` when given (a study's seeds, for main runs and, with
  `train_study.method_seeds='per_seed'`, for the methods' own runs)."""
  cfg = TrainConfig()
  return cfg if seed is None else dataclasses.replace(cfg, seed=int(seed))


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def validate_batching(cfg: TrainConfig, mesh, rules):
  """The micro-batch and the eval batch must split evenly over the
  data-parallel devices and the processes."""
  dp = sharding_lib.data_parallel_size(mesh, rules)
  nproc = jax.process_count()
  micro = cfg.global_batch_size // cfg.grad_accum_steps
  for what, n in (("global_batch_size / grad_accum_steps", micro),
                  ("eval_batch_size", cfg.eval_batch_size)):
    if n % dp or n % nproc:
      raise ConfigError(
          f"TrainConfig.{what} = {n} is not divisible by the data-parallel size {dp} "
          f"(mesh {dict(mesh.shape)}, batch sharded over the axes the 'act_batch' rule "
          f"names) and the {nproc} process(es). Choose a batch size that is a multiple "
          f"of {int(np.lcm(dp, nproc))}.")


@dataclasses.dataclass
class ModelSetup:
  """Everything built from the config before any training state exists."""
  model_cfg: model_lib.ModelConfig
  model: model_lib.Transformer
  mesh: Any
  rules: tuple
  tx: optax.GradientTransformation
  lr_schedule: Callable
  init_fn: Callable             # rng -> boxed TrainState (traced under the mesh)
  abstract_state: Any           # unboxed ShapeDtypeStructs with shardings
  state_shardings: Any
  batch_shardings: dict
  opt_cfg: Any = None           # the OptimizerConfig `tx` was made from

  @contextlib.contextmanager
  def scope(self):
    """Context for tracing and running: the mesh and the logical-axis rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  @property
  def platform(self) -> str:
    return mesh_platform(self.mesh)

  @functools.cached_property
  def jitted_init(self):
    """seed key -> unboxed TrainState, written into its shards (one compile
    per setup, however many states are made)."""
    return jax.jit(lambda k: nn.meta.unbox(self.init_fn(k)), out_shardings=self.state_shardings)

  def make_model(self, model_cfg) -> model_lib.Transformer:
    """A Transformer that chooses its attention kernel for this mesh's devices."""
    return model_lib.Transformer(model_cfg, platform=self.platform)

  def abstract_params(self, model, seq_len: int):
    """(abstract params with shardings, shardings) of another `model` (e.g.
    the frozen reference) on this mesh."""
    rng, tokens = jax.random.key(0), jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    with self.scope():
      boxed = jax.eval_shape(model.init, rng, tokens)
      shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), self.mesh,
                                              self.rules)["params"]
    return ckpt_lib.abstract_with_shardings(nn.meta.unbox(boxed)["params"], shardings), \
        shardings


def mesh_platform(mesh) -> str:
  """The platform of the mesh's devices ('cpu', 'gpu', 'tpu'), also for an
  ahead-of-time compile for a topology this host does not have."""
  return mesh.devices.flat[0].platform


def build_setup(vocab_size: int, train_cfg: TrainConfig, model_cfg=None, mesh_cfg=None,
                opt_cfg=None, devices=None) -> ModelSetup:
  """Model, mesh and optimizer from their configs (gin's when not given), for
  data whose vocabulary has `vocab_size` ids, on `devices` (default: the
  caller's `context.current().devices`, else every device)."""
  model_cfg = (model_cfg or model_lib.ModelConfig()).with_data_vocab(vocab_size)
  if train_cfg.seq_len > model_cfg.max_len:
    raise ConfigError(f"TrainConfig.seq_len={train_cfg.seq_len} exceeds "
                      f"ModelConfig.max_len={model_cfg.max_len}.")
  mesh_cfg = mesh_cfg or sharding_lib.MeshConfig()
  mesh = sharding_lib.make_mesh(
      mesh_cfg, devices if devices is not None else context_lib.current().devices)
  rules = tuple(tuple(r) for r in mesh_cfg.rules)
  validate_batching(train_cfg, mesh, rules)
  opt_cfg = opt_cfg or opt_lib.OptimizerConfig()
  tx = opt_lib.make_optimizer(opt_cfg, train_cfg.num_steps)
  if model_cfg.loss_chunk and train_cfg.seq_len % model_cfg.loss_chunk:
    raise ConfigError(f"ModelConfig.loss_chunk={model_cfg.loss_chunk} must divide "
                      f"TrainConfig.seq_len={train_cfg.seq_len} (or be 0: no chunks).")
  platform = mesh_platform(mesh)
  attention_lib.choose(model_cfg.attention, platform)   # refuses what cannot run here
  model = model_lib.Transformer(model_cfg, platform=platform)

  def init_fn(rng):
    params = model.init(rng, jnp.zeros((1, train_cfg.seq_len), jnp.int32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  rng = jax.random.key(0)  # concrete, so made outside the (possibly abstract) mesh
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn, rng)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = ckpt_lib.abstract_with_shardings(nn.meta.unbox(boxed), shardings)
  batch_shardings = {"targets": sharding_lib.batch_sharding(mesh, rules, 2),
                     "segment_ids": sharding_lib.batch_sharding(mesh, rules, 2),
                     "domain_ids": sharding_lib.batch_sharding(mesh, rules, 1)}
  return ModelSetup(model_cfg, model, mesh, rules, tx,
                    opt_lib.learning_rate_schedule(opt_cfg, train_cfg.num_steps), init_fn,
                    abstract, shardings, batch_shardings, opt_cfg)


def init_state(setup: ModelSetup, seed: int) -> TrainState:
  """Initialises parameters and optimizer state directly into their shards."""
  with setup.scope():
    return setup.jitted_init(jax.random.key(seed))


def to_global(batch: dict, shardings: dict) -> dict:
  """Assembles the global batch from each process's local rows."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}
