"""Log-likelihood scoring of (context, continuation) requests and of whole
documents, and the multiple-choice metrics built on it.

`pack_requests` places every request (its context tokens, then its
continuation tokens) as one segment of a packed row, each in the first row
with room for it; a request longer than a row keeps its continuation and
the end of its context, as lm-evaluation-harness truncates from the left.
The model never attends across segments (`loss.model_inputs`), so a
request's score is what it scores alone.

`loglikelihoods` sorts the requests longest first (lm-eval sorts by length
too; here it makes the first-fit packing tight), runs one jitted forward
per batch of rows and sums the continuation tokens' log-probabilities per
request; with `greedy=True` also whether every continuation token is the
model's argmax, decided on device (only [rows, length] log-probabilities
and flags come back, never logits). `rolling_loglikelihoods` scores every
token of whole documents: a document longer than a row is cut into
windows (see `rolling_windows`).

Several processes (`setup`): every process must pass the same requests;
each packs them identically, feeds its own slice of every batch's rows
(the rows the data-parallel axes give it, as `evaluate.py` does) and gets
every request's score back, the same on every process. Without `setup`
every process scores everything on its first local device.

`choice_metrics` turns the log-likelihoods of each question's choices into
accuracy, length-normalised accuracy (per character and per token), the
probability of the correct choice normalised over the choices, and the
gold continuation's bits per byte: the metrics of OLMo's and Marin's
small-scale evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from doremi_jax.config import ConfigError
from doremi_jax.loss import model_inputs


@dataclasses.dataclass(frozen=True)
class Packed:
  """Rows of requests: `targets`, `segment_ids` and `scored` (1.0 on the
  continuation tokens) [R, L]; `request` [R, L], the request each token
  belongs to (-1: padding)."""
  targets: np.ndarray
  segment_ids: np.ndarray
  scored: np.ndarray
  request: np.ndarray


class FirstFit:
  """First-fit bin packing in O(log n) a placement: a max-tree over the
  room left in `n` rows of `capacity` tokens; `place(k)` takes k tokens
  from the first row with room for them and returns that row. Rows not yet
  used have full room, so rows are opened in order."""

  def __init__(self, n: int, capacity: int):
    self.leaves = 1 << max(int(n) - 1, 1).bit_length()
    self.room = [capacity] * (2 * self.leaves)

  def place(self, k: int) -> int:
    node = 1
    while node < self.leaves:
      node = 2 * node if self.room[2 * node] >= k else 2 * node + 1
    self.room[node] -= k
    row, node = node - self.leaves, node // 2
    while node:
      self.room[node] = max(self.room[2 * node], self.room[2 * node + 1])
      node //= 2
    return row


def pack_requests(requests: Sequence[tuple], seq_len: int) -> Packed:
  """Packs (context ids, continuation ids) requests into rows of `seq_len`
  (see the module docstring), in the order given. A continuation must be
  non-empty and no longer than a row."""
  placed, rows = [], FirstFit(len(requests), seq_len)
  for i, (context, continuation) in enumerate(requests):
    context, continuation = list(context), list(continuation)
    if not continuation:
      raise ConfigError(f"request {i} has an empty continuation; every request scores at least "
                        "one token.")
    if len(continuation) > seq_len:
      raise ConfigError(f"request {i}'s continuation has {len(continuation)} tokens, more than a "
                        f"row of {seq_len}; raise the sequence length or shorten it.")
    tokens = (context + continuation)[-seq_len:]
    placed.append((rows.place(len(tokens)), tokens, len(continuation)))
  shape = (1 + max((r for r, _, _ in placed), default=-1), seq_len)
  out = Packed(np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.float32),
               np.full(shape, -1, np.int64))
  pos, seg = np.zeros(shape[0], np.int64), np.zeros(shape[0], np.int32)
  for i, (r, tokens, n_cont) in enumerate(placed):
    lo, hi = pos[r], pos[r] + len(tokens)
    seg[r] += 1
    out.targets[r, lo:hi], out.segment_ids[r, lo:hi], out.request[r, lo:hi] = tokens, seg[r], i
    out.scored[r, hi - n_cont:hi] = 1.0
    pos[r] = hi
  return out


def _scores(logits_BxLxV, targets_BxL):
  """log p(target) and whether the target is the argmax, per position."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  target_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return (target_BxL - jax.nn.logsumexp(logits_BxLxV, axis=-1),
          jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL)


