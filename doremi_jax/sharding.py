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
import numbers
from typing import Sequence

import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from doremi_jax.config import ConfigError, check

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

  def __post_init__(self):
    sizes = dict(zip(MESH_AXES, self.shape))
    for name, size in sizes.items():
      is_int = isinstance(size, numbers.Integral) and not isinstance(size, bool)
      check(is_int and (size > 0 or size == -1),
            f"MeshConfig.{name} must be a positive integer or -1 (filled from the device "
            f"count), got {size!r}.")
    check(list(sizes.values()).count(-1) <= 1,
          "at most one of MeshConfig.data/fsdp/tensor may be -1 (filled from the device "
          f"count), got {', '.join(f'{n}={s}' for n, s in sizes.items())}.")
    # Gin files give lists where tuples are expected: store nested tuples.
    object.__setattr__(self, "rules", normalize_rules(self.rules))

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)


def normalize_rules(rules) -> tuple:
  """Checks logical-axis rules and returns them as nested tuples.

  Each rule is a `(logical_name, mesh_axes)` pair; `mesh_axes` is one of
  MESH_AXES, a tuple (or list) of them, or None (replicated)."""
  valid = ", ".join(repr(a) for a in MESH_AXES)
  example = "e.g. ('embed', 'fsdp') or ('act_batch', ('data', 'fsdp'))"
  check(isinstance(rules, (tuple, list)),
        f"MeshConfig.rules must be a list of (logical_name, mesh_axes) pairs ({example}), "
        f"got {rules!r}.")
  out = []
  for rule in rules:
    check(isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
          and rule[0],
          f"every entry of MeshConfig.rules must be a (logical_name, mesh_axes) pair "
          f"({example}), got {rule!r}.")
    name, axes = rule
    many = isinstance(axes, (tuple, list))
    for axis in (axes if many else [axes] if axes is not None else []):
      check(isinstance(axis, str) and axis in MESH_AXES,
            f"MeshConfig.rules maps {name!r} to unknown mesh axis {axis!r}; the mesh axes "
            f"are {valid} (or None to replicate).")
    if many:
      check(len(set(axes)) == len(axes),
            f"MeshConfig.rules maps {name!r} to {tuple(axes)!r}, which repeats a mesh axis; "
            "name each mesh axis at most once.")
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


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
