"""The built-in synthetic multi-domain corpus.

Five domains of fixed-length token sequences with known, different character,
so that DoReMi has something real to find. Everything is a deterministic
function of (seed, domain, split, example index). Ids 0 (pad) and 1 (EOS) are
reserved; the vocabulary has 128 ids.

| domain     | what it is                                        | difficulty  |
|------------|---------------------------------------------------|-------------|
| noise      | i.i.d. uniform tokens over ids 2..127             | nothing to learn (floor log 126) |
| repeat     | one of 8 fixed period-4 cycles, random phase      | trivial     |
| markov     | sparse Markov chain: 64 states, 4 successors each | medium      |
| arithmetic | `a+b=c;` with 3-digit a, b; c written LSB first   | medium/hard |
| sort       | 8 random symbols (of 16), `|`, the same sorted    | hard (needs attention) |

Each domain's entropy floor (the best achievable mean next-token loss, in
nats, over the sequence) is exact; see `entropy_floor`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Mapping

import gin
import numpy as np
from scipy.special import xlogy

from doremi_jax.config import ConfigError

VOCAB_SIZE = 128
PAD, EOS = 0, 1
# Token ranges of each domain (domains may overlap; the noise domain uses all).
NOISE_LO = 2
REPEAT_LO, REPEAT_CYCLES, REPEAT_PERIOD = 2, 8, 4           # ids 2..33
MARKOV_LO, MARKOV_STATES, MARKOV_FANOUT = 34, 64, 4          # ids 34..97
DIGIT_LO, PLUS, EQUALS, SEMI = 98, 108, 109, 110            # ids 98..110
SORT_LO, SORT_ALPHABET, SORT_LEN, BAR = 111, 16, 8, 127      # ids 111..127

DOMAINS = ("noise", "repeat", "markov", "arithmetic", "sort")
SPLITS = ("train", "validation")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SyntheticCorpusConfig:
  """Sizes are numbers of sequences of `seq_len` tokens per domain. The
  different train sizes make "proportional" reference weights non-uniform."""
  seq_len: int = 128
  seed: int = 0
  train_examples: tuple = (("noise", 2048), ("repeat", 1024), ("markov", 4096),
                           ("arithmetic", 3072), ("sort", 2048))
  # held out, halved by hash into the packed `tune` and `test` splits
  validation_examples: int = 512
  domains: tuple = DOMAINS

  def __post_init__(self):
    """Rejects values that cannot work (gin builds the config where the corpus
    is read, so the error surfaces there) and turns lists into tuples: the
    config is hashed (its repr names the seqio tasks; it keys the cache of
    generated arrays)."""
    for field, lowest in (("seq_len", 1), ("seed", 0), ("validation_examples", 1)):
      value = getattr(self, field)
      if not _is_int(value) or value < lowest:
        kind = "a positive" if lowest == 1 else "a non-negative"
        raise ConfigError(f"SyntheticCorpusConfig.{field} must be {kind} integer, "
                          f"got {value!r}.")
    domains = self.domains
    if isinstance(domains, str) or not isinstance(domains, (tuple, list)) or not all(
        isinstance(d, str) for d in domains):
      raise ConfigError(f"SyntheticCorpusConfig.domains must be a tuple of domain names "
                        f"(from {list(DOMAINS)}), got {domains!r}.")
    domains = tuple(domains)
    if not domains:
      raise ConfigError(f"SyntheticCorpusConfig.domains is empty; name at least one of "
                        f"{list(DOMAINS)}.")
    _check_names("domains", domains, "lists {} more than once; name each domain once.")
    sizes = self.train_examples
    sizes = tuple(sizes.items()) if isinstance(sizes, Mapping) else sizes
    if isinstance(sizes, str) or not isinstance(sizes, (tuple, list)) or not all(
        isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) for p in sizes):
      raise ConfigError("SyntheticCorpusConfig.train_examples must be (domain, count) pairs, "
                        f"e.g. (('noise', 2048), ('repeat', 1024)), got {sizes!r}.")
    sizes = tuple((d, n) for d, n in sizes)
    named = [d for d, _ in sizes]
    _check_names("train_examples", named, "gives {} more than one size; give each domain one.")
    bad = {d: n for d, n in sizes if not _is_int(n) or n <= 0}
    if bad:
      raise ConfigError(f"SyntheticCorpusConfig.train_examples must give each domain a "
                        f"positive integer number of sequences, got {bad}.")
    missing = [d for d in domains if d not in named]
    if missing:
      raise ConfigError(f"SyntheticCorpusConfig.train_examples has no size for {missing}.")
    object.__setattr__(self, "domains", domains)
    object.__setattr__(self, "train_examples", sizes)

  def num_examples(self, domain: str, split: str) -> int:
    if split == "validation":
      return self.validation_examples
    return dict(self.train_examples)[domain]


def _check_names(field: str, names, repeated_msg: str):
  """SyntheticCorpusConfig.<field> names each domain at most once, and only
  built-in domains."""
  repeated = sorted({d for d in names if names.count(d) > 1})
  if repeated:
    raise ConfigError(f"SyntheticCorpusConfig.{field} " + repeated_msg.format(repeated))
  unknown = sorted(set(names) - set(DOMAINS))
  if unknown:
    raise ConfigError(f"SyntheticCorpusConfig.{field} has unknown domains {unknown}; "
                      f"choose from {list(DOMAINS)}.")


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _rng(seed, *keys) -> np.random.Generator:
  return np.random.default_rng([seed, *keys])


@functools.lru_cache(maxsize=None)
def markov_chain(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(successors [S, F], probs [S, F], stationary [S]); fixed by the seed."""
  rng = _rng(seed, 1000)
  # Successor 0 of state s is s+1 (mod S): the chain is irreducible and
  # aperiodic-enough to have a unique stationary distribution.
  succ = np.stack([
      np.concatenate([[(s + 1) % MARKOV_STATES], rng.choice(
          np.setdiff1d(np.arange(MARKOV_STATES), [(s + 1) % MARKOV_STATES]),
          MARKOV_FANOUT - 1, replace=False)])
      for s in range(MARKOV_STATES)])
  probs = rng.dirichlet(np.full(MARKOV_FANOUT, 0.7), size=MARKOV_STATES)
  trans = np.zeros((MARKOV_STATES, MARKOV_STATES))
  np.add.at(trans, (np.arange(MARKOV_STATES)[:, None], succ), probs)
  pi = np.full(MARKOV_STATES, 1.0 / MARKOV_STATES)
  for _ in range(10_000):
    new = pi @ trans
    if np.abs(new - pi).max() < 1e-15:
      break
    pi = new
  return succ, probs, pi / pi.sum()


