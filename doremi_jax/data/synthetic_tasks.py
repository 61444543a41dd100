"""The built-in synthetic corpus (the data is `synthetic`'s): packed rows in
memory, read by index, and one seqio Task per domain over the same
sequences, registered only where seqio is wanted (see `corpus`).

Neither building the corpus nor training on it imports seqio or TensorFlow.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Optional

import numpy as np

from doremi_jax.data import packing, synthetic
from doremi_jax.data.corpus import Corpus, register_task, with_tasks_where_seqio_is_loaded
from doremi_jax.data.vocab import SyntheticVocabulary


@functools.lru_cache(maxsize=None)
def _synthetic_arrays(cfg: synthetic.SyntheticCorpusConfig, domain: str,
                      split: str) -> np.ndarray:
  """int32 [num_examples(domain, split), seq_len], generated once per process
  (the config is frozen, so it is a cache key)."""
  return synthetic.generate(domain, cfg.num_examples(domain, split), cfg.seq_len, cfg.seed, split)


def split_sequences(cfg: synthetic.SyntheticCorpusConfig, domain: str, split: str) -> np.ndarray:
  """The domain's sequences of a packed split: train's, or the validation
  sequences whose hash puts them in `tune` or `test` (`packing.eval_split`
  of 'domain:index')."""
  if split == packing.TRAIN:
    return _synthetic_arrays(cfg, domain, split)
  if split not in (packing.TUNE, packing.TEST):
    raise ValueError(f"no packed split {split!r}; the splits are {packing.SPLITS}")
  rows = _synthetic_arrays(cfg, domain, "validation")
  keep = [packing.eval_split(f"{domain}:{i}") == split for i in range(len(rows))]
  return rows[np.asarray(keep, bool)]


@functools.lru_cache(maxsize=None)
def _packed_arrays(cfg: synthetic.SyntheticCorpusConfig, domain: str, split: str,
                   seq_len: int) -> tuple:
  """The domain's sequences of `split` (each one document) packed into rows
  of `seq_len`: (targets, segment_ids)."""
  rows = split_sequences(cfg, domain, split)
  docs = (r[:len(np.trim_zeros(r, "b"))] for r in rows)   # trailing 0s are padding
  packed = list(packing.pack_documents(docs, seq_len))
  return np.stack([p[0] for p in packed]), np.stack([p[1] for p in packed])


def packed_rows(cfg: synthetic.SyntheticCorpusConfig, domain: str, split: str,
                seq_len: int) -> packing.MemoryRows:
  """One synthetic domain's packed rows (a fresh reader over cached arrays)."""
  return packing.MemoryRows(*_packed_arrays(cfg, domain, split, seq_len))


def register_seqio_tasks(seqio, cfg: synthetic.SyntheticCorpusConfig, task_names: tuple):
  """Registers the seqio Task of every domain (`Corpus.seqio_tasks`): the
  generated sequences, in memory, one example each."""
  import tensorflow as tf
  vocab = SyntheticVocabulary().seqio_vocabulary()
  for domain, name in zip(cfg.domains, task_names):
    def dataset_fn(split, shuffle_files, seed=None, domain=domain):
      del shuffle_files, seed  # the source is in memory; the Task shuffles.
      return tf.data.Dataset.from_tensor_slices({"targets": _synthetic_arrays(cfg, domain, split)})
    register_task(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn, splits=synthetic.SPLITS,
            num_input_examples={s: cfg.num_examples(domain, s) for s in synthetic.SPLITS}),
        preprocessors=[],
        output_features={"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)},
        shuffle_buffer_size=10_000)


def synthetic_corpus(cfg: Optional[synthetic.SyntheticCorpusConfig] = None) -> Corpus:
  """The synthetic Corpus of `cfg`. Its seqio Tasks are registered now only
  in a process that has imported seqio, else by `corpus.register_tasks`
  where a stage registers its Mixture.

  The config is validated when it is built (`SyntheticCorpusConfig.__post_init__`).
  Task names carry a hash of the config, so corpora of different configs
  can be registered side by side.
  """
  cfg = cfg or synthetic.SyntheticCorpusConfig()
  tag = hashlib.sha1(repr(cfg).encode()).hexdigest()[:8]
  task_names = tuple(f"doremi_synthetic_{tag}_{domain}" for domain in cfg.domains)
  return with_tasks_where_seqio_is_loaded(Corpus(
      name=f"synthetic_{tag}",
      domains=tuple(cfg.domains),
      task_names=task_names,
      vocabulary=SyntheticVocabulary(),
      train_tokens=tuple(cfg.num_examples(d, "train") * cfg.seq_len for d in cfg.domains),
      entropy_floors=tuple(synthetic.entropy_floor(d, cfg.seq_len, cfg.seed) for d in cfg.domains),
      packed=tuple(functools.partial(packed_rows, cfg, d) for d in cfg.domains),
      seqio_tasks=functools.partial(register_seqio_tasks, cfg=cfg, task_names=task_names),
      source_config=cfg,
  ))
