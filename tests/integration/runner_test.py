"""The stage runner in process: exact resume, the guard against a
non-finite loss, and a damaged newest checkpoint."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import config as config_lib
from doremi_jax import runner
from doremi_jax import loop
from doremi_jax.runner import TrainingDiverged

from helpers import run_stage, stopped_run, weights_log_rows

# A tiny Step 1 on one device: 20 steps, a checkpoint every 5.
SMALL = [
    "include 'gin/cpu.gin'",
    "SEQ_LEN = 32", "STEPS = 20", "BATCH = 8",
    "TrainConfig.checkpoint_every = 5", "TrainConfig.log_every = 5",
    "TrainConfig.eval_examples_per_domain = 8", "TrainConfig.eval_batch_size = 8",
    "TrainConfig.tensorboard = False", "TrainConfig.async_checkpointing = False",
]


def _reference(workdir, *bindings):
  return run_stage("reference", workdir, SMALL + list(bindings))


def _params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
  return jax.tree.leaves(restored["params"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  wd = tmp_path_factory.mktemp("runner") / "full"
  return wd, _reference(wd)


def _log_rows(path):
  """A JSONL log's rows without their wall-clock timestamps."""
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "timestamp"} for r in rows]


def _interrupted_copy(src, dst, keep_through: int):
  """`src` as a run killed after its checkpoint `keep_through` would leave it."""
  shutil.copytree(src, dst)
  for p in (dst / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > keep_through:
      shutil.rmtree(p)
  for name in ("complete.json", "eval.json"):
    (dst / name).unlink()


def test_resume_ends_bitwise_where_the_uninterrupted_run_ends(uninterrupted, tmp_path):
  full, final = uninterrupted
  wd = tmp_path / "resumed"
  _interrupted_copy(full, wd, keep_through=10)
  with (wd / "metrics.jsonl").open("a") as f:   # killed while appending
    f.write('{"step": 25, "timest')
  again = _reference(wd)
  assert again["per_domain"] == final["per_domain"]
  for log in ("metrics.jsonl", "eval.jsonl"):   # the rows past step 10 once, as uninterrupted
    assert _log_rows(wd / log) == _log_rows(full / log), log
  for a, b in zip(_params(full, 20), _params(wd, 20)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  info = json.loads((wd / "run_info.resumed_at_10.json").read_text())
  assert info["num_steps"] == 20


def test_sigterm_stops_with_a_checkpoint_of_that_step_and_resumes_bitwise(uninterrupted,
                                                                         tmp_path):
  """SIGTERM at step 7 (between checkpoints 5 and 10, on an evaluation step
  here): the run stops at 7 with a checkpoint of step 7 and its evaluation
  logged; the re-run's parameters and logs equal the uninterrupted run's."""
  full, final = uninterrupted
  wd = tmp_path / "stopped"
  stopped = stopped_run(lambda: _reference(wd, "TrainConfig.eval_every = 7"), 7)
  assert (stopped.stage, stopped.step, stopped.reason) == ("reference", 7, "SIGTERM")
  assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) \
      == [5, 7]
  assert [r["step"] for r in _log_rows(wd / "eval.jsonl")] == [0, 7]
  assert not (wd / "complete.json").exists()
  again = _reference(wd, "TrainConfig.eval_every = 7")
  assert again["per_domain"] == final["per_domain"]
  assert _log_rows(wd / "metrics.jsonl") == _log_rows(full / "metrics.jsonl")
  assert [r["step"] for r in _log_rows(wd / "eval.jsonl")] == [0, 7, 14, 20]
  for a, b in zip(_params(full, 20), _params(wd, 20)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_runs_the_evaluation_a_kill_skipped(uninterrupted, tmp_path):
  """Killed after checkpoint 10 was written but before step 10's evaluation
  (eval_every 5): the resumed run evaluates step 10 first."""
  full, _ = uninterrupted
  wd = tmp_path / "no_eval"
  _interrupted_copy(full, wd, keep_through=10)
  rows = _log_rows(full / "eval.jsonl")   # steps 0 and 20 (eval_every 0)
  (wd / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] < 10))
  _reference(wd, "TrainConfig.eval_every = 5")
  assert [r["step"] for r in _log_rows(wd / "eval.jsonl")] == [0, 10, 15, 20]


