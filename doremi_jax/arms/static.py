"""Arms whose mixture is known before training: stratified sampling and
UniMax (any other weights spec is `weights_arm`)."""

from __future__ import annotations

import numpy as np

from doremi_jax.arms import base
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import sampling
from doremi_jax.data import weights as weights_lib


@base.register
class Stratified(base.Arm):
  """'stratified': equal rows of every domain, in every batch when k divides
  the batch, otherwise over every k consecutive steps (the sampling mode,
  not a mixture; `loader.StratifiedAssignment`)."""
  kind, spelling, static = "stratified", "stratified", True

  @classmethod
  def matches(cls, spec):
    return sampling.is_stratified(spec)

  def weights(self, seed=0):
    return weights_lib.STRATIFIED

  def rates(self, seeds):
    k = self.study.corpus.num_domains
    return np.full(k, 1.0 / k)


def unimax_weights(train_tokens, budget_tokens: float, max_epochs: float) -> np.ndarray:
  """UniMax (Chung et al. 2023, Algorithm 1): visit domains from the smallest;
  each gets the uniform share of the budget still unallocated, or
  `max_epochs` x its size if that is less. Returns the shares of the budget."""
  sizes = np.asarray(train_tokens, np.float64)
  alloc = np.zeros_like(sizes)
  left = float(budget_tokens)
  order = np.argsort(sizes, kind="stable")
  for i, d in enumerate(order):
    share = left / (len(order) - i)
    alloc[d] = min(share, sizes[d] * max_epochs)
    left -= alloc[d]
  return alloc / alloc.sum()


@base.register
class UniMax(base.Arm):
  """'unimax': UniMax (Chung et al. 2023): uniform over domains, each capped
  at `train_study.unimax_epochs` epochs of its data for the main run's token
  budget; what capped domains cannot use is spread over the rest."""
  kind, spelling, static = "unimax", "unimax", True

  @classmethod
  def matches(cls, spec):
    return isinstance(spec, str) and spec == "unimax"

  def rates(self, seeds):
    """UniMax for the main run's budget in real tokens: its rows times the
    real tokens per row the mixture draws (which depends on the mixture;
    solved by fixed-point iteration, to 1e-12)."""
    cfg, corpus = self.study.cfg, self.study.corpus
    tpr = loader_lib.tokens_per_row(corpus, cfg.seq_len)
    rows, epochs = cfg.num_steps * cfg.global_batch_size, self.study.settings["unimax_epochs"]
    w = unimax_weights(corpus.train_tokens, rows * tpr.mean(), epochs)
    for _ in range(200):
      new = unimax_weights(corpus.train_tokens, rows / np.sum(w / tpr), epochs)
      done = np.abs(new - w).max() < 1e-12
      w = new
      if done:
        break
    return w

  def weights(self, seed=0):
    return weights_lib.as_dict(self.study.corpus.domains, self.rates(0))
