"""One writer per directory: a lease held in a small JSON file.

`hold(directory, name)` takes the lease for the block: it writes
`directory/name` holding who holds it (host, process id, a random token,
when it started, a heartbeat a background thread refreshes every
`heartbeat_s`) and removes it at the end. A second process is refused
with `LeaseHeld` (a ConfigError, so `error:` and exit status 2) naming the
holder. A lease whose holder is gone is taken over with a warning:

* on this host, when the holder's process id is no longer alive;
* anywhere (another host, gs://), when its heartbeat is older than
  `stale_s` (default 300 s: ten missed heartbeats).

Taking it is atomic on a local disk (`O_CREAT | O_EXCL`, and a takeover
renames the stale file away first, so of two takers one wins). On gs://
there is no exclusive create through `etils.epath`: the lease is written
whole, then read back after `settle_s`; whoever's token is there holds it
(the later of two writers wins, the earlier reads the other's token and is
refused).

A process may take the same lease again, or a lease inside a directory it
already holds (a pipeline's stages): that is a no-op. Only process 0 of a
multi-process job takes it, for the whole job, and every process learns the
outcome (all refuse together). `doremi_jax.rundir` names the run
directory's lease file; a study's workers (`doremi_jax.plan`) claim their
runs with the same piece, under `settings` (their expiry, and waiting
rather than refusing where another worker holds a finished run briefly).

A lease records the host by `socket.gethostname()`, or by the environment
variable DOREMI_JAX_LEASE_HOST where it is set (machines or containers
that share a host name must set it, or a live holder on another one
would look dead here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

from etils import epath

from doremi_jax.config import ConfigError

HEARTBEAT_S = 30.0
STALE_S = 300.0
SETTLE_S = 2.0
HOST_ENV = "DOREMI_JAX_LEASE_HOST"

# What a lease taken without its own values uses (`settings`); `wait_s`:
# None refuses a live holder (LeaseHeld), a number retries that often.
_DEFAULTS = {"heartbeat_s": HEARTBEAT_S, "stale_s": STALE_S, "wait_s": None}


@contextlib.contextmanager
def settings(**kwargs):
  """The defaults of every lease this process takes in the block
  (`heartbeat_s`, `stale_s`, `wait_s`)."""
  unknown = set(kwargs) - set(_DEFAULTS)
  if unknown:
    raise TypeError(f"unknown lease settings {sorted(unknown)}")
  before = dict(_DEFAULTS)
  _DEFAULTS.update(kwargs)
  try:
    yield
  finally:
    _DEFAULTS.clear()
    _DEFAULTS.update(before)


def host() -> str:
  """The host name leases record (module docstring)."""
  return os.environ.get(HOST_ENV) or socket.gethostname()


class LeaseHeld(ConfigError):
  """Another live process holds the lease."""


def _remote(p) -> bool:
  return "://" in str(p)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # alive, another user's
    return True
  return True


def describe(record: dict) -> str:
  """The holder, in words (for messages)."""
  age = time.time() - float(record.get("heartbeat", 0))
  return (f"process {record.get('pid')} on host {record.get('host')} (started "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(record.get('started_at', 0)))},"
          f" last heartbeat {age:.0f} s ago)")


def stale_reason(record: dict, stale_s: float, now: Optional[float] = None) -> Optional[str]:
  """Why `record`'s holder is gone, or None while it may be alive."""
  now = time.time() if now is None else now
  if record.get("host") == host() and not _alive(int(record.get("pid", -1))):
    return f"its process {record.get('pid')} on this host is not running"
  age = now - float(record.get("heartbeat", 0))
  if age > stale_s:
    return f"its heartbeat is {age:.0f} s old (stale after {stale_s:.0f} s)"
  return None


def _read(p) -> Optional[dict]:
  """The lease record at `p`; None when there is none. A record that is not
  JSON (a holder killed while writing it) reads as an empty, stale one."""
  try:
    text = epath.Path(p).read_text()
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
  except json.JSONDecodeError:
    return {}
  return record if isinstance(record, dict) else {}


