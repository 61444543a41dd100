"""Corpora: a list of domains, each served as one seqio Task, plus mixtures.

A `Corpus` is what every stage consumes: domain names (in a fixed order that
defines the domain ids), the seqio task name of each domain, the vocabulary,
the number of training tokens per domain and, where known, each domain's
entropy floor.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Mapping, Optional, Sequence

import gin
import numpy as np

from doremi_jax.config import ConfigError

# TFDS must never reach for the network: no GCS lookups of dataset metadata.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")


def _disable_tfds_gcs():
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
  splits: tuple = ("train", "validation")

  @property
  def num_domains(self) -> int:
    return len(self.domains)

  @property
  def vocab_size(self) -> int:
    return self.vocabulary.vocab_size

  def domain_index(self, name: str) -> int:
    return self.domains.index(name)


def register_task(name: str, **kwargs):
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


@functools.lru_cache(maxsize=None)
def _synthetic_arrays(cfg, domain: str, split: str) -> np.ndarray:
  from doremi_jax.data import synthetic
  return synthetic.generate(domain, cfg.num_examples(domain, split), cfg.seq_len, cfg.seed, split)


def synthetic_corpus(cfg=None) -> Corpus:
  """Registers one seqio Task per synthetic domain and returns the Corpus."""
  import seqio
  import tensorflow as tf
  from doremi_jax.data import synthetic
  from doremi_jax.data.vocab import SyntheticVocabulary

  cfg = cfg or synthetic.SyntheticCorpusConfig()
  unknown = sorted(set(cfg.domains) - set(synthetic.DOMAINS))
  if unknown:
    raise ConfigError(f"SyntheticCorpusConfig.domains has unknown domains {unknown}; "
                      f"choose from {list(synthetic.DOMAINS)}.")
  missing = [d for d in cfg.domains if d not in dict(cfg.train_examples)]
  if missing:
    raise ConfigError(f"SyntheticCorpusConfig.train_examples has no size for {missing}.")
  vocab = SyntheticVocabulary()
  tag = hashlib.sha1(repr(cfg).encode()).hexdigest()[:8]
  task_names = []
  for domain in cfg.domains:
    def dataset_fn(split, shuffle_files, seed=None, domain=domain):
      del shuffle_files, seed  # the source is in memory; the Task shuffles.
      return tf.data.Dataset.from_tensor_slices({"targets": _synthetic_arrays(cfg, domain, split)})
    name = f"doremi_synthetic_{tag}_{domain}"
    register_task(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn, splits=synthetic.SPLITS,
            num_input_examples={s: cfg.num_examples(domain, s) for s in synthetic.SPLITS}),
        preprocessors=[],
        output_features={"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)},
        shuffle_buffer_size=10_000)
    task_names.append(name)
  return Corpus(
      name=f"synthetic_{tag}",
      domains=tuple(cfg.domains),
      task_names=tuple(task_names),
      vocabulary=vocab,
      train_tokens=tuple(cfg.num_examples(d, "train") * cfg.seq_len for d in cfg.domains),
      entropy_floors=tuple(synthetic.entropy_floor(d, cfg.seq_len, cfg.seed) for d in cfg.domains),
  )


@gin.configurable
def get_corpus(name: str = "synthetic") -> Corpus:
  """The corpus the run trains on. `synthetic` is the built-in default."""
  _disable_tfds_gcs()
  if name == "synthetic":
    return synthetic_corpus()
  if name == "local":
    from doremi_jax.data import local
    return local.local_corpus()
  raise ConfigError(f"unknown corpus {name!r}; set get_corpus.name = 'synthetic' or 'local'.")


def resolve_weights(spec, corpus: Corpus, what: str = "reference weights") -> np.ndarray:
  """Turns a weights spec into a normalised float64 vector in domain order.

  spec: 'uniform', 'proportional' (to training tokens), a {domain: weight}
  mapping naming every domain, or a sequence of k numbers.
  """
  k = corpus.num_domains
  if isinstance(spec, str):
    if spec == "uniform":
      return np.full(k, 1.0 / k)
    if spec == "proportional":
      w = np.asarray(corpus.train_tokens, np.float64)
      return w / w.sum()
    raise ConfigError(f"{what}: unknown preset {spec!r}; use 'uniform', 'proportional', "
                      f"or a {{domain: weight}} mapping.")
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
    w = np.array([float(spec[d]) for d in corpus.domains], np.float64)
  else:
    try:
      w = np.asarray(spec, np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{what}: cannot read {spec!r} as weights.") from e
    if w.shape[0] != k:
      raise ConfigError(f"{what}: got {w.shape[0]} weights for {k} domains "
                        f"{list(corpus.domains)}.")
  return validate_weights(w, corpus.domains, what)


def load_weights_spec(spec, what: str):
  """Reads Step 3 weights given by name: a preset ('uniform', 'proportional',
  'pile_baseline', 'pile_doremi_280m'), a `{domain: weight}` JSON file, or a
  Step 2 run directory (its average_domain_weights.json). Mappings and
  sequences pass through unchanged."""
  from doremi_jax import io
  from doremi_jax.data import presets
  if not isinstance(spec, str) or spec in ("uniform", "proportional"):
    return spec
  if spec in presets.PRESETS:
    return dict(presets.PRESETS[spec])
  path = io.path(spec)
  if path.is_dir():
    path = path / "average_domain_weights.json"
  if not path.exists():
    raise ConfigError(
        f"{what}: {spec!r} is neither a preset ({', '.join(['uniform', 'proportional', *presets.PRESETS])}) "
        f"nor an existing file: {path} does not exist. Point it at a Step 2 run directory or "
        "a {domain: weight} JSON file.")
  import json
  try:
    obj = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{what}: {path} is not valid JSON ({e}).") from e
  if not isinstance(obj, dict):
    raise ConfigError(f"{what}: {path} must hold a JSON object {{domain: weight}}.")
  return obj


def validate_weights(w, domains, what: str) -> np.ndarray:
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
