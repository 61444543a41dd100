"""Evaluating a model on a list of tasks: what a stage runs beside its
per-domain losses (`TrainConfig.eval_tasks`), and `evaluate_tasks` after
training.

`TaskSuite.create` loads and tokenises every task once (errors before any
training); calling the suite scores one model's parameters on all of them
and returns `{task: {metric: value, ...}}`:

  choice    acc, acc_per_char, acc_per_token, prob_correct, bpb (of the gold
            choice), `scoring.choice_metrics`
  generate  exact_match (greedy decoding, `decode.generate_until`) and bpb
            of the target
  rolling   bpb of the documents (all their log-likelihood over all their
            UTF-8 bytes)

Every task also reports `kind`, `items` and `primary` (the metric that
stands for it: `requests.PRIMARY_METRIC`; BPB everywhere, since accuracy
sits at chance for small models, docs/downstream.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from doremi_jax.tasks import encode, registry, requests, scoring

LN2 = math.log(2)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """One task with its items tokenised: `pairs` the (context ids,
  continuation ids) to score, `groups` each item's slice of them."""
  task: requests.Task
  pairs: tuple
  groups: tuple


def prepare(task: requests.Task, vocabulary) -> Prepared:
  """Tokenises every request of `task` once."""
  pairs, groups = [], []
  for item in task.items:
    start = len(pairs)
    if task.kind == requests.CHOICE:
      pairs.extend(encode.encode_pair(vocabulary, ctx, c)
                   for ctx, c in zip(requests.choice_contexts(item), item["choices"]))
    elif task.kind == requests.GENERATE:
      pairs.append(encode.encode_pair(vocabulary, item["context"], item["target"]))
    else:
      pairs.append(([], list(vocabulary.encode(item["text"]))))
    groups.append(slice(start, len(pairs)))
  return Prepared(task, tuple(pairs), tuple(groups))


def _choice(p: Prepared, loglik: np.ndarray) -> dict:
  items = p.task.items
  return scoring.choice_metrics(
      [loglik[g] for g in p.groups], [it["gold"] for it in items],
      [[len(c) for c in it["choices"]] for it in items],
      [[len(p.pairs[j][1]) for j in range(g.start, g.stop)] for g in p.groups],
      [len(it["choices"][it["gold"]].encode("utf-8")) for it in items])


def _bpb(loglik: np.ndarray, texts: Sequence[str]) -> float:
  total = sum(len(t.encode("utf-8")) for t in texts)
  return float(-np.sum(loglik) / LN2 / max(total, 1))


def exact_match(generation: str, target: str) -> bool:
  """The generation (already cut at the first stop string) equals the
  target, both stripped of surrounding whitespace."""
  return generation.strip() == target.strip()


def _generate(p: Prepared, model, params, vocabulary, seq_len: int, batch: int,
              loglik: np.ndarray) -> dict:
  from doremi_jax.tasks import decode   # pylint: disable=import-outside-toplevel
  items = p.task.items
  limits = [it.get("max_tokens", len(p.pairs[i][1]) + 8) for i, it in enumerate(items)]
  out = decode.generate_until(model, params, vocabulary, [it["context"] for it in items],
                              [it.get("stop", []) for it in items], limits, max_len=seq_len,
                              batch_size=batch)
  hits = [exact_match(g, it["target"]) for g, it in zip(out, items)]
  return {"exact_match": float(np.mean(hits)),
          "bpb": float(np.mean([-ll / LN2 / max(len(it["target"].encode("utf-8")), 1)
                                for ll, it in zip(loglik, items)])),
          "questions": len(items)}


@dataclasses.dataclass
class TaskSuite:
  """Tokenised tasks of one split, scored in rows of `seq_len` tokens,
  `batch_rows` rows (and `batch_rows` generations) at a time."""
  prepared: tuple
  vocabulary: object
  seq_len: int
  batch_rows: int
  split: str

  @classmethod
  def create(cls, entries: Sequence[str], corpus, split: str, seq_len: int,
             batch_rows: int = 16, limit: Optional[int] = None,
             vocabulary=None) -> Optional["TaskSuite"]:
    """The suite of `entries` (None when there are none), tokenised with
    `vocabulary` (default the corpus's; `corpus` may then be None when no
    entry is a built-in task)."""
    if not entries:
      return None
    vocabulary = vocabulary or corpus.vocabulary
    tasks = registry.load_all(entries, corpus, split, limit)
    return cls(tuple(prepare(t, vocabulary) for t in tasks), vocabulary, seq_len, batch_rows,
               split)

  @property
  def names(self) -> list:
    return [p.task.name for p in self.prepared]

  def __call__(self, model, params, setup=None) -> dict:
    """`{task: metrics}` of `params` under `model`; with `setup` (the
    stage's `state.ModelSetup`) the scored rows are spread over its mesh
    and every process gets every score (`scoring`)."""
    out = {}
    for p in self.prepared:
      kind = p.task.kind
      if kind == requests.ROLLING:
        loglik = scoring.rolling_loglikelihoods(model, params, [c for _, c in p.pairs],
                                                self.seq_len, self.batch_rows, setup=setup)
        metrics = {"bpb": _bpb(loglik, [it["text"] for it in p.task.items]),
                   "documents": len(p.task.items)}
      else:
        loglik = scoring.loglikelihoods(model, params, p.pairs, self.seq_len, self.batch_rows,
                                        setup=setup)
        metrics = (_choice(p, loglik) if kind == requests.CHOICE else
                   _generate(p, model, params, self.vocabulary, self.seq_len, self.batch_rows,
                             loglik))
      out[p.task.name] = {"kind": kind, "primary": requests.PRIMARY_METRIC[kind], **metrics}
    return out
