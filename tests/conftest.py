"""Test setup: 8 forced CPU devices (real sharding), quiet TF, offline TFDS,
a clean gin config per test, the quickstart run shared by the session, and
each test's tier marker from its directory (tests/unit, tests/integration,
tests/e2e; see docs/testing.md). Helpers live in helpers.py and
np_reference.py."""

import atexit
import os
import shutil
import sys
import tempfile

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["JAX_PLATFORMS"] = "cpu"
# One persistent compilation cache for the session, inherited by every CLI
# process a test spawns: the many runs of one program (a study's arms and
# seeds, a killed run and its resumption) compile it once. Fresh per session,
# so nothing carries over from an earlier run of the suite; the timed
# quickstart test switches it off (helpers.run_cli(cache=False)).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="doremi_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import gin  # noqa: E402
import pytest  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
for path in (TESTS, REPO):   # helpers.py and np_reference.py; the package itself
  if path not in sys.path:
    sys.path.insert(0, path)

TIERS = ("unit", "integration", "e2e")


def pytest_configure(config):
  """Under `--dist loadfile` pytest-xdist would hand out the files with the
  most tests first (its `--loadscope-reorder` default), which leaves the
  long single-test end-to-end files for last, one worker running them while
  the other idles; here the workers take files in the order below (the
  heavy e2e tier first, the many short unit files last to even out the end)."""
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  """Every test is marked with its tier, the directory it lives in. The test
  files that read the session's quickstart run go last in their tier, but
  for the first one, which goes first of all and trains it: under xdist one
  worker trains the quickstart while the other runs other files, and the
  files that need it later find it ready (`quickstart_run`)."""
  tier_rank, rank, late = {}, {}, []   # rank: a test's tier's place in collection order
  for item in items:
    tier = os.path.relpath(str(item.path), TESTS).split(os.sep)[0]
    if tier not in TIERS:
      raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit, "
                              "tests/integration or tests/e2e (see docs/testing.md).")
    item.add_marker(getattr(pytest.mark, tier))
    rank[item] = tier_rank.setdefault(tier, len(tier_rank))
    if "quickstart_run" in item.fixturenames and item.path not in late:
      late.append(item.path)
  first = late[0] if late else None
  items.sort(key=lambda item: (-1, False) if item.path == first else
             (rank[item], item.path in late))

from helpers import run_cli  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
  """README's first command, run once per test session on a fresh
  compilation cache: (workdir, seconds, result). Under pytest-xdist the
  workers share one run: the first to need it trains it under a lock in the
  session's common temporary directory, and the others wait for it and read
  it (so 2 workers do not train it twice; pytest_collection_modifyitems
  orders the files so that they seldom wait)."""
  import fcntl
  import json
  import subprocess
  import time
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent          # common to every worker of this session
  wd, record = root / "quickstart" / "run", root / "quickstart" / "result.json"
  wd.parent.mkdir(parents=True, exist_ok=True)
  with open(root / "quickstart.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not record.exists():
      t0 = time.time()
      r = run_cli(["--gin_file=gin/quickstart.gin"], workdir=wd, cache=False)
      record.write_text(json.dumps({"seconds": time.time() - t0, "args": r.args,
                                    "returncode": r.returncode, "stdout": r.stdout,
                                    "stderr": r.stderr}))
  got = json.loads(record.read_text())
  return wd, got["seconds"], subprocess.CompletedProcess(got["args"], got["returncode"],
                                                         got["stdout"], got["stderr"])
