"""AdamW with linear warmup and cosine/linear decay, plus gradient clipping."""

from __future__ import annotations

import dataclasses

import gin
import jax
import optax

from doremi_jax.config import check, check_number

SCHEDULES = ("cosine", "linear", "constant")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 3e-3
  warmup_steps: int = 20
  schedule: str = "cosine"          # cosine | linear | constant
  end_learning_rate_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1         # applied to matrices only, not norms
  grad_clip_norm: float = 1.0       # 0 disables clipping

  def __post_init__(self):
    check_number("OptimizerConfig.learning_rate", self.learning_rate, low=0, low_open=True)
    check_number("OptimizerConfig.warmup_steps", self.warmup_steps, integer=True, low=0)
    check(isinstance(self.schedule, str) and self.schedule in SCHEDULES,
          f"OptimizerConfig.schedule must be 'cosine', 'linear' or 'constant', "
          f"got {self.schedule!r}.")
    check_number("OptimizerConfig.end_learning_rate_fraction",
                 self.end_learning_rate_fraction, low=0, high=1)
    check_number("OptimizerConfig.b1", self.b1, low=0, high=1, high_open=True)
    check_number("OptimizerConfig.b2", self.b2, low=0, high=1, high_open=True)
    check_number("OptimizerConfig.eps", self.eps, low=0, low_open=True)
    check_number("OptimizerConfig.weight_decay", self.weight_decay, low=0)
    check_number("OptimizerConfig.grad_clip_norm", self.grad_clip_norm, low=0)  # 0: no clipping


def learning_rate_schedule(cfg: OptimizerConfig, num_steps: int):
  warmup = min(cfg.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  end = cfg.learning_rate * cfg.end_learning_rate_fraction
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps,
                                        alpha=cfg.end_learning_rate_fraction)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(cfg.learning_rate, end, decay_steps)
  else:  # "constant"; OptimizerConfig checks the name when it is constructed.
    decay = optax.constant_schedule(cfg.learning_rate)
  warm = optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1))
  return optax.join_schedules([warm, decay], [warmup])


def make_optimizer(cfg: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adamw(learning_rate_schedule(cfg, num_steps), b1=cfg.b1, b2=cfg.b2,
                           eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
