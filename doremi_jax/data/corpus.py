"""Corpora: a list of domains, each read as packed rows by index, plus their
seqio Tasks and Mixtures for seqio/T5X users.

A `Corpus` is what every stage consumes: domain names (in a fixed order that
defines the domain ids), the vocabulary (`vocab`, no TensorFlow), the number
of training tokens per domain, where known each domain's entropy floor, and
how to open each domain's packed rows by index (what the loader reads).

Training needs neither seqio nor TensorFlow. Each domain also has a seqio
Task over the same documents (`task_names`), registered by
`register_tasks` only when seqio can be imported: when the corpus is built
in a process that has imported seqio already, and by `register_mixture`
(called by every training stage with the mixture it samples) registers the
corpus's Tasks and the Mixture `<corpus>_<stage>`, so seqio/T5X code in the
same process can read them; without seqio it logs one INFO line and
registers nothing. The rates training samples with are `mixture_rates`, the
values seqio's Mixture reports for the same weights.

This module holds only the type and those helpers; the corpora themselves
are built in `synthetic_tasks` and `local_tasks` and chosen by
`registry.get_corpus`. It imports no other `doremi_jax.data` module, so
every other one can import it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Callable, Optional, Sequence

from absl import logging
import numpy as np

# TFDS must never reach for the network: no GCS lookups of dataset metadata.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")


def disable_tfds_gcs() -> None:
  """Turns off TFDS's GCS lookups in this process (the env default above only
  takes effect if it is set before TFDS is first imported). Imports TFDS:
  call it only where TFDS is used."""
  from tensorflow_datasets.core.utils import gcs_utils
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  domains: tuple
  task_names: tuple           # seqio task per domain, same order as `domains`
  vocabulary: object          # a `vocab.Vocabulary` (seqio_vocabulary() for seqio)
  train_tokens: tuple         # tokens per domain in the train split
  entropy_floors: Optional[tuple] = None
  # UTF-8 bytes per token of each domain's text under `vocabulary` (None for
  # a domain, or for the corpus, that has no text: the synthetic corpus)
  bytes_per_token: Optional[tuple] = None
  # Per domain, `(split, seq_len) -> row source` opening its packed rows
  # (`packing`), read by index by the loader.
  packed: Optional[tuple] = None
  # `(seqio) -> None`: registers the seqio Task of every domain (see
  # `register_tasks`); None for a corpus that has none.
  seqio_tasks: Optional[Callable] = dataclasses.field(default=None, compare=False)
  # The config the corpus was built from, where its tasks need it (the
  # synthetic corpus's: the built-in downstream tasks, `tasks.builtin`).
  source_config: Optional[object] = dataclasses.field(default=None, compare=False)

  @property
  def num_domains(self) -> int:
    return len(self.domains)

  @property
  def vocab_size(self) -> int:
    return self.vocabulary.vocab_size

  def domain_index(self, name: str) -> int:
    return self.domains.index(name)


@functools.lru_cache(maxsize=None)
def load_seqio():
  """The seqio module, imported once without TensorFlow's start-up chatter,
  or None (logged once) when seqio or TensorFlow cannot be imported."""
  from doremi_jax import cli
  try:
    with cli.native_stderr_dropped():
      import seqio  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    logging.info("seqio cannot be imported (%s): the corpora's seqio Tasks and Mixtures are "
                 "not registered (training does not need them).", e)
    return None
  disable_tfds_gcs()   # seqio has imported TFDS
  return seqio


def register_task(name: str, **kwargs):
  """Registers (or replaces) the seqio Task `name`; kwargs go to
  `seqio.TaskRegistry.add`."""
  import seqio
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def register_tasks(corpus: Corpus) -> bool:
  """Registers (or replaces) the seqio Task of every domain of `corpus`;
  False (nothing registered) when seqio cannot be imported or the corpus
  has no Tasks."""
  seqio = load_seqio()
  if seqio is None or corpus.seqio_tasks is None:
    return False
  corpus.seqio_tasks(seqio)
  return True


def with_tasks_where_seqio_is_loaded(corpus: Corpus) -> Corpus:
  """Registers the corpus's Tasks now if this process has imported seqio
  already (seqio/T5X code building a corpus finds its Tasks, as before
  training stopped needing them); returns the corpus. Never imports seqio."""
  if sys.modules.get("seqio") is not None:
    register_tasks(corpus)
  return corpus


def mixture_rates(weights: Sequence[float]) -> np.ndarray:
  """The rates a seqio Mixture of `weights` reports (`Mixture.get_rate`:
  0.0 + float(weight), not normalised), float64 [K]: what training samples
  with, with or without seqio."""
  return np.array([0.0 + float(w) for w in weights], dtype=np.float64)


def register_mixture(name: str, corpus: Corpus, weights: Sequence[float]) -> Optional[str]:
  """Registers (or replaces) the corpus's Tasks and a seqio Mixture sampling
  domain i with rate weights[i]; returns its name, or None (nothing
  registered) when seqio cannot be imported or the corpus has no Tasks."""
  if not register_tasks(corpus):
    return None
  import seqio
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      name, [(t, float(w)) for t, w in zip(corpus.task_names, weights)])
  return name
