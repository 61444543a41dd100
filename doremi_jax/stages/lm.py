"""Stages `reference` (DoReMi Step 1) and `main` (Step 3): an LM trained on a
fixed mixture (each row's domain drawn with the mixture's rates, or
stratified batches; `data.sampling`), or, for the main model, on a mixture
that an online mixer changes during the run (`mixers`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gin
import jax

from doremi_jax import files
from doremi_jax import mixers as mixers_lib
from doremi_jax import reference as reference_lib
from doremi_jax import rundir
from doremi_jax import runner
from doremi_jax import steps
from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import packing
from doremi_jax.data import sampling as sampling_lib
from doremi_jax.data import scheduled
from doremi_jax.data.registry import get_corpus
from doremi_jax.data import weights as weights_lib
from doremi_jax.mixers import base as mixers_base
from doremi_jax.stages import registry
from doremi_jax.state import TrainConfig, build_setup, train_config


@gin.configurable
def train_reference(workdir: str, weights: Any = "uniform", seed: Optional[int] = None) -> dict:
  """DoReMi Step 1: trains the reference model on the mixture `weights`
  (any spec `train_main_model` accepts; 'uniform' by default) and evaluates
  it per domain. Writes reference_weights.json (the rates used) and the
  runner's files (see `runner.run_stage`). `seed` overrides
  TrainConfig.seed (a study's per-seed method runs). Returns the final
  evaluation."""
  return train_on_mixture(workdir, "reference", weights, "train_reference.weights", seed)


@gin.configurable
def train_main_model(workdir: str, weights: Any = gin.REQUIRED, seed: Optional[int] = None,
                     mixer: Optional[str] = None, reference_dir: Optional[str] = None) -> dict:
  """DoReMi Step 3: trains the main model on the mixture `weights` (each
  row's domain drawn with its rates; a seqio Mixture with these rates is
  registered where seqio imports), where `weights` is a Step 2 run directory or `{domain: weight}` JSON file
  (typically `.../average_domain_weights.json`), a preset ('uniform',
  'proportional', 'pile_baseline', 'pile_doremi_280m'), a mapping, or
  'stratified' (the sampling mode: equal rows of every domain, in every
  batch when k divides the batch, otherwise over every k consecutive steps;
  `loader.StratifiedAssignment`). Domains are resampled with these probabilities (not
  loss-reweighted). `seed` overrides TrainConfig.seed (the study's seeds).
  Writes main_weights.json (the rates used) and the runner's files.

  `mixer` (a registered method: `mixers.names()`) makes the mixture change
  during the run: `weights` is then its prior / starting mixture, the
  mixer's settings are gin's (`ODMMixer.*`, `ADOMixer.*`, ...), and the run
  also writes mixture_weights.jsonl (the rates of every block of steps,
  with the method's state) and average_mixture_weights.json (the rates
  averaged over the run's steps). 'doremi_online' needs `reference_dir`, a
  finished reference run on the same domains."""
  if mixer is not None:
    return train_with_mixer(workdir, weights, mixer, reference_dir, seed)
  if reference_dir is not None:
    raise ConfigError("train_main_model.reference_dir is only read by the doremi_online "
                      "mixer; set train_main_model.mixer = 'doremi_online' or drop it.")
  return train_on_mixture(workdir, "main", weights, "train_main_model.weights", seed)


def train_on_mixture(workdir: str, stage: str, weights: Any, what: str,
                     seed: Optional[int] = None) -> dict:
  """Registers the seqio Mixture `<corpus>_<stage>` with rates `weights` and
  trains an LM on it in `workdir` under the stage name `stage` (`what`
  names the weights setting in errors)."""
  cfg = train_config(seed)
  corpus = get_corpus()
  sampling = sampling_lib.resolve(weights, corpus, what)
  rates = corpus_lib.mixture_rates(sampling.rates)   # as seqio's Mixture reports them
  corpus_lib.register_mixture(f"{corpus.name}_{stage}", corpus, rates)
  sampling = dataclasses.replace(sampling, rates=rates)
  setup = build_setup(corpus.vocab_size, cfg)
  program = steps.lm_program(setup, corpus.num_domains, cfg.grad_accum_steps, cfg.seq_len)
  record = runner.Record({"sampling": sampling.mode, "equal_rows": sampling.stratified},
                         {rundir.weights_file(stage): weights_lib.as_dict(corpus.domains, rates)})
  return runner.run_stage(
      workdir=workdir, stage=stage, corpus=corpus, cfg=cfg, program=program,
      loader=runner.batch_loader(corpus, sampling.assignment(
          cfg.seed, cfg.global_batch_size, loader_lib.tokens_per_row(corpus, cfg.seq_len)), cfg),
      hooks=[record])


def mixer_publisher(workdir: str, corpus, cfg: TrainConfig, mixer, prior, method: str,
                    score_key: str = "domain_loss") -> scheduled.RatesPublisher:
  """The schedule of a mixer's rates: published block by block from the
  step's `mixer_rates` (or by the mixer's host-side events), logged to
  mixture_weights.jsonl."""
  assignment = scheduled.ScheduledAssignment(
      prior, cfg.seed, mixer.every, first_block=not mixer.host_driven,
      tokens_per_row=loader_lib.tokens_per_row(corpus, cfg.seq_len))
  return scheduled.RatesPublisher(
      assignment, None if mixer.host_driven else "mixer_rates", corpus.domains, cfg.num_steps,
      mixers_base.DELAY, files.path(workdir) / rundir.MIXTURE_LOG, method, rundir.is_writer(),
      score_key=score_key)


class MixerHook(runner.Hook):
  """A mixer's host-side events (Aioli's evaluations and updates) and its
  result files: the time-averaged rates (and a host-driven mixer's cost)."""

  def __init__(self, workdir, corpus, cfg, mixer, program, publisher, method):
    self.workdir, self.corpus, self.cfg, self.mixer = workdir, corpus, cfg, mixer
    self.program, self.publisher, self.method = program, publisher, method
    self.tune = None

  def after_step(self, done, state, evaluator):
    mixer = self.mixer
    if not (mixer.host_driven and mixer.is_event(done)):
      return state
    if self.tune is None:   # what the mixer adapts to: the tune split, never test
      self.tune = evaluator.on_split(packing.TUNE)
    new, schedule, losses = mixer.on_step_done(
        done, jax.device_get(state["mixer"]),
        lambda: self.tune.losses(self.program.params_of(state)))
    new = jax.device_get(new)
    log = {"domain_loss": new["last_loss"] if losses is None else losses,
           **{f"mixer/{k}": v for k, v in mixer.report(new).items()}}
    for step in sorted(schedule):
      self.publisher.publish(step, schedule[step], log, done)
    return dict(state, mixer=jax.device_put(new, self.program.state_shardings["mixer"]))

  def on_finish(self, state, final, reference):
    cfg, corpus = self.cfg, self.corpus
    avg = self.publisher.average(cfg.num_steps)
    runner.check_same_rates(cfg.num_steps, self.publisher)
    if jax.process_count() > 1:
      rundir.announce("main", f"mixture rates identical on all {jax.process_count()} processes "
                              "at every step (a CRC of every published block, checked at every "
                              "logged step)")
    if not rundir.is_writer():
      return None
    if self.mixer.host_driven:
      files.write_json(files.path(self.workdir) / rundir.MIXER_COST, self.mixer.cost(
          jax.device_get(state["mixer"]),
          cfg.eval_examples_per_domain * corpus.num_domains * cfg.seq_len, cfg.tokens_per_step))
    files.write_json(files.path(self.workdir) / rundir.AVERAGE_MIXTURE_WEIGHTS,
                     weights_lib.as_dict(corpus.domains, avg))
    top = sorted(zip(corpus.domains, avg), key=lambda kv: -kv[1])
    return (runner.summary_line(final) + f"; {self.method} time-averaged rates " +
            ", ".join(f"{d} {w:.3f}" for d, w in top))


def train_with_mixer(workdir: str, weights: Any, method: str, reference_dir: Optional[str],
                     seed: Optional[int] = None) -> dict:
  """The main stage with the online mixer `method` (see `train_main_model`)."""
  cfg = train_config(seed)
  corpus = get_corpus()
  mixer = mixers_lib.make(method, corpus.num_domains, cfg.num_steps)
  mixer.seed = cfg.seed
  prior = weights_lib.resolve_weights(weights, corpus, "train_main_model.weights")
  setup = build_setup(corpus.vocab_size, cfg)
  reference, info = None, {"sampling": "mixer", "mixer": mixer.describe()}
  if mixer.needs_reference:
    if reference_dir is None:
      raise ConfigError(f"the {method} mixer compares the model with a reference: set "
                        "train_main_model.reference_dir to a finished `reference` run on "
                        "these domains.")
    reference = reference_lib.load(reference_dir, corpus, setup, cfg.seq_len,
                                   "train_main_model.reference_dir")
    info["reference_dir"] = str(reference_dir)
  elif reference_dir is not None:
    raise ConfigError(f"train_main_model.reference_dir is not read by the {method} mixer; "
                      "drop it.")
  program = steps.lm_program(setup, corpus.num_domains, cfg.grad_accum_steps, cfg.seq_len,
                             mixer=mixer, prior=prior, reference=reference)
  publisher = mixer_publisher(workdir, corpus, cfg, mixer, prior, method)
  return runner.run_stage(
      workdir=workdir, stage="main", corpus=corpus, cfg=cfg, program=program,
      loader=runner.batch_loader(corpus, publisher.assignment, cfg),
      hooks=[runner.Record(info, {rundir.weights_file("main"):
                                  weights_lib.as_dict(corpus.domains, prior)}),
             runner.Publisher(publisher, corpus),
             MixerHook(workdir, corpus, cfg, mixer, program, publisher, method)])


registry.register(registry.Stage("reference", train_reference))
registry.register(registry.Stage("main", train_main_model))
