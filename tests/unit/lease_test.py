"""The lease (doremi_jax.lease): one holder at a time, its holder named to
the second, a gone holder (dead pid on this host, an old heartbeat, a
damaged record) taken over, the heartbeat refreshed, gs://'s write and
read back, and `hold`'s nesting."""

import json
import os
import socket
import time

import pytest

from doremi_jax import lease


def _record(**kw):
  now = time.time()
  return dict(dict(host=socket.gethostname(), pid=os.getpid(), token="t0", started_at=now,
                   heartbeat=now), **kw)


def _dead_pid():
  pid = 4_194_000
  while lease._alive(pid):   # pylint: disable=protected-access
    pid -= 1
  return pid


def test_a_second_taker_is_refused_naming_the_holder(tmp_path):
  first = lease.Lease(tmp_path / "lock.json").acquire()
  rec = json.loads((tmp_path / "lock.json").read_text())
  assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
  with pytest.raises(lease.LeaseHeld, match=f"is in use by process {os.getpid()} on host "):
    lease.Lease(tmp_path / "lock.json").acquire()
  first.release()
  assert not (tmp_path / "lock.json").exists()
  lease.Lease(tmp_path / "lock.json").acquire().release()


@pytest.mark.parametrize("record, why", [
    (dict(pid=None), "on this host is not running"),
    (dict(host="elsewhere", heartbeat=-1000), "heartbeat is 1000 s old"),   # s from now
    (None, "heartbeat is"),   # a record cut short: stale
])
def test_a_gone_holder_is_taken_over_with_a_warning(tmp_path, capsys, record, why):
  path = tmp_path / "lock.json"
  if record is None:
    path.write_text('{"host": "x", "pi')
  else:
    record = _record(**{k: (_dead_pid() if k == "pid" else time.time() + v
                            if k == "heartbeat" else v) for k, v in record.items()})
    path.write_text(json.dumps(record))
  held = lease.Lease(path).acquire()
  assert json.loads(path.read_text())["token"] == held.record["token"]
  out = capsys.readouterr().out
  assert "warning: taking over" in out and why in out, out
  assert [p.name for p in tmp_path.iterdir()] == ["lock.json"]   # the stale one is gone
  held.release()


def test_a_live_holder_elsewhere_is_not_taken_over(tmp_path):
  (tmp_path / "lock.json").write_text(json.dumps(_record(host="elsewhere", pid=1)))
  with pytest.raises(lease.LeaseHeld, match="process 1 on host elsewhere"):
    lease.Lease(tmp_path / "lock.json", stale_s=300).acquire()


def test_stale_reason_by_age_and_pid():
  now = 1000.0
  assert lease.stale_reason(_record(host="h", heartbeat=now - 10), 300, now) is None
  assert "301 s old" in lease.stale_reason(_record(host="h", heartbeat=now - 301), 300, now)
  assert "not running" in lease.stale_reason(_record(pid=_dead_pid()), 300)


def test_the_heartbeat_is_refreshed_and_stops_when_taken_over(tmp_path):
  path = tmp_path / "lock.json"
  held = lease.Lease(path, heartbeat_s=0.05).acquire()
  first = json.loads(path.read_text())["heartbeat"]
  time.sleep(0.3)
  assert json.loads(path.read_text())["heartbeat"] > first
  # Taken over: the heartbeat sees another token and stops. (Written again
  # until it has: a beat in flight may land once after the takeover.)
  for _ in range(40):
    path.write_text(json.dumps(_record(token="someone-else")))
    held._thread.join(timeout=0.2)   # pylint: disable=protected-access
    if not held._thread.is_alive():   # pylint: disable=protected-access
      break
  assert not held._thread.is_alive()   # pylint: disable=protected-access
  assert json.loads(path.read_text())["token"] == "someone-else"
  held.release()   # not ours any more: left in place
  assert json.loads(path.read_text())["token"] == "someone-else"


def test_remote_write_and_read_back(tmp_path, monkeypatch):
  """gs:// has no exclusive create: write, settle, read back (simulated on
  a local path)."""
  monkeypatch.setattr(lease, "_remote", lambda p: True)
  path = tmp_path / "lock.json"
  first = lease.Lease(path, settle_s=0.0).acquire()
  with pytest.raises(lease.LeaseHeld):
    lease.Lease(path, settle_s=0.0).acquire()
  # Two writers between one's check and its read-back: the later wins.
  a, b = lease.Lease(path, settle_s=0.0), lease.Lease(path, settle_s=0.0)
  first.release()
  path.write_text(a._text())   # pylint: disable=protected-access
  path.write_text(b._text())   # pylint: disable=protected-access
  assert json.loads(path.read_text())["token"] == b.record["token"]
  assert not a._create()   # pylint: disable=protected-access


def test_hold_nests_and_removes_a_directory_it_made(tmp_path):
  run = tmp_path / "run"
  with lease.hold(run, "lock.json"):
    assert (run / "lock.json").exists()
    with lease.hold(run, "lock.json"), lease.hold(run / "arms" / "a", "lock.json"):
      assert not (run / "arms").exists()   # covered by the run's lease
  assert not run.exists()
  run.mkdir()
  (run / "kept.txt").write_text("x")
  with lease.hold(run, "lock.json"):
    pass
  assert sorted(p.name for p in run.iterdir()) == ["kept.txt"]
