"""Log-likelihood scoring of (context, continuation) requests and the
multiple-choice metrics built on it.

`pack_requests` places every request (its context tokens, then its
continuation tokens) as one segment of a packed row, first come first
served; a request longer than a row keeps its continuation and the end of
its context, as lm-evaluation-harness truncates from the left. The model
never attends across segments (`loss.model_inputs`), so a request's score
is what it scores alone. `loglikelihoods` runs one jitted forward per batch
of rows and sums the continuation tokens' log-probabilities per request.

`choice_metrics` turns the log-likelihoods of each question's choices into
accuracy, length-normalised accuracy (per character and per token), the
probability of the correct choice normalised over the choices, and the
gold continuation's bits per byte: the metrics of OLMo's and Marin's
small-scale evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax.config import ConfigError
from doremi_jax.loss import per_token_loss


@dataclasses.dataclass(frozen=True)
class Packed:
  """Rows of requests: `targets`, `segment_ids` and `scored` (1.0 on the
  continuation tokens) [R, L]; `request` [R, L], the request each token
  belongs to (-1: padding)."""
  targets: np.ndarray
  segment_ids: np.ndarray
  scored: np.ndarray
  request: np.ndarray


def pack_requests(requests: Sequence[tuple], seq_len: int) -> Packed:
  """Packs (context ids, continuation ids) requests into rows of `seq_len`
  (see the module docstring). A continuation must be non-empty and no
  longer than a row."""
  rows: list = []
  used: list = []
  for i, (context, continuation) in enumerate(requests):
    context, continuation = list(context), list(continuation)
    if not continuation:
      raise ConfigError(f"request {i} has an empty continuation; every request scores at least "
                        "one token.")
    if len(continuation) > seq_len:
      raise ConfigError(f"request {i}'s continuation has {len(continuation)} tokens, more than a "
                        f"row of {seq_len}; raise the sequence length or shorten it.")
    tokens = (context + continuation)[-seq_len:]
    n_cont = len(continuation)
    at = next((r for r, u in enumerate(used) if u + len(tokens) <= seq_len), None)
    if at is None:
      rows.append([])
      used.append(0)
      at = len(rows) - 1
    rows[at].append((i, tokens, n_cont))
    used[at] += len(tokens)
  shape = (len(rows), seq_len)
  out = Packed(np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.float32),
               np.full(shape, -1, np.int64))
  for r, segments in enumerate(rows):
    pos = 0
    for j, (i, tokens, n_cont) in enumerate(segments, 1):
      end = pos + len(tokens)
      out.targets[r, pos:end], out.segment_ids[r, pos:end] = tokens, j
      out.scored[r, end - n_cont:end] = 1.0
      out.request[r, pos:end] = i
      pos = end
  return out


def loglikelihoods(model, params, requests: Sequence[tuple], seq_len: int,
                   batch_rows: int = 8) -> np.ndarray:
  """Each request's continuation log-likelihood (nats, float64 [N]) under
  `model` with `params`: the sum of its continuation tokens'
  log-probabilities given everything before them in the request."""
  packed = pack_requests(requests, seq_len)
  step = jax.jit(lambda p, t, s: per_token_loss(model, p, {"targets": t, "segment_ids": s})[0])
  out = np.zeros(len(requests), np.float64)
  for lo in range(0, len(packed.targets), batch_rows):
    sl = slice(lo, lo + batch_rows)
    t, s = packed.targets[sl], packed.segment_ids[sl]
    pad = batch_rows - len(t)   # one compiled shape for every batch
    if pad:
      t = np.concatenate([t, np.zeros((pad, seq_len), np.int32)])
      s = np.concatenate([s, np.zeros((pad, seq_len), np.int32)])
    loss = np.asarray(step(params, jnp.asarray(t), jnp.asarray(s)), np.float64)[:len(t) - pad]
    scored, req = packed.scored[sl] > 0, packed.request[sl]
    np.add.at(out, req[scored], -loss[scored])
  return out


def choice_metrics(loglik_per_choice: Sequence[Sequence[float]], gold: Sequence[int],
                   choice_chars: Sequence[Sequence[int]], choice_tokens: Sequence[Sequence[int]],
                   gold_bytes: Sequence[int]) -> dict:
  """Multiple-choice metrics over questions. For question q: the
  log-likelihoods of its choices, its gold index, every choice's length in
  characters and in tokens, and the gold continuation's UTF-8 bytes.

  acc: argmax of the log-likelihood is gold; acc_per_char / acc_per_token:
  argmax of the log-likelihood divided by the choice's characters / tokens;
  prob_correct: the gold choice's probability normalised over the choices
  (softmax of the log-likelihoods); bpb: the gold continuation's bits per
  byte (-loglik / ln 2 / bytes). Ties in an argmax go to the first choice,
  as in lm-evaluation-harness. Means over questions."""
  if not (len(loglik_per_choice) == len(gold) == len(choice_chars) == len(choice_tokens)
          == len(gold_bytes)) or not gold:
    raise ValueError("choice_metrics needs the same, non-zero number of questions in every "
                     "argument")
  acc, per_char, per_token, prob, bpb = [], [], [], [], []
  for ll, g, chars, toks, nbytes in zip(loglik_per_choice, gold, choice_chars, choice_tokens,
                                        gold_bytes):
    ll = np.asarray(ll, np.float64)
    if not 0 <= g < len(ll):
      raise ValueError(f"gold index {g} outside the {len(ll)} choices")
    acc.append(float(np.argmax(ll) == g))
    per_char.append(float(np.argmax(ll / np.maximum(np.asarray(chars, np.float64), 1)) == g))
    per_token.append(float(np.argmax(ll / np.maximum(np.asarray(toks, np.float64), 1)) == g))
    shifted = np.exp(ll - ll.max())
    prob.append(float(shifted[g] / shifted.sum()))
    bpb.append(float(-ll[g] / math.log(2) / max(int(nbytes), 1)))
  return {"acc": float(np.mean(acc)), "acc_per_char": float(np.mean(per_char)),
          "acc_per_token": float(np.mean(per_token)), "prob_correct": float(np.mean(prob)),
          "bpb": float(np.mean(bpb)), "questions": len(gold)}
