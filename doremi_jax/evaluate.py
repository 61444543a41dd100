"""Per-domain evaluation: mean token loss and perplexity per domain on one
held-out split, their uniform average and the worst case. (Comparing two
main models, and the console tables, are `doremi_jax.analysis.compare`.)

`Evaluator` runs one jitted forward over fixed batches of one split (the
first `eval_examples_per_domain` rows of every domain, the same for every
stage and every process count). Every reported number (eval.jsonl,
eval.json and everything built on them) is on `test`; what a method adapts
to (Aioli's held-out losses, a swarm's law fits) is on `tune`
(`packing.eval_split`); every summary names its split.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from doremi_jax import sharding as sharding_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import packing
from doremi_jax.loss import per_domain_sums, per_token_loss, tokens_of
from doremi_jax.state import ModelSetup, TrainConfig, to_global
from doremi_jax.tasks.suite import TaskSuite


def make_eval_step(model, num_domains: int, param_shardings, batch_shardings, out_sharding):
  def eval_step(params, batch):
    loss_BxL, mask_BxL = per_token_loss(model, params, tokens_of(batch))
    return per_domain_sums(loss_BxL, mask_BxL, batch["domain_ids"], num_domains)
  return jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings),
                 out_shardings=(out_sharding, out_sharding))


def run_eval(eval_step, params, batches, to_global) -> tuple[np.ndarray, np.ndarray]:
  sums, counts = None, None
  for b in batches:
    s, c = eval_step(params, to_global(b))
    s, c = np.asarray(jax.device_get(s), np.float64), np.asarray(jax.device_get(c), np.float64)
    sums = s if sums is None else sums + s
    counts = c if counts is None else counts + c
  return sums, counts


@dataclasses.dataclass
class Evaluator:
  """`evaluator(params, step, reference=None) -> summary` (see `summarize`)."""
  setup: ModelSetup
  corpus: Any
  batches: list
  step_fn: Callable
  split: str = packing.TEST
  cfg: Optional[TrainConfig] = None
  tasks: Optional[TaskSuite] = None      # TrainConfig.eval_tasks, on the same split

  @classmethod
  def create(cls, setup: ModelSetup, corpus, cfg: TrainConfig,
             split: str = packing.TEST) -> "Evaluator":
    step_fn = make_eval_step(
        setup.model, corpus.num_domains, setup.state_shardings.params,
        setup.batch_shardings, sharding_lib.replicated(setup.mesh))
    return cls(setup, corpus, split_batches(corpus, cfg, split), step_fn, split, cfg,
               task_suite(corpus, cfg, split))

  def on_split(self, split: str) -> "Evaluator":
    """The same evaluation (the same compiled step) on another split."""
    if split == self.split:
      return self
    return dataclasses.replace(self, batches=split_batches(self.corpus, self.cfg, split),
                               split=split, tasks=task_suite(self.corpus, self.cfg, split))

  def tasks_due(self, step: int) -> bool:
    """Whether the evaluation at `step` scores the tasks: at step 0, every
    `TrainConfig.eval_tasks_every` steps (0: at every evaluation) and at the end."""
    every = self.cfg.eval_tasks_every if self.cfg is not None else 0
    return self.tasks is not None and (not every or step % every == 0
                                       or step == self.cfg.num_steps)

  def losses(self, params) -> np.ndarray:
    """Each domain's mean token loss on this evaluator's split, [K] float32
    (what Aioli's LearnParams measures, on `tune`)."""
    with self.setup.scope():
      sums, counts = run_eval(self.step_fn, params, self.batches,
                              lambda b: to_global(b, self.setup.batch_shardings))
    return (np.asarray(sums, np.float32) / np.maximum(np.asarray(counts, np.float32), 1.0))

  def __call__(self, params, step: int, reference: Optional[dict] = None) -> dict:
    with self.setup.scope():
      sums, counts = run_eval(self.step_fn, params, self.batches,
                              lambda b: to_global(b, self.setup.batch_shardings))
      tasks = (self.tasks(self.setup.model, params, self.setup) if self.tasks_due(step)
               else None)
    summary = summarize(self.corpus.domains, sums, counts, step,
                        self.corpus.entropy_floors, reference, self.split)
    if tasks is not None:
      summary["tasks"] = tasks
    return summary


def task_suite(corpus, cfg: Optional[TrainConfig], split: str) -> Optional[TaskSuite]:
  """The downstream tasks `cfg.eval_tasks` names, on `split` (None: none)."""
  if cfg is None or not cfg.eval_tasks:
    return None
  return TaskSuite.create(cfg.eval_tasks, corpus, split, cfg.seq_len, cfg.eval_batch_size,
                          cfg.eval_task_examples)


def split_batches(corpus, cfg: TrainConfig, split: str) -> list:
  """This host's evaluation batches of `split`."""
  return loader_lib.eval_batches(corpus, cfg.seq_len, cfg.eval_examples_per_domain,
                                 cfg.eval_batch_size, jax.process_index(),
                                 jax.process_count(), split)


def summarize(domains: Sequence[str], sums, counts, step: int,
              entropy_floors: Optional[Sequence[float]] = None,
              reference: Optional[dict] = None, split: str = packing.TEST) -> dict:
  """JSON-ready per-domain results on `split`. `reference` (a summary of
  the same form, on the same split) adds each domain's excess over the
  reference model."""
  losses = np.asarray(sums) / np.maximum(np.asarray(counts), 1)
  per = {}
  for i, d in enumerate(domains):
    row = {"loss": float(losses[i]), "perplexity": float(math.exp(min(losses[i], 700))),
           "tokens": int(counts[i])}
    if entropy_floors is not None:
      row["entropy_floor"] = float(entropy_floors[i])
    if reference is not None and d in reference.get("per_domain", {}):
      row["excess_over_reference"] = float(losses[i] - reference["per_domain"][d]["loss"])
    per[d] = row
  worst = int(np.argmax(losses))
  return {
      "step": int(step),
      "split": split,
      "per_domain": per,
      "uniform_average": float(np.mean(losses)),
      "worst_case": {"domain": domains[worst], "loss": float(losses[worst])},
  }
