"""Multi-host initialisation (`jax.distributed`), done by the package.

* On a Cloud TPU VM (single- or multi-host slice) JAX discovers the
  coordinator, the process count and this process's id itself: we call
  `jax.distributed.initialize()` with no arguments.
* On CPU/GPU clusters the settings are explicit, from gin
  (`initialize.coordinator_address` etc.) or from the environment
  (DOREMI_COORDINATOR_ADDRESS=host:port, DOREMI_NUM_PROCESSES,
  DOREMI_PROCESS_ID). CPU processes talk through gloo collectives.
* A single process with no settings does nothing.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

import gin
import jax

from doremi_jax.config import ConfigError, check, check_number

CPU_COLLECTIVES = ("gloo", "mpi")

_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_ACCELERATOR_TYPE")


def on_tpu_vm() -> bool:
  """True on a Cloud TPU VM (TPU env vars, or TPU device files present)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms:
    return False
  return any(os.environ.get(v) for v in _TPU_ENV) or bool(
      glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _env_int(var: str) -> int:
  try:
    return int(os.environ[var])
  except ValueError:
    raise ConfigError(f"{var} must be an integer, got {os.environ[var]!r}.") from None


def _check_address(address) -> None:
  """`address` must be host:port (IPv6 hosts in brackets: [::1]:1234)."""
  host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
  ok = bool(sep and host) and port.isascii() and port.isdigit() and 0 < int(port) < 65536
  check(ok, "initialize.coordinator_address (DOREMI_COORDINATOR_ADDRESS) must be host:port "
            f"with an integer port in [1, 65535], e.g. 10.0.0.1:8476; got {address!r}.")


@gin.configurable
def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_collectives: str = "gloo",
               tpu_auto: bool = True) -> bool:
  """Initialises jax.distributed when the run spans several processes;
  returns whether it did."""
  check(isinstance(cpu_collectives, str) and cpu_collectives in CPU_COLLECTIVES,
        f"initialize.cpu_collectives must be 'gloo' or 'mpi', got {cpu_collectives!r}.")
  coordinator_address = coordinator_address or os.environ.get("DOREMI_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("DOREMI_NUM_PROCESSES"):
    num_processes = _env_int("DOREMI_NUM_PROCESSES")
  if process_id is None and os.environ.get("DOREMI_PROCESS_ID"):
    process_id = _env_int("DOREMI_PROCESS_ID")
  if num_processes is not None:
    check_number("initialize.num_processes (DOREMI_NUM_PROCESSES)", num_processes,
                 integer=True, low=0, low_open=True)
  if process_id is not None:
    check_number("initialize.process_id (DOREMI_PROCESS_ID)", process_id, integer=True, low=0)
  if coordinator_address:
    _check_address(coordinator_address)
    if num_processes is None or process_id is None:
      raise ConfigError(
          f"a coordinator address ({coordinator_address}) is set but not the number of "
          "processes and this process's id: set DOREMI_NUM_PROCESSES and DOREMI_PROCESS_ID "
          "(or initialize.num_processes / initialize.process_id).")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"process id {process_id} is not in [0, {num_processes}).")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  if tpu_auto and on_tpu_vm():
    jax.distributed.initialize()
    return True
  return False


def from_process_0(value: int) -> int:
  """Process 0's integer `value` on every process of the job (a decision
  all of them must share: whether a lease was refused, which task to
  claim); `value` itself on one process."""
  if jax.process_count() == 1:
    return int(value)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
