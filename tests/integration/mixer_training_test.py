"""The main stage with an online mixer, in process on the built-in corpus:
each method runs end to end and does what its own paper predicts with the
noise domain; the logged rates are the rates the loader used; a run killed
after a checkpoint and re-run ends with byte-identical rates, mixer state
and parameters; bad settings are refused before anything runs."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from doremi_jax import mixers
from doremi_jax.config import ConfigError
from doremi_jax.data import scheduled

from helpers import run_stage, stopped_run, weights_log_rows


STEPS = 30
SMALL = [
    "include 'gin/cpu.gin'",
    "SEQ_LEN = 32", f"STEPS = {STEPS}", "BATCH = 10",
    "TrainConfig.checkpoint_every = 10", "TrainConfig.log_every = 5",
    "TrainConfig.eval_examples_per_domain = 8", "TrainConfig.eval_batch_size = 8",
    "TrainConfig.tensorboard = False", "TrainConfig.async_checkpointing = False",
    "train_main_model.weights = 'uniform'",
    # Short-run settings: the methods adapt from a few steps in.
    "ODMMixer.warmup_steps = 5",
    # ADO's first fit (step 10) on steps 5-10, smoothed over 5 steps.
    "ADOMixer.ignore_steps = 5", "ADOMixer.update_interval = 10", "ADOMixer.e_min = None",
    "ADOMixer.savgol_window = 5", "ADOMixer.fit_stride = 1",
    "AioliMixer.update_steps = 15", "AioliMixer.lp_rounds = 1", "AioliMixer.lp_steps = 2",
]
# Every registered method (the registry is the one list of them).
METHODS = mixers.names()


def _stage(stage, workdir, *bindings):
  return run_stage(stage, workdir, SMALL + list(bindings))


def _main(workdir, method, reference=None, *bindings):
  extra = [f"train_main_model.mixer = '{method}'"]
  if reference is not None:
    extra.append(f"train_main_model.reference_dir = '{reference}'")
  return _stage("main", workdir, *extra, *bindings)


def _state(workdir, step):
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mixers")
  _stage("reference", tmp / "reference", "STEPS = 20")
  out = {}
  for m in METHODS:
    ref = tmp / "reference" if m == "doremi_online" else None
    out[m] = (tmp / m, _main(tmp / m, m, ref))
  out["resample"] = (tmp / "resample", _resample(tmp / "resample", tmp / "reference"))
  return tmp, out


def _resample(workdir, reference):
  return _stage("proxy", workdir, "train_proxy.mode = 'resample'",
                f"train_proxy.reference_dir = '{reference}'")


def _log(workdir, name="mixture_weights.jsonl"):
  """A JSONL log's rows, as written, without their wall-clock timestamps."""
  return [{k: v for k, v in json.loads(line).items() if k != "timestamp"}
          for line in (workdir / name).read_text().splitlines()]


def _rates(workdir):
  return np.array([r["domain_weights"] for r in
                   scheduled.read_log(workdir / "mixture_weights.jsonl")])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_logs_every_steps_rates_and_their_time_average(runs, method):
  _, out = runs
  wd, final = out[method]
  rows = scheduled.read_log(wd / "mixture_weights.jsonl")
  assert [r["step"] for r in rows] == list(range(STEPS))
  rates = _rates(wd)
  np.testing.assert_allclose(rates.sum(axis=1), 1.0, atol=1e-5)
  assert rows[-1]["method"] == method and rows[-1]["state"]
  if method == "aioli":   # bursts on each domain (0.625 on it) from step 0
    assert rates[0].max() == pytest.approx(0.625) and rows[-1]["source_step"] == 25
    cost = json.loads((wd / "mixer_cost.json").read_text())
    assert cost["evaluations"] == 2 * (5 + 1) and cost["learnparams_steps"] == 20
  else:
    assert np.all(rates[:3] == 0.2)            # the prior until the first source step
    assert rows[-1]["source_step"] == STEPS - 1 - 2
  avg = json.loads((wd / "average_mixture_weights.json").read_text())
  np.testing.assert_allclose(list(avg.values()), rates.mean(axis=0), rtol=1e-6)
  info = json.loads((wd / "run_info.json").read_text())
  assert info["mixer"]["method"] == method and info["mixer"]["delay"] == 2
  assert np.isfinite(final["uniform_average"])


