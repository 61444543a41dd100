r"""Check that a config fits a TPU slice before you rent it.

    python -m doremi_jax.compile_check --gin_file gin/pod/doremi_280m_8b.gin \
        --gin_file gin/mesh/v5p-64.gin [--stage proxy]

Ahead-of-time compiles the train step of each stage the gin files configure
exactly as that stage would build it (the stage runs in build-only mode and
hands over its step program: the LM step of `reference`/`main`, with an
online mixer and its reference's forward where `train_main_model.mixer`
says; the Group-DRO step of `proxy`; the swarm's vmapped step; for a
`pipeline`, each kind under its gin scope) for a TPU topology, on any
machine with `libtpu` installed (`pip install -e ".[tpu]"`), using
`jax.experimental.topologies`: no TPU is needed. Prints per-chip memory
(arguments, outputs, temporaries, generated code; total vs the chip's HBM),
whether it fits, XLA's cost-analysis flops and bytes, and a roofline
estimate of the step time. Exits with status 1 when a stage does not fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The TPU is described by libtpu, not attached: run JAX itself on the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Only topology descriptions are read from libtpu, never a device: several
# checks (or a check beside a TPU job) may load it at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import flags  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from doremi_jax import config as config_lib  # noqa: E402
from doremi_jax import main as main_lib  # noqa: E402  (--gin_file, --gin_bindings, run.*)
from doremi_jax.cli import native_stderr_dropped, run_tool  # noqa: E402
from doremi_jax.config import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p-64 (overrides compile_check.topology).")
flags.DEFINE_string("stage", None, "reference, proxy, main or swarm (default: what run.stage "
                    "says; all three DoReMi steps for a pipeline).")


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_bf16_flops: float     # per chip, per second
  hbm_bandwidth: float       # bytes per second


# Public per-chip figures (Cloud TPU documentation).
CHIPS = {
    "v4": Chip("TPU v4", 32 * 2**30, 275e12, 1228e9),
    "v5e": Chip("TPU v5e", 16 * 2**30, 197e12, 819e9),
    "v5p": Chip("TPU v5p", 95 * 2**30, 459e12, 2765e9),
    "v6e": Chip("TPU v6e", 32 * 2**30, 918e12, 1640e9),
}

# Slice name -> (chip generation, physical topology of chips). Slice names
# count TensorCores for v4/v5p (2 per chip) and chips for v5e/v6e.
SLICES = {
    "v4-8": ("v4", "2x2x1"),
    "v4-16": ("v4", "2x2x2"),
    "v4-32": ("v4", "2x2x4"),
    "v4-64": ("v4", "2x4x4"),
    "v5e-4": ("v5e", "2x2"),
    "v5e-8": ("v5e", "2x4"),
    "v5e-16": ("v5e", "4x4"),
    "v5e-32": ("v5e", "4x8"),
    "v5e-64": ("v5e", "8x8"),
    "v5e-256": ("v5e", "16x16"),
    "v5p-8": ("v5p", "2x2x1"),
    "v5p-16": ("v5p", "2x2x2"),
    "v5p-32": ("v5p", "2x2x4"),
    "v5p-64": ("v5p", "2x4x4"),
    "v5p-128": ("v5p", "4x4x4"),
    "v5p-256": ("v5p", "4x4x8"),
    "v6e-8": ("v6e", "2x4"),
    "v6e-16": ("v6e", "4x4"),
}
# jax.experimental.topologies names for each generation.
_TOPOLOGY_PREFIX = {"v4": "v4", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}


def topology_devices(slice_name: str):
  """The (abstract) devices of a TPU slice, from libtpu (no TPU needed), and
  the per-device figures: a v4 chip shows up as two devices of one
  TensorCore each, with half the chip's HBM and flops."""
  if slice_name not in SLICES:
    raise ConfigError(f"unknown TPU slice {slice_name!r}; choose one of {sorted(SLICES)}.")
  gen, topo = SLICES[slice_name]
  try:
    from jax.experimental import topologies
    with native_stderr_dropped():
      desc = topologies.get_topology_desc(f"{_TOPOLOGY_PREFIX[gen]}:{topo}", "tpu")
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        f"cannot describe the TPU topology {slice_name} ({gen}:{topo}): "
        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}\n"
        "Install libtpu with `pip install -e \".[tpu]\"` (no TPU is needed).") from e
  devices = list(desc.devices)
  chips = int(np.prod([int(x) for x in topo.split("x")]))
  per_chip = len(devices) // chips
  chip = CHIPS[gen]
  if per_chip > 1:
    chip = Chip(f"{chip.name} TensorCore", chip.hbm_bytes // per_chip,
                chip.peak_bf16_flops / per_chip, chip.hbm_bandwidth / per_chip)
  return devices, chip


