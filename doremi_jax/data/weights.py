"""Domain weights: published presets and the one resolver every stage uses.

A weights spec is what a user writes in gin (`train_main.weights`,
`train_proxy.initial_weights`, `run_pipeline.reference_weights`, ...):
'uniform', 'proportional' (to each domain's training tokens), a preset name,
a `{domain: weight}` JSON file, a Step 2 run directory (its
average_domain_weights.json), a `{domain: weight}` mapping naming every
domain, or a sequence of k numbers. `resolve_weights` turns any of these
into a normalised float64 vector in the corpus's domain order.

The presets are the published domain weights for The Pile (22 domains): the
Pile's own baseline mixture (256k-vocabulary token counts) and the weights
DoReMi found with a 280M proxy (Xie et al. 2023, Table 1/2).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from etils import epath

from doremi_jax import rundir
from doremi_jax.config import ConfigError
from doremi_jax.data.corpus import Corpus

PILE_BASELINE = {
    "Pile-CC": 0.1121, "OpenWebText2": 0.1247, "Wikipedia (en)": 0.0919,
    "YoutubeSubtitles": 0.0042, "PhilPapers": 0.0027, "Books3": 0.0676, "Github": 0.0427,
    "StackExchange": 0.0929, "HackerNews": 0.0075, "PubMed Abstracts": 0.0845,
    "Ubuntu IRC": 0.0074, "Gutenberg (PG-19)": 0.0199, "Enron Emails": 0.0030,
    "NIH ExPorter": 0.0052, "EuroParl": 0.0043, "BookCorpus2": 0.0044,
    "OpenSubtitles": 0.0124, "PubMed Central": 0.1071, "FreeLaw": 0.0386, "ArXiv": 0.1052,
    "USPTO Backgrounds": 0.0420, "DM Mathematics": 0.0198,
}

PILE_DOREMI_280M = {
    "Pile-CC": 0.6057, "OpenWebText2": 0.1019, "Wikipedia (en)": 0.0699,
    "YoutubeSubtitles": 0.0502, "PhilPapers": 0.0274, "Books3": 0.0224, "Github": 0.0179,
    "StackExchange": 0.0153, "HackerNews": 0.0134, "PubMed Abstracts": 0.0113,
    "Ubuntu IRC": 0.0093, "Gutenberg (PG-19)": 0.0072, "Enron Emails": 0.0070,
    "NIH ExPorter": 0.0063, "EuroParl": 0.0062, "BookCorpus2": 0.0061,
    "OpenSubtitles": 0.0047, "PubMed Central": 0.0046, "FreeLaw": 0.0043, "ArXiv": 0.0036,
    "USPTO Backgrounds": 0.0036, "DM Mathematics": 0.0018,
}

PRESETS = {"pile_baseline": PILE_BASELINE, "pile_doremi_280m": PILE_DOREMI_280M}


BUILTIN = ("uniform", "proportional")
# Not a mixture but a sampling mode (`sampling.resolve`), spelled where a
# static run's weights go: equal rows of every domain (in every batch when k
# divides the batch, otherwise over every k consecutive steps).
STRATIFIED = "stratified"


def resolve_weights(spec, corpus: Corpus, what: str = "weights") -> np.ndarray:
  """Turns a weights spec (see the module docstring) into a normalised
  float64 vector [k] in domain order; `what` names the setting in errors.
  Mappings must name every domain of the corpus (0 is allowed)."""
  k = corpus.num_domains
  if isinstance(spec, str):
    if spec == STRATIFIED:
      raise ConfigError(f"{what} = 'stratified': stratified sampling (equal rows of every "
                        "domain, per batch or over every k steps) is a sampling mode, not a mixture; this "
                        "setting needs rates ('uniform', 'proportional', a file or a mapping).")
    if spec == "uniform":
      return np.full(k, 1.0 / k)
    if spec == "proportional":
      w = np.asarray(corpus.train_tokens, np.float64)
      return w / w.sum()
    spec = PRESETS[spec] if spec in PRESETS else _read_weights_file(spec, what)
  if isinstance(spec, Mapping):
    unknown = sorted(set(spec) - set(corpus.domains))
    missing = [d for d in corpus.domains if d not in spec]
    if unknown or missing:
      parts = []
      if unknown:
        parts.append(f"unknown domains {unknown}")
      if missing:
        parts.append(f"missing domains {missing}")
      raise ConfigError(f"{what}: {' and '.join(parts)}. The corpus's domains are "
                        f"{list(corpus.domains)}; give a weight for each (0 is allowed).")
    try:
      w = np.array([float(spec[d]) for d in corpus.domains], np.float64)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{what}: cannot read {dict(spec)!r} as weights (every value must "
                        "be a number).") from e
  else:
    try:
      w = np.asarray(spec, np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{what}: cannot read {spec!r} as weights.") from e
    if w.shape[0] != k:
      raise ConfigError(f"{what}: got {w.shape[0]} weights for {k} domains "
                        f"{list(corpus.domains)}.")
  return validate_weights(w, corpus.domains, what)


def _read_weights_file(spec: str, what: str) -> dict:
  """The {domain: weight} object in a JSON file, or in a Step 2 run
  directory's average_domain_weights.json (local paths or gs://)."""
  path = epath.Path(spec)
  if path.is_dir():
    path = path / rundir.AVERAGE_WEIGHTS   # what a Step 2 (proxy) run writes
  if not path.exists():
    raise ConfigError(
        f"{what}: {spec!r} is neither a preset ({', '.join([*BUILTIN, *PRESETS])}) "
        f"nor an existing file: {path} does not exist. Point it at a Step 2 run directory or "
        "a {domain: weight} JSON file.")
  try:
    obj = rundir.read_result(path)
  except ConfigError as e:
    raise ConfigError(f"{what}: {e}") from e
  if not isinstance(obj, dict):
    raise ConfigError(f"{what}: {path} must hold a JSON object {{domain: weight}}.")
  return obj


