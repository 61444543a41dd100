"""Stage `proxy` (DoReMi Step 2): the proxy trained with Group DRO against a
finished reference run.

mode 'reweight' (the paper's Algorithm 1): batches are stratified (every
global batch holds batch // k sequences of every domain, the remainder
rotating over steps: `loader.StratifiedAssignment`) and the
step is `steps.dro_program`. mode 'resample' (the variant the paper
proposes for larger proxies): batches are drawn from the current weights
and the step is `steps.resample_program`, which is online DoReMi's
(`mixers.doremi_online`) with `train_proxy`'s settings. The math is in
`doremi_jax.doremi`. Writes doremi_weights.jsonl (the current weights, the
per-domain excess and the running average, after every step),
average_domain_weights.json ({domain: weight}, read by Step 3),
reference_eval.json, and eval.json with each domain's excess over the
reference; with 'resample' also mixture_weights.jsonl (the rates of every
step).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import gin
import jax
import numpy as np

from doremi_jax import doremi
from doremi_jax import files
from doremi_jax import reference as reference_lib
from doremi_jax import rundir
from doremi_jax import runner
from doremi_jax import steps
from doremi_jax.config import ConfigError
from doremi_jax.data import loader as loader_lib
from doremi_jax.data.registry import get_corpus
from doremi_jax.data import weights as weights_lib
from doremi_jax.stages import lm
from doremi_jax.stages import registry
from doremi_jax.state import build_setup, train_config


@dataclasses.dataclass(frozen=True)
class _Mode:
  """Where a mode's program keeps the DRO weights: the metrics' keys of the
  current weights, the excess and their running average, and the state's
  DROState."""
  weights: str
  excess: str
  average: str
  dro_state: Any   # state -> doremi.DROState


MODES = {
    "reweight": _Mode("domain_weights", "excess", "average_weights", lambda s: s["dro"]),
    "resample": _Mode("mixer_rates", "mixer/excess", "mixer/average_weights",
                      lambda s: s["mixer"]["dro"]),
}


def check_same_on_all_processes(step: int, weights) -> None:
  """The DRO weights are replicated: every process must hold the same
  values. Checked at every logged step (a k-vector all-gather)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  every = np.asarray(multihost_utils.process_allgather(np.asarray(weights, np.float32)))
  if not np.all(every == every[0]):
    raise RuntimeError(f"step {step}: the domain weights differ between processes: "
                       f"{every.tolist()}")


class DROHook(runner.Hook):
  """Step 2's own files: the weights log, the averaged weights and the
  reference's evaluation (every evaluation reports the excess over it).

  The weights log has a row for every step: `on_step` receives each step's
  metrics (the runner fetches them one step late anyway, so logging every
  step adds no device sync), the rows are written in one append at every
  logged step and before every checkpoint, and a resumed run first cuts
  the log back to the steps its checkpoint holds (`files.keep_jsonl_through`),
  so a killed and resumed run's log equals an uninterrupted run's."""

  def __init__(self, workdir, domains, mode: _Mode, reference, num_steps: int):
    self.workdir, self.domains, self.mode = workdir, list(domains), mode
    self.reference, self.num_steps, self.result = reference, num_steps, {}
    self.log_path = files.path(workdir) / rundir.DOREMI_WEIGHTS_LOG
    self.pending = []   # rows of steps not yet written

  def start(self, workdir, start_step, data_state):
    if rundir.is_writer():
      files.keep_jsonl_through(self.log_path, start_step)

  def reference_eval(self, evaluator):
    return evaluator(self.reference.params, self.reference.steps_trained)

  def on_step(self, step, m):
    if rundir.is_writer():
      self.pending.append({
          "step": int(step), "timestamp": time.time(), "domain_names": self.domains,
          "domain_weights": np.asarray(m[self.mode.weights]).tolist(),
          "perdomain_scores": np.asarray(m[self.mode.excess]).tolist(),
          "average_weights": np.asarray(m[self.mode.average]).tolist()})

  def on_log(self, step, m):
    check_same_on_all_processes(step, m[self.mode.weights])
    self.flush()

  def data_state(self, done, data_state):
    self.flush()   # the checkpoint after `done` steps: the log holds them all
    return data_state

  def flush(self):
    if self.pending:
      files.append_jsonl_rows(self.log_path, self.pending)
      self.pending = []

  def close(self):
    self.flush()   # a stage that failed: the rows of its checked steps

  def on_finish(self, state, final, reference_eval):
    self.flush()
    average = self.mode.dro_state(state).average_weights
    check_same_on_all_processes(self.num_steps, average)
    if jax.process_count() > 1:
      rundir.announce("proxy", f"domain weights identical on all {jax.process_count()} "
                               "processes at every logged step")
    avg = np.asarray(jax.device_get(average), np.float64)
    self.result.update(weights_lib.as_dict(self.domains, avg))
    if rundir.is_writer():
      files.write_json(files.path(self.workdir) / rundir.AVERAGE_WEIGHTS, self.result)
      files.write_json(files.path(self.workdir) / rundir.REFERENCE_EVAL, reference_eval)
      print("[proxy] averaged DoReMi domain weights:\n" + "\n".join(
          f"  {d:<14}{w:.4f}" for d, w in self.result.items()), flush=True)
    top = sorted(self.result.items(), key=lambda kv: -kv[1])
    return "averaged weights " + ", ".join(f"{d} {w:.3f}" for d, w in top)


