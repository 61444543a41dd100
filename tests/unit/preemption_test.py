"""Stop requests (doremi_jax.preemption): SIGTERM and the first Ctrl-C ask
the run to stop, a second Ctrl-C aborts, the process's own handlers come
back after the block, and one process decides alone."""

import signal

import pytest

from doremi_jax import preemption


def test_sigterm_asks_to_stop_and_the_handlers_come_back(capsys):
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with preemption.handlers():
    assert not preemption.should_stop(3, logged=False)
    signal.raise_signal(signal.SIGTERM)
    assert preemption.requested() == "SIGTERM"
    assert preemption.should_stop(4, logged=False)
    signal.raise_signal(signal.SIGTERM)   # a second SIGTERM changes nothing
    assert preemption.requested() == "SIGTERM"
  assert {s: signal.getsignal(s) for s in before} == before
  assert preemption.requested() is None and not preemption.should_stop(5, logged=True)
  assert "SIGTERM: stopping after the step in flight" in capsys.readouterr().err


class _Exit(BaseException):
  pass


def test_a_second_ctrl_c_aborts_at_once(monkeypatch, capsys):
  def exit_now(status):
    raise _Exit(status)

  monkeypatch.setattr(preemption.os, "_exit", exit_now)
  # what the process had (SIG_IGN where a shell started it in the background)
  before = signal.getsignal(signal.SIGINT)
  with preemption.handlers():
    signal.raise_signal(signal.SIGINT)
    assert preemption.requested() == "SIGINT" and preemption.should_stop(1, logged=True)
    with pytest.raises(_Exit) as e:
      signal.raise_signal(signal.SIGINT)
  assert e.value.args == (130,)
  assert capsys.readouterr().err.endswith(preemption.ABORTED + "\n")
  assert signal.getsignal(signal.SIGINT) == before


def test_stopped_says_where_to_resume_from():
  e = preemption.Stopped("reference", 7, "SIGTERM", "/runs/ref/checkpoints")
  assert str(e) == ("[reference] stopped on SIGTERM at step 7, with a checkpoint of that "
                    "step in /runs/ref/checkpoints; re-run the same command to resume.")
  assert "before it started training" in str(preemption.Stopped("study", None, "SIGINT"))
  assert preemption.EXIT_STATUS == 75