@dataclasses.dataclass
class Result:
  stage: str
  program: str                # the step program's name ('lm', 'dro', 'lm+doremi_online', ...)
  slice_name: str
  chip: Chip
  num_devices: int
  mesh: dict
  num_params: int
  tokens_per_step: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: Optional[float]
  bytes_accessed: Optional[float]
  model_flops_per_device: float
  compiler_error: Optional[str] = None   # XLA's out-of-memory message
  attention: str = "xla"                 # the attention kernel compiled
  loss_chunk: int = 0                    # ModelConfig.loss_chunk (0: whole logits)
  vocab_size: int = 0

  @property
  def total_bytes(self) -> int:
    # Donated state: outputs that alias arguments take no extra memory.
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + \
        self.code_bytes

  @property
  def fits(self) -> bool:
    return self.compiler_error is None and self.total_bytes <= self.chip.hbm_bytes

  @property
  def step_seconds(self) -> float:
    """Roofline lower bound: the larger of compute time (model flops or
    XLA's count, whichever is larger, at peak) and HBM traffic time. XLA
    counts a while loop's body once, so with scanned layers its flops are
    far below the model's."""
    t = max(self.model_flops_per_device, self.flops or 0.0) / self.chip.peak_bf16_flops
    if self.bytes_accessed:
      t = max(t, self.bytes_accessed / self.chip.hbm_bandwidth)
    return t

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["chip"] = self.chip.name
    d.update(total_bytes=self.total_bytes, fits=self.fits, step_seconds=self.step_seconds)
    return d

  def format(self) -> str:
    gib = lambda b: f"{b / 2**30:8.2f} GiB"
    lines = [
        f"== {self.stage} on {self.slice_name} ({self.num_devices} x {self.chip.name}), "
        f"{self.program} step, "
        f"mesh {self.mesh}, {self.num_params / 1e6:.2f}M params, "
        f"{self.tokens_per_step} tokens/step",
        f"  attention {self.attention}; vocabulary {self.vocab_size}; loss "
        + (f"in chunks of {self.loss_chunk} positions" if self.loss_chunk else
           "over the whole fp32 logits (ModelConfig.loss_chunk = 0)"),
        f"  per-device memory: arguments {gib(self.argument_bytes)} | outputs "
        f"{gib(self.output_bytes)} (aliased {gib(self.alias_bytes).strip()}) | temporaries "
        f"{gib(self.temp_bytes)} | code {gib(self.code_bytes)}",
        f"  total {gib(self.total_bytes).strip()} of {gib(self.chip.hbm_bytes).strip()} HBM "
        f"({100 * self.total_bytes / self.chip.hbm_bytes:.0f}%): "
        + ("FITS" if self.fits else "DOES NOT FIT"),
    ]
    if self.compiler_error:
      lines.append(f"  XLA: {self.compiler_error}")
    lines.append(
        f"  flops per device: model {self.model_flops_per_device / 1e12:.2f} TFLOP"
        + (f", XLA cost analysis {self.flops / 1e12:.2f} TFLOP (loop bodies counted once)"
           if self.flops else "")
        + (f", {self.bytes_accessed / 1e9:.1f} GB accessed" if self.bytes_accessed else ""))
    lines.append(f"  step time at peak (roofline lower bound): {self.step_seconds * 1e3:.1f} ms; "
                 f"{self.tokens_per_step / self.step_seconds / 1e3:.0f}k tokens/s")
    return "\n".join(lines)


def _cost(compiled) -> tuple[Optional[float], Optional[float]]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  flops = cost.get("flops")
  return (float(flops) if flops else None,
          float(cost["bytes accessed"]) if cost.get("bytes accessed") else None)


def build_stage_program(kind: str, kwargs: dict, devices):
  """The step program the stage `kind` would train with gin's settings (and
  `kwargs`), built on `devices` by the stage itself in build-only mode:
  nothing is read from data or written (it builds in a scratch directory
  that must stay empty)."""
  from doremi_jax import context
  from doremi_jax.stages import registry
  with tempfile.TemporaryDirectory(prefix="doremi_compile_check_") as scratch:
    with context.using(devices=devices):
      program = context.build_program(lambda: registry.get(kind)(scratch, **kwargs))
    if os.listdir(scratch):
      raise RuntimeError(f"building the {kind} program wrote {os.listdir(scratch)}")
  return program


