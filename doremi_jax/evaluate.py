"""Per-domain evaluation: mean token loss and perplexity per domain on the
validation split, their uniform average and the worst case. (Comparing two
main models, and the console tables, are `doremi_jax.analysis.compare`.)

`Evaluator` runs one jitted forward over fixed validation batches (the first
`eval_examples_per_domain` sequences of every domain, the same for every
stage and every process count).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from doremi_jax import sharding as sharding_lib
from doremi_jax.data import loader as loader_lib
from doremi_jax.loss import per_domain_sums, per_token_loss, tokens_of
from doremi_jax.state import ModelSetup, TrainConfig, to_global


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

  @classmethod
  def create(cls, setup: ModelSetup, corpus, cfg: TrainConfig) -> "Evaluator":
    batches = loader_lib.eval_batches(
        corpus, cfg.seq_len, cfg.eval_examples_per_domain, cfg.eval_batch_size,
        jax.process_index(), jax.process_count())
    step_fn = make_eval_step(
        setup.model, corpus.num_domains, setup.state_shardings.params,
        setup.batch_shardings, sharding_lib.replicated(setup.mesh))
    return cls(setup, corpus, batches, step_fn)

  def losses(self, params) -> np.ndarray:
    """Each domain's mean validation token loss, [K] float32 (what Aioli's
    LearnParams measures)."""
    with self.setup.scope():
      sums, counts = run_eval(self.step_fn, params, self.batches,
                              lambda b: to_global(b, self.setup.batch_shardings))
    return (np.asarray(sums, np.float32) / np.maximum(np.asarray(counts, np.float32), 1.0))

  def __call__(self, params, step: int, reference: Optional[dict] = None) -> dict:
    with self.setup.scope():
      sums, counts = run_eval(self.step_fn, params, self.batches,
                              lambda b: to_global(b, self.setup.batch_shardings))
    return summarize(self.corpus.domains, sums, counts, step,
                     self.corpus.entropy_floors, reference)


def summarize(domains: Sequence[str], sums, counts, step: int,
              entropy_floors: Optional[Sequence[float]] = None,
              reference: Optional[dict] = None) -> dict:
  """JSON-ready per-domain results. `reference` (a summary of the same form)
  adds each domain's excess over the reference model."""
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
      "per_domain": per,
      "uniform_average": float(np.mean(losses)),
      "worst_case": {"domain": domains[worst], "loss": float(losses[worst])},
  }
