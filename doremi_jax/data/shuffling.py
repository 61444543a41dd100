"""Shuffling by index: `shuffled_rows` maps a domain's stream position to a
packed row through a per-epoch pseudorandom permutation (`feistel_permute`)
that needs no memory, so any host can find the row of any position of any
domain's stream (`loader`)."""

from __future__ import annotations

import functools

import numpy as np



def _mix(x: np.ndarray, key: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer of x ^ key (uint64, wrapping)."""
  z = (x ^ key) * np.uint64(0x9E3779B97F4A7C15)
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def feistel_permute(x: np.ndarray, n, keys) -> np.ndarray:
  """A pseudorandom permutation of range(n) applied to `x` (values in
  range(n)): a balanced 4-round Feistel network on the smallest even bit
  width that holds n, with cycle walking back into range. O(1) memory, so a
  host finds any position's row without materialising a permutation.
  `n` and `keys` ([4] or [len(x), 4]) may differ per element (several
  domains in one call)."""
  x = np.asarray(x, np.uint64)
  n = np.broadcast_to(np.asarray(n, np.int64), x.shape)
  keys = np.broadcast_to(np.asarray(keys, np.uint64).reshape(-1, 4), x.shape + (4,))
  bits = np.zeros(x.shape, np.uint64)
  for m in np.unique(n):
    b = max(2, int(m - 1).bit_length())
    bits[n == m] = b + b % 2
  half = bits // np.uint64(2)
  low = (np.uint64(1) << half) - np.uint64(1)

  def once(v, sel):
    h, lo, k = half[sel], low[sel], keys[sel]
    left, right = v >> h, v & lo
    for r in range(4):
      left, right = right, left ^ (_mix(right, k[:, r]) & lo)
    return (left << h) | right

  with np.errstate(over="ignore"):
    y = x.copy()
    todo = n > 1
    y[todo] = once(x[todo], todo)
    out = np.flatnonzero(todo & (y >= n.astype(np.uint64)))
    while len(out):
      sel = np.zeros(x.shape, bool)
      sel[out] = True
      y[out] = once(y[out], sel)
      out = out[y[out] >= n[out].astype(np.uint64)]
  return np.where(n > 1, y, 0).astype(np.int64)


@functools.lru_cache(maxsize=1 << 14)
def epoch_keys(seed: int, domain: int, epoch: int) -> tuple:
  rng = np.random.default_rng([seed, 0x706B64, domain, epoch])
  return tuple(int(k) for k in rng.integers(0, 2**63, size=4, dtype=np.int64))


def shuffled_rows(positions: np.ndarray, n, seed: int, domain) -> np.ndarray:
  """The row read at each stream position of a domain with n rows: epoch
  e = position // n visits every row once, in the order of a permutation
  keyed by (seed, domain, e). `n` and `domain` may be per position (one
  call for every domain of a batch)."""
  positions = np.asarray(positions, np.int64)
  n = np.broadcast_to(np.asarray(n, np.int64), positions.shape)
  domain = np.broadcast_to(np.asarray(domain, np.int64), positions.shape)
  epochs = positions // n
  keys = np.array([epoch_keys(seed, int(d), int(e)) for d, e in zip(domain, epochs)],
                  np.uint64).reshape(-1, 4)
  return feistel_permute(positions % n, n, keys)