def check_stage(stage: str, slice_name: str, devices, chip: Chip, kwargs=None,
                inner: Optional[str] = None) -> Result:
  """AOT-compiles the step program stage kind `stage` trains, on `devices`
  (a TPU topology); `inner`: under that inner scope (`registry.inner_scope`:
  a ladder rung's main runs), reported as STAGE@SCOPE."""
  from doremi_jax.stages import registry
  from doremi_jax.state import TrainConfig

  with contextlib.ExitStack() as scopes:
    for scope in [stage] + ([inner] if inner is not None else []):
      scopes.enter_context(gin.config_scope(scope))
    cfg = TrainConfig()
  with registry.inner_scope(inner) if inner is not None else contextlib.nullcontext():
    program = build_stage_program(stage, kwargs or {}, devices)
  stage = stage if inner is None else f"{stage}@{inner}"
  setup = program.setup
  tokens = cfg.tokens_per_step * int(np.prod(program.batch_prefix, dtype=np.int64))
  common = dict(stage=stage, program=program.name, slice_name=slice_name, chip=chip,
                num_devices=len(devices), mesh=dict(setup.mesh.shape),
                num_params=setup.model_cfg.num_params(), tokens_per_step=tokens,
                model_flops_per_device=program.flops_per_token * tokens / len(devices),
                attention=setup.model.attention_impl, loss_chunk=setup.model_cfg.loss_chunk,
                vocab_size=setup.model_cfg.vocab_size)
  try:
    with native_stderr_dropped():
      compiled = program.lower(cfg.global_batch_size, cfg.seq_len).compile()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text:
      raise
    # The TPU compiler refuses programs that cannot fit; report its numbers.
    m = re.search(r"required for [^(]*\(([\d.]+)([KMGT])\)", text)
    temp = int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024) if m else 0
    arg_bytes = _per_device_bytes((program.abstract_state,
                                   program.abstract_batch(cfg.global_batch_size, cfg.seq_len),
                                   *program.extra))
    return Result(argument_bytes=arg_bytes, output_bytes=0, alias_bytes=0, temp_bytes=temp,
                  code_bytes=0, flops=None, bytes_accessed=None,
                  compiler_error=text.strip().splitlines()[0][:400], **common)
  mem = compiled.memory_analysis()
  flops, bytes_accessed = _cost(compiled)
  return Result(
      argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      code_bytes=int(mem.generated_code_size_in_bytes), flops=flops,
      bytes_accessed=bytes_accessed, **common)


def _per_device_bytes(tree) -> int:
  """Bytes of one device's shards of abstract arrays with shardings."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


@gin.configurable
def compile_check(topology: str = gin.REQUIRED, stages=None) -> list:
  """Compiles the step program of each stage kind for `topology` (default:
  the kinds `run.stage` trains, e.g. all three of a pipeline); returns the
  Results."""
  from doremi_jax.stages import registry
  run = gin.query_parameter("run.stage") if "run.stage" in gin.config_str() else "reference"
  kinds = list(registry.get(run).compiled)
  if stages is not None:
    known = {kind: kwargs for kind, kwargs, *_ in kinds}
    for s in stages:
      registry.get(s)   # a stage name, else ConfigError
      if registry.get(s).runs:
        raise ConfigError(f"stage {s!r} runs other stages; compile one of its kinds "
                          f"({', '.join(k for k, *_ in registry.get(s).compiled)}).")
    kinds = [(s, known.get(s, {})) for s in stages]
  devices, chip = topology_devices(topology)
  results = []
  for kind, kwargs, *inner in kinds:
    results.append(check_stage(kind, topology, devices, chip, kwargs, *inner))
    print(results[-1].format(), flush=True)
  return results


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}")
  main_lib.register_configurables()
  config_lib.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
  kwargs = {}
  if FLAGS.topology:
    kwargs["topology"] = FLAGS.topology
  if FLAGS.stage:
    kwargs["stages"] = [FLAGS.stage]
  try:
    results = compile_check(**kwargs)
  except (ValueError, TypeError, RuntimeError) as e:
    if "Required bindings" in str(e) and "topology" in str(e):
      raise ConfigError("no TPU slice given; pass --topology (e.g. v5p-64) or include a "
                        "gin/mesh/*.gin preset.") from e
    raise
  bad = [r for r in results if not r.fits]
  if bad:
    print(f"{len(bad)} stage(s) do not fit: " + ", ".join(r.stage for r in bad)
          + ". Use a bigger slice, more FSDP (MeshConfig.fsdp), a smaller "
          "TrainConfig.global_batch_size per step with grad_accum_steps, or remat.",
          file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  run_tool(main, gin_args=True)