@functools.lru_cache(maxsize=None)
def repeat_cycles(seed: int) -> np.ndarray:
  """[cycles, period] disjoint token cycles (so the first token fixes the rest)."""
  ids = _rng(seed, 2000).permutation(REPEAT_CYCLES * REPEAT_PERIOD) + REPEAT_LO
  return ids.reshape(REPEAT_CYCLES, REPEAT_PERIOD)


def _pack_blocks(blocks: np.ndarray, seq_len: int) -> np.ndarray:
  """[N, nblocks, block_len] -> [N, seq_len] (concatenate, cut)."""
  n = blocks.shape[0]
  return blocks.reshape(n, -1)[:, :seq_len]


def generate(domain: str, n: int, seq_len: int, seed: int, split: str) -> np.ndarray:
  """Returns int32 [n, seq_len] token sequences of one domain and split."""
  rng = _rng(seed, DOMAINS.index(domain), SPLITS.index(split))
  if domain == "noise":
    out = rng.integers(NOISE_LO, VOCAB_SIZE, size=(n, seq_len))
  elif domain == "repeat":
    cycles = repeat_cycles(seed)
    c = rng.integers(0, REPEAT_CYCLES, size=n)
    phase = rng.integers(0, REPEAT_PERIOD, size=n)
    pos = (phase[:, None] + np.arange(seq_len)[None, :]) % REPEAT_PERIOD
    out = cycles[c[:, None], pos]
  elif domain == "markov":
    succ, probs, pi = markov_chain(seed)
    states = np.empty((n, seq_len), np.int64)
    states[:, 0] = rng.choice(MARKOV_STATES, size=n, p=pi)
    cum = np.cumsum(probs, axis=1)
    u = rng.random((n, seq_len))
    for t in range(1, seq_len):
      prev = states[:, t - 1]
      j = (u[:, t, None] > cum[prev]).sum(axis=1).clip(max=MARKOV_FANOUT - 1)
      states[:, t] = succ[prev, j]
    out = states + MARKOV_LO
  elif domain == "arithmetic":
    nb = -(-seq_len // 13)
    a = rng.integers(0, 1000, size=(n, nb))
    b = rng.integers(0, 1000, size=(n, nb))
    c = a + b
    digits = lambda x, k: np.stack([(x // 10 ** i) % 10 for i in reversed(range(k))], -1)
    lsb_first = lambda x, k: np.stack([(x // 10 ** i) % 10 for i in range(k)], -1)
    blocks = np.concatenate([
        digits(a, 3) + DIGIT_LO, np.full((n, nb, 1), PLUS),
        digits(b, 3) + DIGIT_LO, np.full((n, nb, 1), EQUALS),
        lsb_first(c, 4) + DIGIT_LO, np.full((n, nb, 1), SEMI)], axis=-1)
    out = _pack_blocks(blocks, seq_len)
  elif domain == "sort":
    block = 2 * SORT_LEN + 2
    nb = -(-seq_len // block)
    x = rng.integers(0, SORT_ALPHABET, size=(n, nb, SORT_LEN))
    blocks = np.concatenate([
        x + SORT_LO, np.full((n, nb, 1), BAR), np.sort(x, axis=-1) + SORT_LO,
        np.full((n, nb, 1), SEMI)], axis=-1)
    out = _pack_blocks(blocks, seq_len)
  else:
    raise ValueError(f"unknown synthetic domain {domain!r}; known: {DOMAINS}")
  return out.astype(np.int32)


def _count_random_positions(seq_len: int, block_len: int, random_idx) -> int:
  pos = np.arange(seq_len) % block_len
  return int(np.isin(pos, random_idx).sum())


def entropy_floor(domain: str, seq_len: int, seed: int = 0) -> float:
  """Exact minimum expected mean next-token loss (nats/token) over a sequence."""
  if domain == "noise":
    return math.log(VOCAB_SIZE - NOISE_LO)
  if domain == "repeat":
    return math.log(REPEAT_CYCLES * REPEAT_PERIOD) / seq_len
  if domain == "markov":
    _, probs, pi = markov_chain(seed)
    h_rate = float(-(pi[:, None] * xlogy(probs, probs)).sum())
    h_pi = float(-xlogy(pi, pi).sum())
    return (h_pi + (seq_len - 1) * h_rate) / seq_len
  if domain == "arithmetic":
    k = _count_random_positions(seq_len, 13, [0, 1, 2, 4, 5, 6])
    return k * math.log(10) / seq_len
  if domain == "sort":
    k = _count_random_positions(seq_len, 2 * SORT_LEN + 2, list(range(SORT_LEN)))
    return k * math.log(SORT_ALPHABET) / seq_len
  raise ValueError(f"unknown synthetic domain {domain!r}")


def token_names() -> list[str]:
  """Human-readable names of the 128 ids (used by the seqio vocabulary)."""
  names = [f"t{i}" for i in range(VOCAB_SIZE)]
  names[PAD], names[EOS] = "<pad>", "</s>"
  for d in range(10):
    names[DIGIT_LO + d] = str(d)
  names[PLUS], names[EQUALS], names[SEMI], names[BAR] = "+", "=", ";", "|"
  for i in range(SORT_ALPHABET):
    names[SORT_LO + i] = chr(ord("a") + i)
  return names
