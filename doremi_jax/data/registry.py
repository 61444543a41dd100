"""Which corpus a run trains on: `get_corpus.name` picks one of `CORPORA`.

Importing this module registers every corpus's gin configurables
(`get_corpus`, `SyntheticCorpusConfig`, `LocalCorpusConfig`).
"""

from __future__ import annotations

from typing import Callable

import gin

from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import local_tasks, synthetic_tasks

# name -> builder; each builder reads its own gin-configured config.
CORPORA: dict[str, Callable[[], corpus_lib.Corpus]] = {
    "synthetic": synthetic_tasks.synthetic_corpus,
    "local": local_tasks.local_corpus,
}


@gin.configurable
def get_corpus(name: str = "synthetic") -> corpus_lib.Corpus:
  """The corpus the run trains on. `synthetic` is the built-in default."""
  if not isinstance(name, str) or name not in CORPORA:
    raise ConfigError(f"unknown corpus {name!r}; set get_corpus.name to one of "
                      f"{', '.join(repr(n) for n in CORPORA)}.")
  return CORPORA[name]()
