"""Corpora: a list of domains, each served as one seqio Task, plus mixtures.

A `Corpus` is what every stage consumes: domain names (in a fixed order that
defines the domain ids), the seqio task name of each domain, the vocabulary,
the number of training tokens per domain, where known each domain's
entropy floor, and how to open each domain's packed rows by index (what the
loader reads; the seqio Tasks stay registered over the same documents for
seqio/T5X users).

This module holds only the type and the seqio registration helpers; the
corpora themselves are built in `synthetic_tasks` and `local_tasks` and
chosen by `registry.get_corpus`. It imports no other `doremi_jax.data`
module, so every other one can import it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

# TFDS must never reach for the network: no GCS lookups of dataset metadata.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")


def disable_tfds_gcs() -> None:
  """Turns off TFDS's GCS lookups in this process (the env default above only
  takes effect if it is set before TFDS is first imported)."""
  from tensorflow_datasets.core.utils import gcs_utils
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  domains: tuple
  task_names: tuple           # seqio task per domain, same order as `domains`
  vocabulary: object          # seqio.Vocabulary
  train_tokens: tuple         # tokens per domain in the train split
  entropy_floors: Optional[tuple] = None
  # UTF-8 bytes per token of each domain's text under `vocabulary` (None for
  # a domain, or for the corpus, that has no text: the synthetic corpus)
  bytes_per_token: Optional[tuple] = None
  splits: tuple = ("train", "validation")
  # Per domain, `(split, seq_len) -> row source` opening its packed rows
  # (`packing`), read by index; None for a corpus with a domain that can
  # only be streamed through its seqio Task (`loader` explains both).
  packed: Optional[tuple] = None

  @property
  def num_domains(self) -> int:
    return len(self.domains)

  @property
  def vocab_size(self) -> int:
    return self.vocabulary.vocab_size

  def domain_index(self, name: str) -> int:
    return self.domains.index(name)


def register_task(name: str, **kwargs):
  """Registers (or replaces) the seqio Task `name`; kwargs go to
  `seqio.TaskRegistry.add`."""
  import seqio
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def register_mixture(name: str, corpus: Corpus, weights: Sequence[float]) -> str:
  """Registers (or replaces) a seqio Mixture sampling domain i with rate
  weights[i]; returns its name."""
  import seqio
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      name, [(t, float(w)) for t, w in zip(corpus.task_names, weights)])
  return name


def mixture_rates(mixture_name: str, corpus: Corpus) -> np.ndarray:
  """The rates of a registered mixture, in the corpus's domain order."""
  import seqio
  mix = seqio.get_mixture_or_task(mixture_name)
  return np.array([mix.get_rate(seqio.get_mixture_or_task(t)) for t in corpus.task_names],
                  dtype=np.float64)