def test_aioli_evaluations_are_charged_to_its_compute(runs):
  from doremi_jax.analysis import study_stats
  _, out = runs
  wd = out["aioli"][0]
  cost = json.loads((wd / "mixer_cost.json").read_text())
  info = json.loads((wd / "run_info.json").read_text())
  per_token = info["flops_per_token"]
  plain = per_token * info["tokens_per_step"] * STEPS + 2 * info["eval_tokens"] * per_token / 3
  assert study_stats.run_flops(wd) == pytest.approx(
      plain + cost["eval_tokens"] * per_token / 3, rel=1e-12)
  assert cost["eval_tokens"] == cost["evaluations"] * info["eval_tokens"]


def test_the_loader_drew_each_step_from_the_logged_rates(runs):
  """The batches the loader built are the logged rates' draws: the domain
  counts the step saw (metrics.jsonl) are those of ScheduledAssignment
  replayed from the log."""
  _, out = runs
  wd = out["odm"][0]
  rates = _rates(wd)
  history = {str(b): r.tolist() for b, r in enumerate(rates)}
  replay = scheduled.ScheduledAssignment(rates[0], seed=0, every=1, history=history)
  metrics = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  for m in metrics:
    ids = replay(m["step"] - 1, 10)
    want = np.bincount(ids, minlength=5) * 32
    np.testing.assert_array_equal(np.asarray(m["domain_tokens"]) > 0, want > 0)


def test_what_each_paper_predicts_for_the_noise_domain(runs):
  """ODM's reward is raw loss, so it raises the noise domain (loss at log V)
  above the rest; ADO's noise curve is flat, so it sinks once a fit sees it
  flat against the others (here the second, at step 20: at step 10 every
  curve is still flat), slowly: its running average over the global step
  keeps the steps before; online DoReMi's noise excess over the reference
  is about zero, so it falls behind the learnable domains. (Domain 0 of the
  built-in corpus is noise.)"""
  _, out = runs
  final = {m: _rates(out[m][0])[-1] for m in METHODS}
  assert np.argmax(final["odm"]) == 0, final["odm"]
  ado = _rates(out["ado"][0])[:, 0]     # the rates of step t: ADO's after step t - 3
  assert np.argmin(final["ado"]) == 0 and final["ado"][0] < 0.2, final["ado"]
  assert np.all(np.diff(ado[23:]) < 0), ado
  assert np.argmin(final["doremi_online"]) == 0, final["doremi_online"]


def test_resampling_proxy_samples_from_its_weights_three_steps_late(runs):
  """Step 2 with mode='resample': step t's batch is drawn from the Group-DRO
  weights after step t - 3 (the delay of 2 steps past the one-step-late
  metrics), the first three from the initial weights; its averaged weights
  are written as in the default mode."""
  _, out = runs
  wd, avg = out["resample"]
  rates = _rates(wd)
  dro = [json.loads(l) for l in (wd / "doremi_weights.jsonl").read_text().splitlines()]
  assert [r["step"] for r in dro] == list(range(1, STEPS + 1))   # every step, log_every 5
  np.testing.assert_array_equal(rates[:3], np.full((3, 5), 0.2))
  for t in range(3, STEPS):
    np.testing.assert_allclose(rates[t], dro[t - 3]["domain_weights"], rtol=1e-6)
  info = json.loads((wd / "run_info.json").read_text())
  assert info["mode"] == "resample" and info["sampling"] == "dro_weights"
  saved = json.loads((wd / "average_domain_weights.json").read_text())
  assert saved == avg and abs(sum(saved.values()) - 1) < 1e-5


