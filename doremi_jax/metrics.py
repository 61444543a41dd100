"""Metrics: JSONL + TensorBoard summaries + a console progress line.

Only process 0 writes. Values may be scalars, per-domain vectors or nested
lists (a swarm's members); per-domain vectors are logged to TensorBoard as
`name/<domain>`, nested lists to metrics.jsonl only.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np

from doremi_jax import files
from doremi_jax import rundir


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


class MetricsWriter:

  def __init__(self, workdir: str, domains: Sequence[str], stage: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = files.path(workdir) / rundir.METRICS_LOG
    self.domains = list(domains)
    self.stage = stage
    self._tb = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(files.path(workdir) / rundir.TENSORBOARD))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    row = {"step": int(step), "timestamp": time.time()}
    row.update({k: _to_python(v) for k, v in metrics.items()})
    files.append_jsonl(self.path, row)
    if self._tb is not None:
      for k, v in row.items():
        if k in ("step", "timestamp"):
          continue
        if (isinstance(v, list) and len(v) == len(self.domains) and
            all(isinstance(x, (int, float)) for x in v)):
          for d, x in zip(self.domains, v):
            self._tb.add_scalar(f"{self.stage}/{k}/{d}", x, int(step))
        elif isinstance(v, (int, float)):
          self._tb.add_scalar(f"{self.stage}/{k}", v, int(step))

  def flush(self):
    if self._tb is not None:
      self._tb.flush()


class Progress:
  """`[stage] step 120/300 ████░░░░ loss 2.314 | 41.2k tok/s | ETA 0:00:37`."""

  def __init__(self, stage: str, start_step: int, total_steps: int, tokens_per_step: int,
               stream=None):
    self.stage, self.total = stage, total_steps
    self.tokens_per_step = tokens_per_step
    self.stream = stream or sys.stdout
    self.enabled = jax.process_index() == 0
    self._t0, self._s0 = None, start_step

  def start_timing(self, step: int):
    """Call after the first (compiling) step so throughput excludes compile."""
    self._t0, self._s0 = time.perf_counter(), step

  def line(self, step: int, loss: Optional[float]) -> str:
    frac = step / max(self.total, 1)
    bar = "█" * int(20 * frac) + "░" * (20 - int(20 * frac))
    parts = [f"[{self.stage}] step {step}/{self.total} {bar}"]
    if loss is not None:
      parts.append(f"loss {loss:.4f}")
    if self._t0 is not None and step > self._s0:
      dt = time.perf_counter() - self._t0
      rate = (step - self._s0) / dt
      parts.append(f"{rate * self.tokens_per_step / 1e3:.1f}k tok/s")
      eta = (self.total - step) / rate if rate > 0 else math.inf
      parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta)) if math.isfinite(eta) else '?'}")
    return " | ".join(parts)

  def update(self, step: int, loss: Optional[float]):
    if self.enabled:
      print(self.line(step, loss), file=self.stream, flush=True)
