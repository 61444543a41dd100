"""Stages `reference` (DoReMi Step 1) and `main` (Step 3): an LM trained on a
fixed mixture. Both sample each row's domain with the mixture's rates (read
back from a registered seqio Mixture) and train the plain LM step program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gin
import jax

from doremi_jax import files
from doremi_jax import mixers as mixers_lib
from doremi_jax import rundir
from doremi_jax import runner
from doremi_jax import steps
from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import scheduled
from doremi_jax.data.registry import get_corpus
from doremi_jax.data import weights as weights_lib
from doremi_jax.mixers import base as mixers_base
from doremi_jax.stages import proxy as proxy_stage
from doremi_jax.stages import registry
from doremi_jax.state import TrainConfig, build_setup


@gin.configurable
def train_reference(workdir: str, weights: Any = "uniform", devices=None,
                    mixer: Optional[str] = None) -> dict:
  """DoReMi Step 1: trains the reference model on the mixture `weights`
  (any spec `train_main_model` accepts; 'uniform' by default) and evaluates
  it per domain. Writes reference_weights.json (the rates used) and the
  runner's files (see `runner.run_stage`). Returns the final evaluation.
  (`mixer` exists only to refuse one: a reference's mixture is fixed.)"""
  mixers_lib.refuse_on_stage("reference", mixer)
  return train_on_mixture(workdir, "reference", weights, "train_reference.weights", devices)


@gin.configurable
def train_main_model(workdir: str, weights: Any = gin.REQUIRED, devices=None,
                     seed: Optional[int] = None, mixer: Optional[str] = None,
                     reference_dir: Optional[str] = None) -> dict:
  """DoReMi Step 3: trains the main model on a seqio Mixture whose rates are
  `weights`: a Step 2 run directory or `{domain: weight}` JSON file
  (typically `.../average_domain_weights.json`), a preset ('uniform',
  'proportional', 'pile_baseline', 'pile_doremi_280m'), a mapping, or
  'stratified' (exactly equal rows of every domain in every batch). Domains
  are resampled with these probabilities (not loss-reweighted). `seed`
  overrides TrainConfig.seed (the study's seeds). Writes main_weights.json
  (the rates used) and the runner's files.

  `mixer` (one of `mixers.METHODS`) makes the mixture change during the
  run: `weights` is then its prior / starting mixture, the mixer's settings
  are gin's (`ODMMixer.*`, `ADOMixer.*`, ...), and the run also writes
  mixture_weights.jsonl (the rates of every block of steps, with the
  method's state) and average_mixture_weights.json (the rates averaged over
  the run's steps). 'doremi_online' needs `reference_dir`, a finished
  reference run on the same domains."""
  if mixer is not None:
    return train_with_mixer(workdir, weights, mixer, reference_dir, devices, seed)
  if reference_dir is not None:
    raise ConfigError("train_main_model.reference_dir is only read by the doremi_online "
                      "mixer; set train_main_model.mixer = 'doremi_online' or drop it.")
  return train_on_mixture(workdir, "main", weights, "train_main_model.weights", devices, seed)


def train_on_mixture(workdir: str, stage: str, weights: Any, what: str, devices=None,
                     seed: Optional[int] = None) -> dict:
  """Registers the seqio Mixture `<corpus>_<stage>` with rates `weights` and
  trains an LM on it in `workdir` under the stage name `stage`; the weights
  'stratified' give every domain the same rows of every batch instead."""
  cfg = TrainConfig()
  if seed is not None:
    cfg = dataclasses.replace(cfg, seed=seed)
  corpus = get_corpus()
  stratified = isinstance(weights, str) and weights == "stratified"
  w = weights_lib.resolve_weights("uniform" if stratified else weights, corpus, what)
  rates = corpus_lib.mixture_rates(w)
  corpus_lib.register_mixture(f"{corpus.name}_{stage}", corpus, rates)
  if stratified:
    assignment = loader_lib.StratifiedAssignment(corpus.num_domains, cfg.seed)
    assignment.counts(0, cfg.global_batch_size)  # batch >= k, else a clear error
  else:
    assignment = loader_lib.MixtureAssignment(rates, cfg.seed)
  program = build_program(corpus, cfg, devices)
  return runner.run_stage(
      workdir=workdir, stage=stage, corpus=corpus, cfg=cfg, program=program,
      assignment=assignment, info={"sampling": "stratified" if stratified else "mixture"},
      start_files={f"{stage}_weights.json": weights_lib.as_dict(corpus.domains, rates)})


def train_with_mixer(workdir: str, weights: Any, method: str, reference_dir: Optional[str],
                     devices=None, seed: Optional[int] = None) -> dict:
  """The main stage with the online mixer `method` (see `train_main_model`)."""
  cfg = TrainConfig()
  if seed is not None:
    cfg = dataclasses.replace(cfg, seed=seed)
  corpus = get_corpus()
  if isinstance(weights, str) and weights == "stratified":
    raise ConfigError(f"train_main_model.weights = 'stratified' with mixer {method!r}: a mixer "
                      "samples from rates, so its starting mixture must be rates ('uniform', "
                      "'proportional', a file or a mapping).")
  mixer = mixers_lib.make(method, corpus.num_domains, cfg.num_steps)
  mixer.seed = cfg.seed
  prior = weights_lib.resolve_weights(weights, corpus, "train_main_model.weights")
  setup = build_setup(corpus.vocab_size, cfg, devices=devices)
  reference, info = None, {"sampling": "mixer", "mixer": mixer.describe()}
  if mixer.needs_reference:
    if reference_dir is None:
      raise ConfigError(f"the {method} mixer compares the model with a reference: set "
                        "train_main_model.reference_dir to a finished `reference` run on "
                        "these domains.")
    ref = proxy_stage.load_reference(reference_dir, corpus, setup, cfg.seq_len)
    reference = (ref.model, ref.params, ref.shardings)
    info["reference_dir"] = str(reference_dir)
  elif reference_dir is not None:
    raise ConfigError(f"train_main_model.reference_dir is not read by the {method} mixer; "
                      "drop it.")
  program = steps.lm_program(setup, corpus.num_domains, cfg.grad_accum_steps, cfg.seq_len,
                             mixer=mixer, prior=prior, reference=reference)
  assignment = scheduled.ScheduledAssignment(prior, cfg.seed, mixer.every,
                                             first_block=not mixer.host_driven)
  log_path = files.path(workdir) / "mixture_weights.jsonl"
  publisher = scheduled.RatesPublisher(
      assignment, None if mixer.host_driven else "mixer_rates", corpus.domains, cfg.num_steps,
      mixers_base.DELAY, log_path, method, rundir.is_writer())

  def after_step(done, state, evaluator):
    """A host-driven mixer's events (Aioli's evaluations and updates)."""
    if not mixer.is_event(done):
      return state
    host = jax.device_get(state["mixer"])
    new, schedule, losses = mixer.on_step_done(
        done, host, lambda: evaluator.losses(program.params_of(state)))
    new = jax.device_get(new)
    log = {"domain_loss": new["last_loss"] if losses is None else losses,
           **{f"mixer/{k}": v for k, v in mixer.report(new).items()}}
    for step in sorted(schedule):
      publisher.publish(step, schedule[step], log, done)
    return dict(state, mixer=jax.device_put(new, program.state_shardings["mixer"]))

  def on_finish(state, final, reference_eval):
    avg = publisher.average(cfg.num_steps)
    runner.check_same_rates(cfg.num_steps, publisher)
    if jax.process_count() > 1:
      rundir.announce("main", f"mixture rates identical on all {jax.process_count()} processes "
                              "at every step (a CRC of every published block, checked at every "
                              "logged step)")
    if not rundir.is_writer():
      return runner.summary_line(final)
    if mixer.host_driven:
      files.write_json(files.path(workdir) / "mixer_cost.json", mixer.cost(
          jax.device_get(state["mixer"]),
          cfg.eval_examples_per_domain * corpus.num_domains * cfg.seq_len, cfg.tokens_per_step))
    files.write_json(files.path(workdir) / "average_mixture_weights.json",
                     weights_lib.as_dict(corpus.domains, avg))
    top = sorted(zip(corpus.domains, avg), key=lambda kv: -kv[1])
    return (runner.summary_line(final) + f"; {method} time-averaged rates " +
            ", ".join(f"{d} {w:.3f}" for d, w in top))

  return runner.run_stage(
      workdir=workdir, stage="main", corpus=corpus, cfg=cfg, program=program,
      assignment=assignment, info=info, publisher=publisher,
      start_files={"main_weights.json": weights_lib.as_dict(corpus.domains, prior)},
      hooks=runner.Hooks(on_finish=on_finish,
                         after_step=after_step if mixer.host_driven else None))


def build_program(corpus, cfg: TrainConfig, devices=None) -> steps.StepProgram:
  """The LM step program of this run's model and mesh (gin's configs)."""
  setup = build_setup(corpus.vocab_size, cfg, devices=devices)
  return steps.lm_program(setup, corpus.num_domains, cfg.grad_accum_steps, cfg.seq_len)


registry.register(registry.Stage("reference", train_reference, build_program))
registry.register(registry.Stage("main", train_main_model, build_program))
