"""Downstream tasks for the built-in synthetic corpus, generated from its
held-out sequences (the `tune` or `test` split: `synthetic_tasks.split_sequences`),
one item per sequence, written in the corpus's text form (whitespace-separated
token names, `SyntheticVocabulary`):

  arithmetic_sum  generative: the context runs up to and including a block's
                  `=`, the target is its sum's four digits (least significant
                  first); stops at `;`; exact match
  sort_symbols    generative: up to a block's `|`, the target is the eight
                  symbols sorted; stops at `;`; exact match
  markov_next     multiple choice: a prefix of a Markov-chain sequence, the
                  choices are the last state's four successors, gold the
                  successor the sequence took (even a perfect model is right
                  only as often as the likeliest successor is taken:
                  `markov_ceiling`)
  repeat_cycle    generative: a prefix of a repeat sequence, the target is
                  its next four tokens (one period); exact match

Which block or prefix an item asks about varies with the item's index, so
the contexts have every length a row allows. The noise domain has no task:
there is nothing in it to be good at. Each task needs its domain in the
corpus.
"""

from __future__ import annotations

import numpy as np

from doremi_jax.config import ConfigError
from doremi_jax.data import synthetic, synthetic_tasks
from doremi_jax.data.vocab import SyntheticVocabulary
from doremi_jax.tasks import requests

ARITHMETIC_BLOCK = 13            # a b c + d e f = s0 s1 s2 s3 ;
SORT_BLOCK = 2 * synthetic.SORT_LEN + 2
# task name -> the synthetic domain its items come from
DOMAIN = {"arithmetic_sum": "arithmetic", "sort_symbols": "sort", "markov_next": "markov",
          "repeat_cycle": "repeat"}
NAMES = tuple(DOMAIN)


def _text(vocab, ids) -> str:
  return vocab.decode_ids([int(i) for i in ids])


def _blocks_item(vocab, seq, i: int, block: int, ask: int, answer: int) -> dict:
  """The item asking for `answer` tokens after the first `ask` tokens of
  block i % (the sequence's whole blocks)."""
  whole = len(seq) // block
  if whole == 0:
    raise ConfigError(f"the synthetic sequences ({len(seq)} tokens) are shorter than one "
                      f"block of {block}; raise SyntheticCorpusConfig.seq_len.")
  start = (i % whole) * block
  return {"context": _text(vocab, seq[:start + ask]),
          "target": " " + _text(vocab, seq[start + ask:start + ask + answer]),
          "stop": [";"], "max_tokens": answer + 1, "id": str(i)}


def _markov_item(vocab, seq, i: int, successors) -> dict:
  t = 1 + i % (len(seq) - 1)                 # predict token t from tokens < t
  last = int(seq[t - 1]) - synthetic.MARKOV_LO
  choices = [int(s) + synthetic.MARKOV_LO for s in successors[last]]
  return {"context": _text(vocab, seq[:t]),
          "choices": [" " + _text(vocab, [c]) for c in choices],
          "gold": choices.index(int(seq[t])), "id": str(i)}


def _repeat_item(vocab, seq, i: int) -> dict:
  period = synthetic.REPEAT_PERIOD
  t = 1 + i % (len(seq) - period)
  return {"context": _text(vocab, seq[:t]), "target": " " + _text(vocab, seq[t:t + period]),
          "max_tokens": period, "id": str(i)}


def items(cfg: synthetic.SyntheticCorpusConfig, name: str, split: str) -> list:
  """The items of built-in task `name` from `split`'s sequences."""
  vocab = SyntheticVocabulary()
  seqs = synthetic_tasks.split_sequences(cfg, DOMAIN[name], split)
  if name == "arithmetic_sum":
    return [_blocks_item(vocab, s, i, ARITHMETIC_BLOCK, 8, 4) for i, s in enumerate(seqs)]
  if name == "sort_symbols":
    n = synthetic.SORT_LEN
    return [_blocks_item(vocab, s, i, SORT_BLOCK, n + 1, n) for i, s in enumerate(seqs)]
  if name == "markov_next":
    successors = synthetic.markov_chain(cfg.seed)[0]
    return [_markov_item(vocab, s, i, successors) for i, s in enumerate(seqs)]
  return [_repeat_item(vocab, s, i) for i, s in enumerate(seqs)]


def load(corpus, name: str, split: str) -> requests.Task:
  """Built-in task `name` of the synthetic `corpus` on `split`."""
  cfg = corpus.source_config
  if not isinstance(cfg, synthetic.SyntheticCorpusConfig):
    raise ConfigError(f"the built-in task {name!r} is made from the built-in synthetic corpus; "
                      f"this run trains on {corpus.name!r}. Name a request file or an OLMo task "
                      "in TrainConfig.eval_tasks instead.")
  if DOMAIN[name] not in corpus.domains:
    raise ConfigError(f"the built-in task {name!r} is made from the {DOMAIN[name]!r} domain, "
                      f"which this corpus leaves out (its domains: {list(corpus.domains)}).")
  return requests.from_items(name, items(cfg, name, split), f"builtin:{name} ({split} split)")


def markov_ceiling(cfg: synthetic.SyntheticCorpusConfig) -> float:
  """The accuracy on `markov_next` of the model that knows the chain: the
  stationary mean of each state's largest transition probability."""
  _, probs, pi = synthetic.markov_chain(cfg.seed)
  return float(np.sum(pi * probs.max(axis=1)))
