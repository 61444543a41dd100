"""What an earlier run wrote, read back: a damaged JSON file or JSONL log is
an error naming it and what to do, a log's cut last line (a run killed
while appending) is left out, and a tool's output directory is made."""

import pytest

from doremi_jax import export_mixture
from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.config import ConfigError


def test_a_damaged_json_file_is_an_error_naming_it(tmp_path):
  path = tmp_path / "eval.json"
  path.write_text('{"step": 3, "uniform_av')
  with pytest.raises(ConfigError, match=r"eval.json is damaged \(not valid JSON.*delete"):
    files.read_json(path)
  path.write_bytes(b"\xff\xfe{}")
  with pytest.raises(ConfigError, match="not UTF-8"):
    files.read_json(path)
  files.write_json(path, {"step": 3})
  assert files.read_json(path) == {"step": 3} and sorted(tmp_path.iterdir()) == [path]


class _Crash(BaseException):
  pass


# Every JSON and Markdown file a run directory holds, by its name in rundir.
RUN_FILES = sorted(v for k, v in vars(rundir).items()
                   if k.isupper() and isinstance(v, str) and v.endswith((".json", ".md")))


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_crash_between_write_and_rename_leaves_the_old_file(tmp_path, monkeypatch, name):
  """The process dies after the new text is written to its temporary name,
  before the rename: the old file is still there, whole; the temporary one
  is gone with it (here: removed on the way out), and the next write lands."""
  path = tmp_path / name
  files.write_json(path, {"old": True})

  def crash(self, target):
    raise _Crash

  monkeypatch.setattr(type(files.path(path)), "replace", crash)
  with pytest.raises(_Crash):
    files.write_json(path, {"new": True})
  assert files.read_json(path) == {"old": True} and sorted(tmp_path.iterdir()) == [path]
  monkeypatch.undo()
  files.write_json(path, {"new": True})
  assert files.read_json(path) == {"new": True}


def test_a_logs_cut_last_line_is_left_out_and_any_other_bad_line_is_an_error(tmp_path):
  log = tmp_path / "metrics.jsonl"
  log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
  assert files.read_jsonl(log) == [{"step": 1}, {"step": 2}]
  files.keep_jsonl_through(log, 5)                     # a resume drops it for good
  assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
  log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(ConfigError, match=r"metrics.jsonl is damaged \(line 2"):
    files.read_jsonl(log)
  assert files.read_jsonl(tmp_path / "none.jsonl") == []


def test_export_output_makes_its_directory_or_says_it_cannot(tmp_path):
  out = tmp_path / "new" / "dir" / "mix.json"
  export_mixture.write_output(str(out), "{}\n")
  assert out.read_text() == "{}\n"
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(ConfigError, match="cannot write --output"):
    export_mixture.write_output(str(tmp_path / "a_file" / "mix.json"), "{}\n")


def test_a_result_changed_after_its_stage_completed_is_refused(tmp_path, capsys):
  """complete.json records the SHA-256 of what a later stage consumes; export
  (here), Step 3 (data_test) and the study read it through rundir.read_result,
  which refuses an edited file and still reads a user's own weights file."""
  run = tmp_path / "proxy"
  run.mkdir()
  w = {"a": 0.25, "b": 0.75}
  files.write_json(run / rundir.AVERAGE_WEIGHTS, w)
  rundir.mark_complete(str(run), "proxy", 10, 1.0, "done")
  recorded = files.read_json(run / rundir.COMPLETE)["sha256"]
  assert list(recorded) == [rundir.AVERAGE_WEIGHTS]        # only what exists is recorded
  assert rundir.read_result(run / rundir.AVERAGE_WEIGHTS) == w
  assert export_mixture.find_weights(str(run))[1] == w
  files.write_json(run / rundir.AVERAGE_WEIGHTS, {"a": 0.5, "b": 0.5})
  changed = "average_domain_weights.json was changed after its stage completed"
  with pytest.raises(ConfigError, match=changed + ".*outside the run directory"):
    rundir.read_result(run / rundir.AVERAGE_WEIGHTS)
  with pytest.raises(ConfigError, match=changed):
    export_mixture.find_weights(str(run))
  own = tmp_path / "my_weights.json"                       # not in a completed run: only read
  files.write_json(own, {"a": 0.5, "b": 0.5})
  assert rundir.read_result(own) == {"a": 0.5, "b": 0.5}
  files.write_json(run / rundir.AVERAGE_WEIGHTS, w)        # restored: accepted again
  assert rundir.read_result(run / rundir.AVERAGE_WEIGHTS) == w


def test_a_full_disk_is_recognised_and_a_log_write_says_which_file():
  import errno
  assert files.disk_full(OSError(errno.ENOSPC, "x")) == "No space left on device"
  assert files.disk_full(OSError(errno.EDQUOT, "x")) == "Disk quota exceeded"
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database ...: Failed to '
                     "write 361413 bytes to file 18: No space left on device [os_error_code='28']")
  assert files.disk_full(orbax) == "No space left on device"
  try:
    try:
      raise orbax
    except ValueError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as wrapped:
    assert files.disk_full(wrapped) == "No space left on device"
  assert files.disk_full(OSError(errno.EACCES, "denied")) is None
  assert files.disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory")) is None
  # /dev/full: every write fails with ENOSPC, from the kernel.
  with pytest.raises(ConfigError, match=r"the disk is full: writing /dev/full failed "
                     r"\(No space left on device\); free space .* resumes from its last checkpoint"):
    files.append_jsonl_rows("/dev/full", [{"step": 1}] * 2000)
