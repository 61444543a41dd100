"""Greedy generation with a key/value cache, for generative tasks.

Design. Every row of a batch is one prompt laid out from slot 0 of a
[batch, max_len] window: the document-start input 0 (as in training and
scoring, `loss.model_inputs`), then the prompt's tokens, then padding. The
cache (`attention.KVCache`, per layer [batch, max_len, heads, head_dim])
is indexed by position, slot i holding position i of its own row, and a
query at position p attends to slots 0..p only. So prompts of different
lengths need no left padding and no position offsets: each row simply has
its own next position, the padding after a prompt is never seen (it lies
past every query until a generated token overwrites its slot), and rows
never meet (attention is per row).

Two jitted programs per model serve every batch (`programs`): the prefill,
one plain forward pass over the whole window that also keeps every layer's
keys and values (`Transformer(fill_cache=True)`, the model's own attention
kernel) and picks each row's first new token at the end of its prompt; and
the step, which feeds one token per row at that row's next position,
writes its key and value into the cache (donated, updated in place) and
picks the next token. Their shapes depend only on (batch_size, max_len),
so they compile once; the last batch is padded with empty rows that
generate nothing. The greedy choice is the argmax of the fp32 logits,
ties to the lowest id.

The host loop reads each step's tokens to apply the stopping rules: a row
ends at its token limit, at a token in `stop_ids` (not kept), or when
`stop_fn` says so (`generate_until` checks its stop strings that way). The
batch ends when all its rows have. A row's prompt and generation together
never pass `max_len` positions: a prompt longer than max_len -
max_new_tokens keeps its end (left truncation, as lm-evaluation-harness
does).
"""

from __future__ import annotations

import collections
import functools
import numbers
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax.config import check, check_number
from doremi_jax.tasks import scoring


def greedy_ids(logits_BxV):
  """The greedy choice per row: argmax of the fp32 logits, ties to the
  lowest id."""
  return jnp.argmax(logits_BxV.astype(jnp.float32), axis=-1).astype(jnp.int32)


class Programs:
  """A model's jitted prefill and step (see the module docstring), and how
  many times each was traced (`traces`: one per (batch_size, max_len))."""

  def __init__(self, model):
    self.model = model
    self.traces = collections.Counter()
    self.prefill = jax.jit(self._prefill)
    self.step = jax.jit(self._step, donate_argnums=(1,))

  def _prefill(self, params, tokens_BxM, last_B):
    """(first new token per row, cache) of prompts laid out in `tokens_BxM`,
    row b's last prompt input at slot `last_B[b]`."""
    self.traces["prefill"] += 1
    apply = functools.partial(self.model.apply, {"params": params})
    x_BxMxD, cache = apply(tokens_BxM, features=True, fill_cache=True)
    x_Bx1xD = jnp.take_along_axis(x_BxMxD, last_B[:, None, None], axis=1)
    return greedy_ids(apply(head=x_Bx1xD)[:, 0]), cache

  def _step(self, params, cache, tokens_B, slots_B):
    """(next token per row, updated cache) after feeding `tokens_B` at the
    slots (positions) `slots_B`."""
    self.traces["step"] += 1
    logits_Bx1xV, cache = self.model.apply({"params": params}, tokens_B[:, None],
                                           slots_B[:, None], cache=cache)
    return greedy_ids(logits_Bx1xV[:, 0]), cache


@functools.lru_cache(maxsize=16)
def programs(model) -> Programs:
  """The Programs of `model` (one set per model, kept for later calls)."""
  return Programs(model)


def _per_prompt(value, n: int, what: str, max_len: int) -> list:
  """`value` (an int, or one per prompt) as a list of n ints in [0, max_len]."""
  values = [value] * n if isinstance(value, numbers.Integral) else list(value)
  check(len(values) == n, f"{what} must be an int or one per prompt; got {len(values)} "
                          f"values for {n} prompts.")
  for v in values:
    check_number(what, v, integer=True, low=0)
    check(v <= max_len, f"{what}={v} does not fit max_len={max_len} positions; raise "
                        f"max_len or lower {what}.")
  return [int(v) for v in values]


def _stop_fns(stop_fn, n: int) -> list:
  """`stop_fn` (None, one callable, or one per prompt) as n callables or Nones."""
  if stop_fn is None or callable(stop_fn):
    return [stop_fn] * n
  fns = list(stop_fn)
  check(len(fns) == n and all(f is None or callable(f) for f in fns),
        f"stop_fn must be a callable, None, or one per prompt; got {len(fns)} for {n} prompts.")
  return fns


def _layout(prompts, limits, batch_size: int, max_len: int):
  """(tokens [batch_size, max_len], last prompt slot per row): input 0 at
  slot 0, then each prompt, its start cut so that its generation fits."""
  tokens_BxM = np.zeros((batch_size, max_len), np.int32)
  last_B = np.zeros(batch_size, np.int32)
  for b, (prompt, limit) in enumerate(zip(prompts, limits)):
    keep = prompt[max(0, len(prompt) - (max_len - limit)):]
    tokens_BxM[b, 1:1 + len(keep)] = keep
    last_B[b] = len(keep)
  return tokens_BxM, last_B


