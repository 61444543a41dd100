"""doremi_jax.plan: which task a worker claims, what it passes over, when it
is done (one process; tests/e2e/workers_test.py runs three workers)."""

import json
import os
import socket
import threading
import time
import uuid

import gin
import pytest

from doremi_jax import plan
from doremi_jax import rundir
from doremi_jax.config import ConfigError


@pytest.fixture
def fast():
  gin.clear_config()
  gin.bind_parameter("Workers.poll_s", 0.05)
  gin.bind_parameter("Workers.wait_s", 0.05)
  yield
  gin.clear_config()


def _task(key, ran, deps=(), complete=None):
  return plan.Task(key, lambda: ran.append(key), tuple(deps), what=key, complete=complete)


def test_tasks_run_in_order_after_their_dependencies_and_a_rerun_skips_them(tmp_path, fast):
  ran = []
  tasks = [_task("b", ran, deps=["a"]), _task("a", ran), _task("c", ran, deps=["b"])]
  plan.execute(tmp_path, "study", tasks, print)
  assert ran == ["a", "b", "c"]
  for key in "abc":
    assert (tmp_path / rundir.PLAN / "study" / key / rundir.TASK_DONE).exists()
    assert not (tmp_path / rundir.PLAN / "study" / key / rundir.LOCK).exists()
  recorded = json.loads((tmp_path / rundir.PLAN / "study.json").read_text())
  assert [t["key"] for t in recorded["tasks"]] == ["b", "a", "c"]
  assert recorded["tasks"][0]["deps"] == ["a"]
  plan.execute(tmp_path, "study", tasks, print)
  assert ran == ["a", "b", "c"]


def test_a_task_with_its_own_completion_ignores_markers(tmp_path, fast):
  ran, finished = [], {"x": False}
  task = _task("x", ran, complete=lambda: finished["x"])
  task.fn = lambda: (ran.append("x"), finished.update(x=True))
  plan.execute(tmp_path, "p", [task], print)
  assert ran == ["x"] and not (tmp_path / rundir.PLAN / "p" / "x" / rundir.TASK_DONE).exists()
  finished["x"] = False   # the run was deleted since: it is trained again
  plan.execute(tmp_path, "p", [task], print)
  assert ran == ["x", "x"]


def test_a_task_another_worker_holds_is_passed_over_and_waited_for(tmp_path, fast):
  """'a' is held by a live process (this test's parent): the worker trains
  'b', then waits; when the holder marks 'a' done and lets go, it returns
  without training 'a'."""
  held = tmp_path / rundir.PLAN / "study" / "a"
  held.mkdir(parents=True)
  now = time.time()
  (held / rundir.LOCK).write_text(json.dumps({
      "host": socket.gethostname(), "pid": os.getppid(), "token": uuid.uuid4().hex,
      "started_at": now, "heartbeat": now}))

  def other_worker_finishes():
    time.sleep(1.0)
    (held / rundir.TASK_DONE).write_text("{}")
    (held / rundir.LOCK).unlink()

  ran, said = [], []
  threading.Thread(target=other_worker_finishes, daemon=True).start()
  plan.execute(tmp_path, "study", [_task("a", ran), _task("b", ran), _task("c", ran, ["a"])],
               said.append)
  assert ran == ["b", "c"]
  assert any(s.startswith("waiting: the tasks left of study") for s in said)


def test_a_stale_claim_is_taken_over(tmp_path, fast):
  held = tmp_path / rundir.PLAN / "study" / "a"
  held.mkdir(parents=True)
  (held / rundir.LOCK).write_text(json.dumps({
      "host": "elsewhere", "pid": 1, "token": "t", "started_at": 0, "heartbeat": 0}))
  ran = []
  plan.execute(tmp_path, "study", [_task("a", ran)], print)
  assert ran == ["a"]


def test_report_writer_is_one_worker(tmp_path, fast):
  with plan.writer(tmp_path, "study") as first:
    with plan.writer(tmp_path, "study") as second:   # covered: the same process
      assert first and second
  lock = tmp_path / rundir.PLAN / "study" / "report"
  lock.mkdir(parents=True)
  now = time.time()
  (lock / rundir.LOCK).write_text(json.dumps({
      "host": socket.gethostname(), "pid": os.getppid(), "token": "x", "started_at": now,
      "heartbeat": now}))
  with plan.writer(tmp_path, "study") as mine:
    assert not mine


def test_bad_plans_and_settings(tmp_path, fast):
  with pytest.raises(ValueError, match="dependencies"):
    plan.execute(tmp_path, "p", [_task("a", [], deps=["nope"])], print)
  with pytest.raises(ValueError, match="repeat"):
    plan.execute(tmp_path, "p", [_task("a", []), _task("a", [])], print)
  gin.bind_parameter("Workers.heartbeat_s", 400.0)
  with pytest.raises(ConfigError, match="must be below Workers.stale_s"):
    plan.Workers()
  gin.bind_parameter("Workers.heartbeat_s", -1.0)
  with pytest.raises(ConfigError, match="heartbeat_s"):
    plan.Workers()


def test_a_worker_with_max_tasks_stops_after_them(tmp_path, fast, monkeypatch):
  monkeypatch.setattr(plan, "_claimed", [0])
  gin.bind_parameter("Workers.max_tasks", 1)
  ran = []
  with pytest.raises(plan.QuotaReached, match="trained its 1 task"):
    plan.execute(tmp_path, "p", [_task("a", ran), _task("b", ran)], print)
  assert ran == ["a"]
  plan.execute(tmp_path, "q", [_task("c", ran, complete=lambda: True)], print)   # nothing left


@gin.configurable
def quota_stage(workdir):   # a stage whose worker reached Workers.max_tasks
  raise plan.QuotaReached(f"this worker stops ({workdir})")


def test_a_worker_at_its_quota_says_so_in_one_line(tmp_path, monkeypatch, capsys):
  from doremi_jax import main as main_lib
  from doremi_jax.stages import registry
  monkeypatch.setattr(registry, "get", lambda name: quota_stage)
  assert main_lib.run(stage="study", workdir=str(tmp_path)) is None
  # gin's "In call to configurable 'quota_stage'" is not printed
  assert capsys.readouterr().out == f"[study] this worker stops ({tmp_path})\n"