@gin.configurable
def train_proxy(workdir: str, reference_dir: str = gin.REQUIRED, step_size: float = 1.0,
                smoothing: float = 1e-3, initial_weights: Any = "uniform",
                weights_warmup_steps: int = 0, update_every: int = 1,
                mode: str = "reweight", seed: Optional[int] = None) -> dict:
  """Trains the proxy with Group DRO against the reference in `reference_dir`
  (eta `step_size`, c `smoothing`; see `doremi.DROConfig`). Returns the
  averaged weights as {domain: weight}. `mode` 'reweight' (the paper's
  Algorithm 1: stratified batches, loss reweighted by the weights) or
  'resample' (batches sampled from the current weights, plain loss; see
  `steps.resample_program`). `seed` overrides TrainConfig.seed (a study's
  per-seed method runs)."""
  if mode not in MODES:
    raise ConfigError(f"train_proxy.mode = {mode!r}; choose 'reweight' (the paper's Step 2) "
                      "or 'resample' (batches sampled from the weights).")
  dro_cfg = doremi.DROConfig(step_size, smoothing, weights_warmup_steps, update_every)
  cfg, corpus = train_config(seed), get_corpus()
  k = corpus.num_domains
  w0 = weights_lib.resolve_weights(initial_weights, corpus, "train_proxy.initial_weights")
  setup = build_setup(corpus.vocab_size, cfg)
  reference = reference_lib.load(reference_dir, corpus, setup, cfg.seq_len)
  build = steps.resample_program if mode == "resample" else steps.dro_program
  program = build(setup, reference, k, cfg.grad_accum_steps, dro_cfg, w0, cfg.seq_len)
  hook = DROHook(workdir, corpus.domains, MODES[mode], reference, cfg.num_steps)
  info = {"reference_dir": str(reference_dir), "dro": dataclasses.asdict(dro_cfg),
          "initial_weights": weights_lib.as_dict(corpus.domains, w0), "mode": mode,
          "sampling": "stratified" if mode == "reweight" else "dro_weights"}
  hooks = [runner.Record(info), hook]
  if mode == "resample":
    publisher = lm.mixer_publisher(workdir, corpus, cfg, program.mixer, w0, "doremi_resample",
                                   score_key="mixer/excess")
    assignment = publisher.assignment
    hooks.append(runner.Publisher(publisher, corpus))
  else:
    assignment = loader_lib.StratifiedAssignment(k, cfg.seed)
    assignment.counts(0, cfg.global_batch_size)  # batch >= k, else a clear error
  runner.run_stage(workdir=workdir, stage="proxy", corpus=corpus, cfg=cfg, program=program,
                   loader=runner.batch_loader(corpus, assignment, cfg), hooks=hooks)
  return hook.result


registry.register(registry.Stage("proxy", train_proxy))