class Lease:
  """The lease file `path`, held by this process once `acquire` returns."""

  def __init__(self, path, heartbeat_s: Optional[float] = None,
               stale_s: Optional[float] = None, settle_s: float = SETTLE_S):
    self.path = epath.Path(path)
    self.heartbeat_s = _DEFAULTS["heartbeat_s"] if heartbeat_s is None else heartbeat_s
    self.stale_s = _DEFAULTS["stale_s"] if stale_s is None else stale_s
    self.settle_s = settle_s
    now = time.time()
    self.record = {"host": host(), "pid": os.getpid(),
                   "token": uuid.uuid4().hex, "started_at": now, "heartbeat": now}
    self._stop = threading.Event()
    self._thread = None

  def _text(self) -> str:
    return json.dumps(dict(self.record, heartbeat=time.time())) + "\n"

  def _create(self) -> bool:
    """Writes the record if there is no lease file; whether it did."""
    if _remote(self.path):
      if self.path.exists():
        return False
      self.path.write_text(self._text())
      time.sleep(self.settle_s)
      return (_read(self.path) or {}).get("token") == self.record["token"]
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._text())
    return True

  def _take_over(self, record: dict, why: str) -> None:
    logging.warning("taking over the lease %s from %s: %s", self.path, describe(record), why)
    print(f"warning: taking over {self.path} from {describe(record)}: {why}", flush=True)
    if _remote(self.path):
      self.path.unlink(missing_ok=True)
      return
    aside = self.path.parent / f"{self.path.name}.stale.{self.record['token']}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:   # another taker moved it first
      return
    if (_read(aside) or {}).get("token") != record.get("token"):   # a fresh one: put back
      os.rename(aside, self.path)
      return
    os.unlink(aside)

  def acquire(self) -> "Lease":
    """Takes the lease, or raises LeaseHeld naming its live holder."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if self._create():
        self._start_heartbeat()
        return self
      record = _read(self.path)
      if record is None:     # released meanwhile
        continue
      why = stale_reason(record, self.stale_s)
      if why is None:
        raise LeaseHeld(
            f"{self.path.parent} is in use by {describe(record)}: one process writes a run "
            f"directory at a time. Wait for it to finish (or stop it), or use another "
            f"directory; if that process is gone, the lease is taken over once its heartbeat "
            f"is {self.stale_s:.0f} s old, or delete {self.path}.")
      self._take_over(record, why)
    raise LeaseHeld(f"could not take {self.path}: other processes keep taking it; retry.")

  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(self.heartbeat_s):
        current = _read(self.path) or {}
        if current.get("token") != self.record["token"]:
          logging.error("the lease %s was taken over by %s; this run no longer holds it",
                        self.path, describe(current))
          return
        try:
          if _remote(self.path):
            self.path.write_text(self._text())
          else:
            tmp = self.path.parent / f".{self.path.name}.{self.record['token']}.tmp"
            tmp.write_text(self._text())
            os.replace(tmp, self.path)
        except OSError as e:   # a full disk: the lease stays, its heartbeat ages
          logging.warning("could not refresh the lease %s: %s", self.path, e)

    self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
    self._thread.start()

  def release(self) -> None:
    """Stops the heartbeat and removes the lease file if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if (_read(self.path) or {}).get("token") == self.record["token"]:
      self.path.unlink(missing_ok=True)


_held: dict = {}   # directory (absolute, as a string) -> Lease, in this process


def _covering(directory: str) -> Optional[str]:
  """A directory this process holds a lease on that is `directory` or holds it."""
  for held in _held:
    if directory == held or directory.startswith(held.rstrip("/") + "/"):
      return held
  return None


def _key(directory) -> str:
  return str(directory) if _remote(directory) else os.path.abspath(str(directory))


def _take(directory, name: str, **kwargs):
  """Lease `directory/name` taken (process 0) or None (another process of
  the job); LeaseHeld on every process when process 0 was refused."""
  import jax  # pylint: disable=import-outside-toplevel
  lease, error = None, None
  if jax.process_index() == 0:
    try:
      lease = Lease(epath.Path(directory) / name, **kwargs).acquire()
    except LeaseHeld as e:
      error = e
  if jax.process_count() > 1:
    from doremi_jax import distributed  # pylint: disable=import-outside-toplevel
    refused = bool(distributed.from_process_0(error is not None))
    if refused and error is None:
      raise LeaseHeld(f"{directory} is in use by another run (process 0 says which).")
  if error is not None:
    raise error
  return lease


@contextlib.contextmanager
def hold(directory, name: str, wait_s=..., **kwargs):
  """Holds the lease `directory/name` for the block (see the module
  docstring); a no-op where this process already holds it or a lease on a
  directory above. On several processes process 0 takes it and all learn
  the outcome. `wait_s` (default `settings`'): None refuses a live holder,
  a number waits for it, looking again that often. A directory the lease
  made is removed again if it is left empty."""
  key = _key(directory)
  if _covering(key) is not None:
    yield
    return
  wait_s = _DEFAULTS["wait_s"] if wait_s is ... else wait_s
  made = not epath.Path(directory).exists()
  said = False
  while True:
    try:
      lease = _take(directory, name, **kwargs)
      break
    except LeaseHeld:
      if wait_s is None:
        raise
      if not said:
        print(f"waiting for {directory}: another process holds it; looking again every "
              f"{wait_s:g} s", flush=True)
        said = True
      time.sleep(wait_s)
  _held[key] = lease
  try:
    yield
  finally:
    del _held[key]
    if lease is not None:
      lease.release()
      if made and not _remote(directory):
        with contextlib.suppress(OSError):
          os.rmdir(directory)
