"""A full disk under a real run: a small tmpfs filled to leave room for
one checkpoint. The run ends with one `error:` line naming the checkpoint
directory, the half-written checkpoint set aside and the previous one
intact; once space is freed the same command resumes and ends where an
uninterrupted run ends. Needs `mount` (root with CAP_SYS_ADMIN): skipped,
saying so, where the machine does not allow it."""

import json
import os
import shutil
import subprocess

import pytest
from helpers import run_cli

ARGS = ["--gin_file=gin/reference.gin", "--gin.TrainConfig.num_steps=20",
        "--gin.TrainConfig.global_batch_size=16", "--gin.TrainConfig.seq_len=64",
        "--gin.TrainConfig.eval_examples_per_domain=16", "--gin.TrainConfig.checkpoint_every=5"]


@pytest.fixture
def small_disk(tmp_path):
  mnt = tmp_path / "disk"
  mnt.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                     capture_output=True, text=True, check=False)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:200]})")
  yield mnt
  subprocess.run(["umount", str(mnt)], check=False)


def _fill(mnt, leave_kib: int):
  st = os.statvfs(mnt)
  size = st.f_bavail * st.f_frsize - leave_kib * 1024
  with open(mnt / "filler", "wb") as f:
    os.posix_fallocate(f.fileno(), 0, size)


def test_a_full_disk_is_one_error_and_the_run_resumes_once_space_is_freed(small_disk, tmp_path):
  full = run_cli(ARGS, workdir=tmp_path / "uninterrupted")
  assert full.returncode == 0, full.stderr[-2000:]
  one = sum(f.stat().st_blocks * 512 for f in (tmp_path / "uninterrupted/checkpoints/20")
            .rglob("*")) // 1024                       # KiB on disk
  _fill(small_disk, leave_kib=one * 3 // 2 + 200)      # room for checkpoint 5, not for 10
  wd = small_disk / "run"
  r = run_cli(ARGS, workdir=wd)
  assert r.returncode == 2, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: the disk is full"), r.stderr[-3000:]
  assert "Traceback" not in r.stdout + r.stderr
  assert f"{wd}/checkpoints" in lines[0] and "(No space left on device)" in lines[0]
  assert "The checkpoint of step 5 is intact and a re-run resumes from it" in lines[0]
  assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["5"]
  assert [p.name for p in (wd / "checkpoints_unreadable").iterdir()] == \
      ["10.orbax-checkpoint-tmp"]
  assert not (wd / "complete.json").exists()
  (small_disk / "filler").unlink()
  shutil.rmtree(wd / "checkpoints_unreadable")
  again = run_cli(ARGS, workdir=wd)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from step 5" in again.stdout
  want = json.loads((tmp_path / "uninterrupted/eval.json").read_text())
  got = json.loads((wd / "eval.json").read_text())
  assert got["per_domain"] == want["per_domain"]