def _token_scores(model, params, targets_BxL, segment_ids_BxL):
  """(log p(target) [B, L] fp32, target is the argmax [B, L] bool) of
  packed rows. With `ModelConfig.loss_chunk` the output layer runs chunk by
  chunk (the rows padded to a multiple of it), so no [B, L, V] logits live."""
  length, chunk = targets_BxL.shape[1], model.cfg.loss_chunk
  if chunk and chunk < length:
    pad = -length % chunk
    targets_BxL = jnp.pad(targets_BxL, ((0, 0), (0, pad)))
    segment_ids_BxL = jnp.pad(segment_ids_BxL, ((0, 0), (0, pad)))
  inputs_BxL, positions_BxL, _ = model_inputs({"targets": targets_BxL,
                                               "segment_ids": segment_ids_BxL})
  if not (chunk and chunk < length):
    return _scores(model.apply({"params": params}, inputs_BxL, positions_BxL, segment_ids_BxL),
                   targets_BxL)
  x_BxLxD = model.apply({"params": params}, inputs_BxL, positions_BxL, segment_ids_BxL,
                        features=True)
  b, padded, d = x_BxLxD.shape
  x_NxBxCxD = jnp.swapaxes(x_BxLxD.reshape(b, padded // chunk, chunk, d), 0, 1)
  t_NxBxC = jnp.swapaxes(targets_BxL.reshape(b, padded // chunk, chunk), 0, 1)
  logp_NxBxC, greedy_NxBxC = jax.lax.map(
      lambda a: _scores(model.apply({"params": params}, head=a[0]), a[1]), (x_NxBxCxD, t_NxBxC))
  unchunk = lambda a: jnp.swapaxes(a, 0, 1).reshape(b, padded)[:, :length]
  return unchunk(logp_NxBxC), unchunk(greedy_NxBxC)


_STEP = jax.jit(_token_scores, static_argnums=0)


def host_array(a) -> np.ndarray:
  """A step output on this host, whole (gathered from every process when
  its rows are spread over them)."""
  if not a.is_fully_addressable:
    a = multihost_utils.process_allgather(a, tiled=True)
  return np.asarray(a)


def _device_rows(rows: np.ndarray, setup):
  """A batch's global rows as a device array: on the default device, or
  (with `setup`) this process's slice placed by the batch sharding."""
  if setup is None:
    return jnp.asarray(rows)
  local = len(rows) // jax.process_count()
  mine = rows[jax.process_index() * local:(jax.process_index() + 1) * local]
  return jax.make_array_from_process_local_data(setup.batch_shardings["targets"], mine,
                                                rows.shape)


def _check_batch_rows(batch_rows: int, setup):
  if not isinstance(batch_rows, int) or batch_rows < 1:
    raise ConfigError(f"batch_rows must be a positive integer, got {batch_rows!r}.")
  if setup is not None:
    from doremi_jax import sharding as sharding_lib
    ways = int(np.lcm(sharding_lib.data_parallel_size(setup.mesh, setup.rules),
                      jax.process_count()))
    if batch_rows % ways:
      raise ConfigError(f"batch_rows={batch_rows} must be a multiple of {ways} (the "
                        "data-parallel size and the process count); choose one that is.")


def _score(model, params, requests: Sequence[tuple], seq_len: int, batch_rows: int,
           setup) -> tuple:
  """(log-likelihood float64 [N], is_greedy bool [N]) of the requests, packed
  longest first (see the module docstring)."""
  _check_batch_rows(batch_rows, setup)
  order = sorted(range(len(requests)), key=lambda i: -min(
      len(requests[i][0]) + len(requests[i][1]), seq_len))
  packed = pack_requests([requests[i] for i in order], seq_len)
  owner = np.asarray(order + [-1])[packed.request]   # -1 (padding) picks the -1
  loglik, misses = np.zeros(len(requests), np.float64), np.zeros(len(requests), np.int64)
  for lo in range(0, len(packed.targets), batch_rows):
    sl = slice(lo, lo + batch_rows)
    t, s = packed.targets[sl], packed.segment_ids[sl]
    pad = batch_rows - len(t)   # one compiled shape for every batch
    t, s = (np.pad(a, ((0, pad), (0, 0))) for a in (t, s))
    if setup is None:
      logp, greedy = _STEP(model, params, _device_rows(t, None), _device_rows(s, None))
    else:
      with setup.scope():
        logp, greedy = _STEP(model, params, _device_rows(t, setup), _device_rows(s, setup))
    logp, greedy = host_array(logp)[:len(t) - pad], host_array(greedy)[:len(t) - pad]
    scored, req = packed.scored[sl] > 0, owner[sl]
    np.add.at(loglik, req[scored], logp[scored].astype(np.float64))
    np.add.at(misses, req[scored], ~greedy[scored])
  return loglik, misses == 0


def loglikelihoods(model, params, requests: Sequence[tuple], seq_len: int,
                   batch_rows: int = 8, greedy: bool = False, setup=None):
  """Each request's continuation log-likelihood (nats, float64 [N]) under
  `model` with `params`: the sum of its continuation tokens'
  log-probabilities given everything before them in the request. With
  `greedy=True`, (log-likelihoods, is_greedy bool [N]): whether every
  continuation token is the argmax of the model's distribution at its
  position (lm-eval's `loglikelihood`). `batch_rows` rows of `seq_len` run
  per forward. `setup` (a `state.ModelSetup`, or anything with its `mesh`,
  `rules`, `batch_shardings` and `scope()`) spreads every batch's rows over
  its mesh; `params` must then already be placed as its parameters are."""
  loglik, is_greedy = _score(model, params, requests, seq_len, batch_rows, setup)
  return (loglik, is_greedy) if greedy else loglik


def rolling_windows(tokens: Sequence[int], seq_len: int, stride: Optional[int] = None) -> list:
  """The (context, continuation) requests that score every token of one
  document exactly once: the first `seq_len` tokens with no context (the
  first predicted from the document start alone), then chunks of `stride`
  tokens (default half a row), each with as many of the tokens before it as
  fit in the row beside it. lm-eval's minimal rolling windows give a chunk
  after the first only the one token before it; here every token past the
  first row sees at least `seq_len - stride` tokens before it, at about
  `seq_len / stride` times the forward passes. An empty document has no
  windows."""
  tokens = list(tokens)
  stride = max(seq_len // 2, 1) if stride is None else stride
  if not isinstance(stride, int) or not 1 <= stride <= seq_len:
    raise ConfigError(f"stride must be an integer from 1 to the row length {seq_len}, got "
                      f"{stride!r}.")
  windows = [([], tokens[:seq_len])] if tokens else []
  for start in range(seq_len, len(tokens), stride):
    chunk = tokens[start:start + stride]
    windows.append((tokens[max(0, start + len(chunk) - seq_len):start], chunk))
  return windows


def rolling_loglikelihoods(model, params, token_lists: Sequence[Sequence[int]], seq_len: int,
                           batch_rows: int = 8, stride: Optional[int] = None,
                           setup=None) -> np.ndarray:
  """The log-likelihood (nats, float64 [N]) of every token of each whole
  document, the first predicted from the document start alone; a document
  longer than a row is scored in windows (`rolling_windows`), all of every
  document's windows packed together (`loglikelihoods`, with its
  `batch_rows` and `setup`)."""
  requests, owner = [], []
  for d, tokens in enumerate(token_lists):
    windows = rolling_windows(tokens, seq_len, stride)
    requests += windows
    owner += [d] * len(windows)
  out = np.zeros(len(token_lists), np.float64)
  if requests:
    np.add.at(out, np.asarray(owner), _score(model, params, requests, seq_len, batch_rows,
                                             setup)[0])
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