def validate_weights(w, domains: Sequence[str], what: str) -> np.ndarray:
  """Checks a weight vector [k] (finite, non-negative, not all zero; errors
  name the offending domains) and returns it normalised to sum to 1."""
  w = np.asarray(w, np.float64)
  named = lambda mask: [d for d, m in zip(domains, mask) if m]
  if not np.all(np.isfinite(w)):
    raise ConfigError(f"{what}: weights must be finite numbers; got NaN/inf for "
                      f"{named(~np.isfinite(w))}.")
  if np.any(w < 0):
    raise ConfigError(f"{what}: weights must be non-negative; got negative weights for "
                      f"{named(w < 0)}: {w[w < 0].tolist()}.")
  if w.sum() <= 0:
    raise ConfigError(f"{what}: all weights are zero; at least one domain needs a "
                      f"positive weight.")
  return w / w.sum()


def as_dict(domains: Sequence[str], w) -> dict:
  """{domain: weight} as plain floats (for JSON), in domain order."""
  w = np.asarray(w, np.float64).reshape(-1)
  if len(w) != len(domains):
    raise ValueError(f"{len(w)} weights for {len(domains)} domains {list(domains)}.")
  return {d: float(x) for d, x in zip(domains, w)}


def row_rates(weights, tokens_per_row=None) -> np.ndarray:
  """The row rates that realise the token shares `weights`: a domain's
  rows hold `tokens_per_row[i]` real tokens on average, so it is drawn with
  rate ~ weights[i] / tokens_per_row[i] (normalised). None: rows are full
  (tokens and rows are the same shares)."""
  w = np.asarray(weights, np.float64)
  if tokens_per_row is not None:
    w = w / np.asarray(tokens_per_row, np.float64)
  return w / np.sum(w)
