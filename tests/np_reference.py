"""Independent NumPy implementations of the math under test (loops, float64),
written from the paper's equations, not from the package's code."""

import numpy as np


def np_excess(proxy, ref, mask, dom, k):
  out = np.zeros(k)
  for i in range(k):
    num, den = 0.0, 0.0
    for b in range(proxy.shape[0]):
      if dom[b] != i:
        continue
      for j in range(proxy.shape[1]):
        if mask[b, j]:
          num += max(float(proxy[b, j]) - float(ref[b, j]), 0.0)
          den += 1
    out[i] = num / den if den else 0.0
  return out


def np_update(w, lam, eta, c):
  w = np.asarray(w, np.float64)
  unnorm = w * np.exp(eta * np.asarray(lam, np.float64))
  unnorm /= unnorm.sum()
  return (1 - c) * unnorm + c / len(w)
