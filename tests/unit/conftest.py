"""The unit tier's rules, enforced: a unit test spawns no process and
imports no TensorFlow (exactly so when the tier runs alone, as in the daily
loop `pytest tests/unit`; under xdist another tier's test may have loaded
TensorFlow into the same worker first). A test that needs either belongs in
tests/integration or tests/e2e."""

import subprocess
import sys

import pytest

# Matplotlib builds its font cache on first import, asking `fc-list` (a
# process) where fontconfig is installed: build it here, before the rules.
from matplotlib import font_manager  # pylint: disable=unused-import  # noqa: F401


class _NoProcess:
  def __init__(self, *args, **kwargs):
    raise AssertionError("a unit test spawned a process; move it to tests/e2e "
                         "(see docs/testing.md)")


@pytest.fixture(autouse=True)
def _unit_rules(monkeypatch):
  monkeypatch.setattr(subprocess, "Popen", _NoProcess)
  had_tf = "tensorflow" in sys.modules
  yield
  if not had_tf and "tensorflow" in sys.modules:
    pytest.fail("a unit test imported TensorFlow; move it to tests/integration "
                "(see docs/testing.md)")
