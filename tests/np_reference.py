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


def np_causal_attention(q, k, v):
  """softmax(q k^T / sqrt(dim)) v with a causal mask, [batch, length, heads,
  dim], float64."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  length, dim = q.shape[1], q.shape[-1]
  s = np.einsum("blhk,bmhk->bhlm", q, k) / np.sqrt(dim)
  s = np.where(np.tril(np.ones((length, length), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhlm,bmhk->blhk", p, v)


def np_token_cross_entropy(logits, targets, mask):
  """-log softmax(logits)[target] per token, zero where mask is 0, float64."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  picked = np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  return -picked * np.asarray(mask, np.float64)