def _generate_batch(progs, params, prompts, limits, stop_fns, stop_ids, batch_size: int,
                    max_len: int) -> list:
  """The generations of up to `batch_size` prompts (the batch is padded
  with rows that generate nothing)."""
  new = [[] for _ in prompts]
  done = np.ones(batch_size, bool)
  done[:len(prompts)] = np.asarray(limits) == 0
  if done.all():
    return new
  tokens_BxM, last_B = _layout(prompts, limits, batch_size, max_len)
  next_B, cache = progs.prefill(params, tokens_BxM, last_B)
  slots_B = last_B + 1
  while True:
    # with parameters spread over several processes every process takes
    # the whole batch's tokens (each decodes the same prompts)
    ids_B = scoring.host_array(next_B)
    for b in np.flatnonzero(~done):
      token = int(ids_B[b])
      if token in stop_ids:
        done[b] = True
        continue
      new[b].append(token)
      done[b] = len(new[b]) >= limits[b] or bool(stop_fns[b] and stop_fns[b](list(new[b])))
    if done.all():
      return new
    # Rows that are done keep stepping (one shape); their slots stay in the cache.
    next_B, cache = progs.step(params, cache, ids_B, np.minimum(slots_B, max_len - 1))
    slots_B = slots_B + 1


def greedy_generate(model, params, prompts: Sequence[Sequence[int]],
                    max_new_tokens: Union[int, Sequence[int]], *, max_len: int,
                    batch_size: int = 8, stop_ids: Sequence[int] = (),
                    stop_fn: Optional[Union[Callable, Sequence[Callable]]] = None) -> list:
  """Greedy continuations of token-id `prompts` (without the leading 0:
  the decoder prepends the document-start input itself) under `model` with
  `params`, `batch_size` prompts at a time. Returns one list of new ids per
  prompt.

  A row ends after `max_new_tokens` (an int, or one per prompt) new
  tokens, at a token in `stop_ids` (not included), or as soon as
  `stop_fn(new_ids_so_far)` returns True (host-side; one callable, or one
  per prompt). Prompt and generation fit in `max_len` positions, a longer
  prompt keeping its end. See the module docstring for the design."""
  check_number("max_len", max_len, integer=True, low=1)
  check_number("batch_size", batch_size, integer=True, low=1)
  prompts = [[int(t) for t in p] for p in prompts]
  vocab = model.cfg.vocab_size
  for i, p in enumerate(prompts):
    check(all(0 <= t < vocab for t in p),
          f"prompt {i} has ids outside the model's vocabulary [0, {vocab}); encode it with the "
          "vocabulary the model was trained with.")
  limits = _per_prompt(max_new_tokens, len(prompts), "max_new_tokens", max_len)
  fns = _stop_fns(stop_fn, len(prompts))
  stop_ids = frozenset(int(t) for t in stop_ids)
  progs = programs(model)
  out = []
  for lo in range(0, len(prompts), batch_size):
    sl = slice(lo, lo + batch_size)
    out += _generate_batch(progs, params, prompts[sl], limits[sl], fns[sl], stop_ids,
                           batch_size, max_len)
  return out


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
  """`text` before the first occurrence of any of `stops`."""
  at = [i for i in (text.find(s) for s in stops) if i >= 0]
  return text[:min(at)] if at else text


def _stop_strings(until, n: int) -> list:
  """`until` as n lists of non-empty stop strings (a bare string is one)."""
  check(not isinstance(until, str) and len(until) == n,
        f"until must hold one list of stop strings per context; got {until!r:.80} for {n} "
        "contexts.")
  out = []
  for u in until:
    stops = [u] if isinstance(u, str) else list(u)
    check(all(isinstance(s, str) and s for s in stops),
          f"stop strings must be non-empty strings; got {u!r}.")
    out.append(stops)
  return out


def generate_until(model, params, vocabulary, contexts: Sequence[str], until,
                   max_gen_toks: Union[int, Sequence[int]], *, max_len: int,
                   batch_size: int = 8) -> list:
  """Greedy generations from text `contexts`, as lm-evaluation-harness's
  generate_until: each context is encoded with `vocabulary.encode`,
  generation stops after `max_gen_toks` (an int, or one per context) new
  tokens, at the vocabulary's EOS, or once the decoded text holds one of
  the context's stop strings (`until`: one list per context); returns the
  decoded generations cut before the first stop string."""
  stops = _stop_strings(until, len(contexts))
  check(all(isinstance(c, str) for c in contexts), "contexts must be strings.")

  def stop_fn(row_stops):
    return lambda ids: any(s in vocabulary.decode(ids) for s in row_stops)

  new = greedy_generate(model, params, [vocabulary.encode(c) for c in contexts], max_gen_toks,
                        max_len=max_len, batch_size=batch_size, stop_ids=(vocabulary.eos_id,),
                        stop_fn=[stop_fn(s) if s else None for s in stops])
  return [cut_at_stops(vocabulary.decode(ids), s) for ids, s in zip(new, stops)]