# (online DoReMi resumes like ODM: both update in the step; its reference
# path is covered by the 2-process test in multihost_test.py; ADO's state
# holds its loss curve and fits under lax.cond)
@pytest.mark.parametrize("method", ["odm", "ado", "aioli", "resample"])
def test_killed_run_resumes_to_identical_rates_and_parameters(runs, method, tmp_path):
  tmp, out = runs
  full = out[method][0]
  wd = tmp_path / "resumed"
  shutil.copytree(full, wd)   # as a run killed after checkpoint 10 leaves it
  for p in (wd / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > 10:
      shutil.rmtree(p)
  result = "average_domain_weights.json" if method == "resample" else \
      "average_mixture_weights.json"
  for name in ("complete.json", "eval.json", result):
    (wd / name).unlink()
  if method == "resample":
    _resample(wd, tmp / "reference")
  else:
    _main(wd, method, tmp / "reference" if method == "doremi_online" else None)
  np.testing.assert_array_equal(_rates(wd), _rates(full))
  assert _log(wd) == _log(full)   # every block once, in order, as written uninterrupted
  if method == "resample":   # Step 2's weights log: every step once, as the full run's
    assert weights_log_rows(wd) == weights_log_rows(full)
  a, b = _state(full, STEPS), _state(wd, STEPS)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (json.loads((wd / result).read_text()) == json.loads((full / result).read_text()))


def test_sigterm_stops_a_mixer_run_that_resumes_bitwise(runs, tmp_path):
  """ODM stopped by SIGTERM at step 17 (a checkpoint every 10): a
  checkpoint of step 17 holds the mixer state; the re-run's rates log,
  metrics, mixer state, parameters and averaged rates equal the
  uninterrupted run's."""
  _, out = runs
  full = out["odm"][0]
  wd = tmp_path / "stopped"
  assert stopped_run(lambda: _main(wd, "odm"), 17).step == 17
  assert (wd / "checkpoints" / "17").is_dir()
  _main(wd, "odm")
  for name in ("mixture_weights.jsonl", "metrics.jsonl"):
    assert _log(wd, name) == _log(full, name), name
  for x, y in zip(jax.tree.leaves(_state(full, STEPS)), jax.tree.leaves(_state(wd, STEPS))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  name = "average_mixture_weights.json"
  assert (wd / name).read_bytes() == (full / name).read_bytes()


def test_resume_without_the_log_keeps_the_checkpointed_blocks(runs, tmp_path):
  """The checkpoint's data state alone (no mixture_weights.jsonl) is enough
  to resume with the same process count."""
  tmp, out = runs
  full = out["odm"][0]
  wd = tmp_path / "nolog"
  shutil.copytree(full, wd)
  for p in (wd / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > 20:
      shutil.rmtree(p)
  for name in ("complete.json", "eval.json", "mixture_weights.jsonl",
               "average_mixture_weights.json"):
    (wd / name).unlink()
  _main(wd, "odm")
  # Blocks 20-22 came from the checkpoint (published before it was written);
  # the resumed run logs the ones it computes, identical to the full run's.
  rows = scheduled.read_log(wd / "mixture_weights.jsonl")
  assert [r["step"] for r in rows] == list(range(23, STEPS))
  np.testing.assert_array_equal(_rates(wd), _rates(full)[23:])
  for x, y in zip(jax.tree.leaves(_state(full, STEPS)), jax.tree.leaves(_state(wd, STEPS))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (json.loads((wd / "average_mixture_weights.json").read_text()) ==
          json.loads((full / "average_mixture_weights.json").read_text()))


@pytest.mark.parametrize("stage, bindings, match", [
    ("main", ["train_main_model.mixer = 'exp3'"], "unknown mixing method 'exp3'"),
    ("main", ["train_main_model.mixer = 'odm'", "ODMMixer.smoothing = 2.0"],
     r"ODMMixer.smoothing must be in \[0, 1\)"),
    ("main", ["train_main_model.mixer = 'doremi_online'"], "set train_main_model.reference_dir"),
    ("main", ["train_main_model.mixer = 'odm'", "train_main_model.weights = 'stratified'"],
     "is a sampling mode, not a mixture"),
    ("main", ["train_main_model.reference_dir = '/tmp'"], "only read by the doremi_online"),
    ("proxy", ["train_proxy.mode = 'sample'", "train_proxy.reference_dir = '/nonexistent'"],
     "train_proxy.mode = 'sample'; choose 'reweight'"),
])
def test_bad_mixer_settings_fail_before_anything_is_written(tmp_path, stage, bindings, match):
  wd = tmp_path / "bad"
  with pytest.raises(ConfigError, match=match):
    _stage(stage, wd, *bindings)
  assert not (wd / "checkpoints").exists()
