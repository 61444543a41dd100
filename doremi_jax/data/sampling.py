"""How a run on a fixed mixture draws the domains of its batches.

Two modes, both a pure function of (seed, step), so every host builds the
same batch and a resumed run draws the same rows:

  'mixture'     every row's domain is drawn i.i.d. so that the domains'
                shares of real tokens are the rates
                (`loader.MixtureAssignment`, `weights.row_rates`)
  'stratified'  every global batch holds batch // k rows of each domain, the
                remainder rotating over steps (`loader.StratifiedAssignment`):
                equal rows (sequences), not equal tokens, per domain in
                every batch when k divides the batch, otherwise over every
                k consecutive steps

Users write the mode where a static run's weights go
(`train_main_model.weights = 'stratified'`, a study arm 'stratified');
every other spec is a mixture's rates (`weights.resolve_weights`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from doremi_jax.data import loader as loader_lib
from doremi_jax.data import weights as weights_lib

MODES = ("mixture", weights_lib.STRATIFIED)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """`mode` (one of MODES) and `rates` [K] (normalised): the mixture's, or
  uniform for stratified batches (what the run records as its rates)."""
  mode: str
  rates: np.ndarray

  @property
  def stratified(self) -> bool:
    return self.mode == weights_lib.STRATIFIED

  def assignment(self, seed: int, global_batch_size: int, tokens_per_row=None):
    """The domain assignment of every step's global batch: a mixture's
    rates are token shares, drawn as rows with the domains' measured
    `tokens_per_row` (`weights.row_rates`); stratified batches equalise rows
    (a stratified batch smaller than k raises ConfigError)."""
    if not self.stratified:
      return loader_lib.MixtureAssignment(self.rates, seed, tokens_per_row)
    assignment = loader_lib.StratifiedAssignment(len(self.rates), seed)
    assignment.counts(0, global_batch_size)
    return assignment


def is_stratified(spec: Any) -> bool:
  return isinstance(spec, str) and spec == weights_lib.STRATIFIED


def resolve(spec: Any, corpus, what: str) -> Sampling:
  """The sampling of a static run whose weights setting `what` is `spec`."""
  if is_stratified(spec):
    return Sampling(weights_lib.STRATIFIED, np.full(corpus.num_domains, 1.0 / corpus.num_domains))
  return Sampling("mixture", weights_lib.resolve_weights(spec, corpus, what))
