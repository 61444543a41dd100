"""Ahead-of-time compilation for real TPU topologies on this CPU machine
(libtpu from the `tpu`/`test` extras): the real train steps compile, the
paper-scale 280M Group-DRO step fits a v5p slice, a too-large config is
reported as not fitting, with the numbers."""

import subprocess
import sys

import gin
import pytest

from helpers import REPO, configure
from doremi_jax import compile_check
from doremi_jax.config import ConfigError



def _check(files, bindings=(), **kwargs):
  configure(bindings, files)
  return compile_check.compile_check(**kwargs)


def test_tiny_pipeline_on_a_small_topology():
  results = _check(["gin/quickstart.gin"], ["proxy/TrainConfig.global_batch_size = 40"],
                   topology="v5e-4")
  assert [r.stage for r in results] == ["reference", "proxy", "main"]
  for r in results:
    assert r.fits and r.num_devices == 4 and r.chip.name == "TPU v5e"
    assert 0 < r.total_bytes < 2**30
    assert r.argument_bytes > 0
    assert r.flops and r.step_seconds > 0
  assert results[1].tokens_per_step == 40 * 128       # proxy/TrainConfig.global_batch_size
  assert results[0].tokens_per_step == 32 * 128
  # 'auto' attention is the Pallas splash kernel on a TPU topology
  assert {r.attention for r in results} == {"splash"}


def test_chunked_loss_saves_memory_at_a_large_vocabulary(capsys):
  """The LM step with a 64k vocabulary: temporaries fall when the loss runs
  in chunks (the fp32 [batch, length, vocab] logits are never held)."""
  common = ["ModelConfig.vocab_size = 65536", "ModelConfig.attention = 'xla'"]
  (plain,) = _check(["gin/reference.gin"], common, topology="v5e-4", stages=["reference"])
  (chunked,) = _check(["gin/reference.gin"], common + ["ModelConfig.loss_chunk = 16"],
                      topology="v5e-4", stages=["reference"])
  assert plain.attention == "xla" and chunked.loss_chunk == 16
  logits = 32 * 128 * 65536 * 4 // 4      # fp32 logits of one device's 8 sequences
  assert plain.temp_bytes > logits > 2 * chunked.temp_bytes, (plain.temp_bytes,
                                                              chunked.temp_bytes)
  assert "loss in chunks of 16 positions" in capsys.readouterr().out


def test_paper_scale_proxy_fits_a_v5p_slice(capsys):
  (r,) = _check(["gin/pod/doremi_280m_8b.gin", "gin/mesh/v5p-64.gin"], stages=["proxy"])
  out = capsys.readouterr().out
  assert r.slice_name == "v5p-64" and r.num_devices == 32 and r.mesh["fsdp"] == 32
  assert 270e6 < r.num_params < 280e6 and r.tokens_per_step == 512 * 1024
  assert r.fits and r.total_bytes < 95 * 2**30
  assert "== proxy on v5p-64 (32 x TPU v5p)" in out and "FITS" in out
  assert "step time at peak" in out


def test_too_large_config_is_reported_with_numbers(tmp_path):
  r = subprocess.run(
      [sys.executable, "-m", "doremi_jax.compile_check", "--gin_file=gin/pod/doremi_280m_8b.gin",
       "--gin_file=gin/mesh/v5e-16.gin", "--topology=v5e-4", "--stage=main"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert r.returncode == 1, r.stderr[-3000:]
  assert "== main on v5e-4 (4 x TPU v5e)" in r.stdout and "DOES NOT FIT" in r.stdout
  assert "GiB of 16.00 GiB HBM" in r.stdout
  assert "1 stage(s) do not fit: main" in r.stderr


def test_unknown_slice_and_missing_topology_fail_clearly():
  with pytest.raises(ConfigError, match="unknown TPU slice 'v9-8'"):
    _check(["gin/reference.gin"], topology="v9-8")
  gin.clear_config()
  r = subprocess.run([sys.executable, "-m", "doremi_jax.compile_check",
                      "--gin_file=gin/reference.gin"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2 and "pass --topology" in r.stderr


def test_mixer_main_run_and_swarm_compile_what_they_would_train(tmp_path):
  """compile_check builds the step a stage trains by running the stage in
  build-only mode: a main run with the doremi_online mixer compiles the LM
  step with the mixer's update and its reference's forward (more FLOPs than
  the plain step, by that forward), and a swarm compiles its vmapped step
  over the members. Nothing is written anywhere."""
  main = ["gin/main.gin"]
  (plain,) = _check(main, ["train_main_model.weights = 'uniform'"], topology="v5e-4")
  mixed_bindings = ["train_main_model.weights = 'uniform'",
                    "train_main_model.mixer = 'doremi_online'",
                    f"train_main_model.reference_dir = '{tmp_path / 'future_reference'}'"]
  (mixed,) = _check(main, mixed_bindings, topology="v5e-4")
  assert (plain.program, mixed.program) == ("lm", "lm+doremi_online")
  assert plain.fits and mixed.fits
  # the reference (gin's reference/ model: here the main model's size) adds a
  # forward pass: a third of a training token's FLOPs
  assert mixed.model_flops_per_device == pytest.approx(plain.model_flops_per_device * 4 / 3)
  assert mixed.flops > plain.flops * 1.2, (mixed.flops, plain.flops)
  (swarm,) = _check(["gin/swarm_quickstart.gin"], ["train_swarm.members = 8"],
                    topology="v5e-4")
  assert swarm.program == "swarm8" and swarm.fits
  assert swarm.tokens_per_step == 8 * plain.tokens_per_step
  assert swarm.flops > 4 * plain.flops
  assert not (tmp_path / "future_reference").exists() and not any(tmp_path.iterdir())


def test_a_ladder_study_compiles_the_main_step_of_every_rung():
  """A study with `train_study.rungs` compiles its main model's step at
  each rung's size, not only the `main/` settings."""
  results = _check(["gin/ladder_quickstart.gin"], topology="v5e-4")
  assert [r.stage for r in results] == ["main@rung_tiny", "main@rung_small", "main@rung_medium"]
  params = [r.num_params for r in results]
  assert params == sorted(params) and 25 < params[-1] / params[0] < 35
  assert all(r.fits and r.program == "lm" for r in results)
  assert results[-1].model_flops_per_device > 20 * results[0].model_flops_per_device


def test_a_stage_in_build_only_mode_builds_and_writes_nothing(tmp_path):
  """`context.build_program` runs the stage's own code up to training: the
  program a proxy run would train, with its reference abstract when the
  reference run does not exist yet, and an empty run directory."""
  import jax
  from doremi_jax import context
  from doremi_jax.stages import registry
  configure(["train_proxy.mode = 'resample'"], ["gin/quickstart.gin"])
  wd = tmp_path / "proxy"
  with context.using(devices=jax.devices()[:1]):
    program = context.build_program(
        lambda: registry.get("proxy")(str(wd), reference_dir=str(tmp_path / "none")))
  assert program.name == "lm+doremi_online" and program.mixer.name == "doremi_online"
  assert not wd.exists()