def test_non_finite_loss_stops_and_leaves_a_resumable_run(uninterrupted, tmp_path, capsys):
  full, final = uninterrupted
  wd = tmp_path / "diverged"
  _interrupted_copy(full, wd, keep_through=10)
  # From step 10 on, a learning rate of 1e30 (identity.json set aside: a
  # resume with another learning rate is refused): step 11's update is
  # finite but enormous, and step 12's gradient overflows.
  (wd / "identity.json").unlink()
  with pytest.raises(TrainingDiverged) as e:
    _reference(wd, "OptimizerConfig.learning_rate = 1e30", "OptimizerConfig.warmup_steps = 0",
               "OptimizerConfig.schedule = 'constant'")
  msg = str(e.value)
  assert "training diverged at step 12 of 20" in msg, msg
  assert "gradient norm nan; the gradient is not finite" in msg, msg
  assert "the last good checkpoint is step 10" in msg and "resumes from step 10" in msg, msg
  assert "new --workdir" in msg
  assert not (wd / "complete.json").exists()
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [10]     # (5 was rotated out by keep_checkpoints = 3)
  for s in steps:
    assert all(np.all(np.isfinite(np.asarray(x))) for x in _params(wd, s))
  # Its settings are recorded: the fixed learning rate is another run, refused.
  with pytest.raises(config_lib.ConfigError, match="OptimizerConfig.learning_rate 1e"):
    _reference(wd)
  # With the recorded settings set aside once more, the last good checkpoint resumes.
  (wd / "identity.json").unlink()
  capsys.readouterr()
  again = _reference(wd)
  assert "resuming from step 10" in capsys.readouterr().out
  assert again["per_domain"] == final["per_domain"]


def test_check_finite_names_the_domains(tmp_path):
  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints", 5, 3, async_save=False)
  host = {"loss": 1.0, "grad_norm": 0.5, "domain_loss": np.array([1.0, np.nan, 2.0, np.inf])}
  with pytest.raises(TrainingDiverged) as e:
    loop.check_finite(7, 10, host, "domain_loss", ["a", "b", "c", "d"], ckpt)
  assert "at step 7 of 10" in str(e.value)
  assert "the loss is not finite on domains ['b', 'd']" in str(e.value)
  assert "no checkpoint was written yet" in str(e.value)
  loop.check_finite(7, 10, dict(host, domain_loss=np.ones(4)), "domain_loss", "abcd", ckpt)
  ckpt.close()


