"""Multi-host initialisation (`jax.distributed`)."""

from __future__ import annotations

import os
from typing import Optional

import gin
import jax


@gin.configurable
def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_collectives: str = "gloo"):
  """Initialises jax.distributed when the run spans several processes.

  Explicit settings (gin, or the env vars DOREMI_COORDINATOR_ADDRESS,
  DOREMI_NUM_PROCESSES, DOREMI_PROCESS_ID) are used on CPU/GPU clusters; on a
  multi-host TPU VM slice JAX discovers everything itself. A single process
  with no settings does nothing.
  """
  coordinator_address = coordinator_address or os.environ.get("DOREMI_COORDINATOR_ADDRESS")
  if num_processes is None and "DOREMI_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["DOREMI_NUM_PROCESSES"])
  if process_id is None and "DOREMI_PROCESS_ID" in os.environ:
    process_id = int(os.environ["DOREMI_PROCESS_ID"])
  if coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
