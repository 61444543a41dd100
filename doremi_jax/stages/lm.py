"""Stages `reference` (DoReMi Step 1) and `main` (Step 3): an LM trained on a
fixed mixture. Both sample each row's domain with the mixture's rates (read
back from a registered seqio Mixture) and train the plain LM step program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gin

from doremi_jax import runner
from doremi_jax import steps
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.data.registry import get_corpus
from doremi_jax.data import weights as weights_lib
from doremi_jax.stages import registry
from doremi_jax.state import TrainConfig, build_setup


@gin.configurable
def train_reference(workdir: str, weights: Any = "uniform", devices=None) -> dict:
  """DoReMi Step 1: trains the reference model on the mixture `weights`
  (any spec `train_main_model` accepts; 'uniform' by default) and evaluates
  it per domain. Writes reference_weights.json (the rates used) and the
  runner's files (see `runner.run_stage`). Returns the final evaluation."""
  return train_on_mixture(workdir, "reference", weights, "train_reference.weights", devices)


@gin.configurable
def train_main_model(workdir: str, weights: Any = gin.REQUIRED, devices=None,
                     seed: Optional[int] = None) -> dict:
  """DoReMi Step 3: trains the main model on a seqio Mixture whose rates are
  `weights`: a Step 2 run directory or `{domain: weight}` JSON file
  (typically `.../average_domain_weights.json`), a preset ('uniform',
  'proportional', 'pile_baseline', 'pile_doremi_280m'), a mapping, or
  'stratified' (exactly equal rows of every domain in every batch). Domains
  are resampled with these probabilities (not loss-reweighted). `seed`
  overrides TrainConfig.seed (the study's seeds). Writes main_weights.json
  (the rates used) and the runner's files."""
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
  mixture = corpus_lib.register_mixture(f"{corpus.name}_{stage}", corpus, w)
  rates = corpus_lib.mixture_rates(mixture, corpus)
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


def build_program(corpus, cfg: TrainConfig, devices=None) -> steps.StepProgram:
  """The LM step program of this run's model and mesh (gin's configs)."""
  setup = build_setup(corpus.vocab_size, cfg, devices=devices)
  return steps.lm_program(setup, corpus.num_domains, cfg.grad_accum_steps, cfg.seq_len)


registry.register(registry.Stage("reference", train_reference, build_program))
registry.register(registry.Stage("main", train_main_model, build_program))