def test_unreadable_newest_checkpoint_is_set_aside(uninterrupted, tmp_path, capsys):
  full, final = uninterrupted
  wd = tmp_path / "truncated"
  _interrupted_copy(full, wd, keep_through=15)
  # Truncate the largest file of checkpoint 15's state (its array data).
  data = max((p for p in (wd / "checkpoints" / "15" / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
  capsys.readouterr()
  again = _reference(wd)
  out = capsys.readouterr().out
  assert "the checkpoint at step 15 cannot be read" in out, out
  assert "resuming from step 10" in out
  aside = wd / "checkpoints_unreadable" / "15"
  assert aside.is_dir() and (aside / "state").is_dir()     # moved, not deleted
  assert again["per_domain"] == final["per_domain"]
  for a, b in zip(_params(full, 20), _params(wd, 20)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_directory_of_another_model_is_refused_before_writing(uninterrupted, tmp_path):
  full, _ = uninterrupted
  wd = tmp_path / "other_model"
  _interrupted_copy(full, wd, keep_through=10)
  before = sorted(p.relative_to(wd) for p in wd.rglob("*"))
  with pytest.raises(config_lib.ConfigError,
                     match="was trained with another model: ModelConfig.d_model 64 then, 32 now"):
    _reference(wd, "ModelConfig.d_model = 32")
  assert sorted(p.relative_to(wd) for p in wd.rglob("*")) == before


@pytest.mark.parametrize("binding, named", [
    ("TrainConfig.seed = 1", "TrainConfig.seed 0 then, 1 now"),
    ("BATCH = 16", "TrainConfig.global_batch_size 8 then, 16 now"),
    ("OptimizerConfig.learning_rate = 0.01", "OptimizerConfig.learning_rate 0.003 then, 0.01 now"),
    ("train_reference.weights = {'noise': 2, 'repeat': 1, 'markov': 1, 'arithmetic': 1, "
     "'sort': 1}", "method.start_files.reference_weights.json.noise"),
    ("STEPS = 8", "TrainConfig.num_steps 20 then, 8 now"),
])
def test_a_resume_with_other_settings_is_refused_naming_them(uninterrupted, tmp_path, binding,
                                                             named):
  full, _ = uninterrupted
  wd = tmp_path / "other"
  _interrupted_copy(full, wd, keep_through=10)
  before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
  with pytest.raises(config_lib.ConfigError, match="holds another run: ") as e:
    _reference(wd, binding)
  assert named in str(e.value) and "Use a new --workdir" in str(e.value)
  assert {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()} == before


def test_a_longer_run_or_another_attention_kernel_resumes(uninterrupted, tmp_path):
  """Settings of how it computes stay free; a longer num_steps is recorded."""
  full, _ = uninterrupted
  wd = tmp_path / "longer"
  _interrupted_copy(full, wd, keep_through=10)
  _reference(wd, "STEPS = 25", "ModelConfig.attention = 'xla'", "TrainConfig.log_every = 3")
  record = json.loads((wd / "identity.json").read_text())
  assert record["extended"] == [{"from": 20, "to": 25, "at_step": 10}]
  assert record["run"]["train"]["num_steps"] == 25
  assert (wd / "checkpoints" / "25").is_dir()


def test_proxy_killed_and_resumed_logs_every_steps_weights_once(uninterrupted, tmp_path):
  """Step 2 (the paper's reweight mode) logs its weights at every step, not
  one in log_every (5 here); a run killed after checkpoint 10, its log
  holding rows past it and a last line cut short, re-runs to a
  doremi_weights.jsonl equal to the uninterrupted run's (timestamps aside)."""
  reference, _ = uninterrupted
  proxy = SMALL + [f"train_proxy.reference_dir = '{reference}'"]
  full = tmp_path / "proxy"
  run_stage("proxy", full, proxy)
  rows = weights_log_rows(full)
  assert [r["step"] for r in rows] == list(range(1, 21))
  wd = tmp_path / "resumed"
  _interrupted_copy(full, wd, keep_through=10)
  with (wd / "doremi_weights.jsonl").open("a") as f:
    f.write('{"step": 21, "timest')
  run_stage("proxy", wd, proxy)
  assert weights_log_rows(wd) == rows
  # SIGTERM at step 13: a checkpoint of step 13 (with the DRO state), then
  # the same weights at every step and the same averaged weights.
  stopped = tmp_path / "stopped"
  assert stopped_run(lambda: run_stage("proxy", stopped, proxy), 13).step == 13
  assert (stopped / "checkpoints" / "13").is_dir()
  assert [r["step"] for r in weights_log_rows(stopped)] == list(range(1, 14))
  run_stage("proxy", stopped, proxy)
  assert weights_log_rows(stopped) == rows
  for name in ("average_domain_weights.json", "eval.json"):
    assert (stopped / name).read_bytes() == (full / name).read_bytes(), name
