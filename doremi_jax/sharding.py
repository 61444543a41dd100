"""Device mesh and logical-axis sharding rules (MaxText style).

The model names logical axes; `MeshConfig.rules` maps them to the mesh axes
`data`, `fsdp` and `tensor`. Changing the parallelism is a gin change only.

Parameter axes:  vocab, embed, heads, kv, mlp
Activation axes: act_batch, act_length, act_embed, act_heads, act_kv,
                 act_mlp, act_vocab
(Activations use their own names so that e.g. `embed` can be sharded over
`fsdp` in the weights while the batch is sharded over `fsdp` in activations.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from doremi_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes; at most one may be -1 (filled from the device count)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  rules: tuple = DEFAULT_RULES

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
  shape = list(cfg.shape)
  desc = ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, shape))
  if any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"mesh sizes must be positive or -1, got {desc}.")
  if shape.count(-1) > 1:
    raise ConfigError(
        f"at most one mesh axis may be -1 (filled from the device count), got {desc}.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(
          f"the mesh ({desc}) does not fit the {num_devices} available devices: "
          f"{num_devices} is not divisible by {known}. Set MeshConfig sizes whose "
          f"product divides {num_devices}.")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(
        f"the mesh ({desc}) needs {math.prod(shape)} devices but {num_devices} are "
        f"available. Set MeshConfig.data/fsdp/tensor so that their product is "
        f"{num_devices}, or set one of them to -1.")
  return tuple(shape)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(cfg, len(devices))
  try:
    dev_array = mesh_utils.create_device_mesh(
        shape, devices=devices, allow_split_physical_axes=True)
  except (ValueError, AssertionError, NotImplementedError):
    dev_array = np.asarray(devices).reshape(shape)
  return Mesh(dev_array, MESH_AXES)


def data_parallel_size(mesh: Mesh, rules) -> int:
  """Number of ways the batch dimension is split."""
  axes = dict(rules).get("act_batch")
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_sharding(logical_spec, mesh: Mesh, rules) -> NamedSharding:
  import flax.linen as nn
  return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_spec, rules))


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  spec = ("act_batch",) + (None,) * (ndim - 1)
  return logical_to_sharding(spec, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
