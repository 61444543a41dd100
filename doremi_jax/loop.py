"""The training loop of every stage (`runner.run_stage` calls it).

Each step's metrics are fetched after the next step is dispatched (nanodo
style) and checked finite (`Checks`); before a checkpoint is saved every
step up to it is checked. A non-finite value stops the stage with
`TrainingDiverged`; a stop request (`doremi_jax.preemption`: SIGTERM, the
first Ctrl-C) makes the loop finish the step in flight, run what that step
owes (its evaluation when one is due), save a checkpoint of it and raise
`preemption.Stopped`.
"""

from __future__ import annotations

import logging
import math
import time

import jax
import numpy as np

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import metrics as metrics_lib
from doremi_jax import preemption
from doremi_jax import rundir
from doremi_jax.config import ConfigError


class TrainingDiverged(ConfigError):
  """A non-finite loss or gradient: the settings need changing (exit 2)."""


def check_finite(step: int, num_steps: int, host: dict, domain_loss_key: str, domains,
                 checkpointer: ckpt_lib.Checkpointer):
  """Raises TrainingDiverged unless step `step`'s loss, per-domain losses
  and gradient norm are finite."""
  loss, grad_norm = float(host["loss"]), float(host["grad_norm"])
  dom = np.asarray(host[domain_loss_key], np.float64)
  if math.isfinite(loss) and math.isfinite(grad_norm) and np.all(np.isfinite(dom)):
    return
  bad = [d for d, x in zip(domains, dom) if not np.isfinite(x)]
  what = (f"the loss is not finite on domains {bad}" if bad else
          "the loss is not finite" if not math.isfinite(loss) else
          "the gradient is not finite")
  last = checkpointer.latest_step()
  where = (f"the last good checkpoint is step {last} in {checkpointer.directory}"
           if last is not None else "no checkpoint was written yet")
  raise TrainingDiverged(
      f"training diverged at step {step} of {num_steps}: loss {loss}, gradient norm "
      f"{grad_norm}; {what}. Nothing from this step on was saved; {where}. Lower "
      "OptimizerConfig.learning_rate (or keep OptimizerConfig.grad_clip_norm > 0) and run "
      "in a new --workdir: a resume must be the same run, so this directory resumes "
      f"from step {last or 0} only with the settings it was started with.")


class Checks:
  """Step metrics still on the device, fetched one step late: checked
  finite, handed to the hooks, written at log steps."""

  def __init__(self, run, start_step: int):
    self.run, self.unchecked = run, []   # [(step, device metrics)], oldest first
    self.writer = metrics_lib.MetricsWriter(run.workdir, run.corpus.domains, run.stage,
                                            run.cfg.tensorboard)
    self.progress = metrics_lib.Progress(run.stage, start_step, run.cfg.num_steps,
                                         run.tokens_per_step)

  def settle(self, keep: int):
    run, cfg = self.run, self.run.cfg
    while len(self.unchecked) > keep:
      step, m = self.unchecked.pop(0)
      host = jax.device_get(m)
      check_finite(step, cfg.num_steps, host, run.program.domain_loss_key, run.corpus.domains,
                   run.checkpointer)
      for hook in run.hooks:
        hook.on_step(step, host)
      if step % cfg.log_every == 0 or step == cfg.num_steps:
        for hook in run.hooks:
          hook.on_log(step, host)
        self.writer.write(step, host)
        self.progress.update(step, float(host["loss"]))


def train_loop(run, state, batches, start_step: int):
  """Runs steps start_step..num_steps-1 and returns the final state.

  Each step's metrics are fetched after the next step is dispatched (nanodo
  style) and checked (`Checks`). Before a checkpoint is saved every step
  up to it is checked. The run evaluates every `eval_every` steps.
  `run.timing` receives the first step's seconds (compile + run) and the
  seconds of the loop after it."""
  cfg, program, checkpointer = run.cfg, run.program, run.checkpointer
  checks = Checks(run, start_step)
  compile_start = time.perf_counter()
  loop_start = None
  for step in range(start_step, cfg.num_steps):
    local, data_state = batches.next()
    state, metrics = program(state, program.global_batch(local))
    if step == start_step:
      jax.block_until_ready(metrics)
      first = time.perf_counter() - compile_start
      if rundir.is_writer():
        logging.info("%s: first step (compile + run) took %.1fs", run.stage, first)
      run.timing["first_step_seconds"] = round(first, 3)
      loop_start = time.perf_counter()
      checks.progress.start_timing(step + 1)
    done = step + 1
    state = run.after_step(done, state)
    checks.unchecked.append((done, metrics))
    last = done == cfg.num_steps
    stop = not last and preemption.should_stop(done, done % cfg.log_every == 0)
    if last or stop or checkpointer.due(done):
      checks.settle(keep=0)
      for hook in run.hooks:
        data_state = hook.data_state(done, data_state)
      checkpointer.maybe_save(done, state, data_state, force=last or stop)
    else:
      checks.settle(keep=1)
    if cfg.eval_every and done % cfg.eval_every == 0 and not last:
      run.evaluate(state, done)
    if stop:
      checks.writer.flush()
      raise preemption.Stopped(run.stage, done, preemption.requested(),
                               str(checkpointer.directory))
  checks.settle(keep=0)
  checks.writer.flush()
  if loop_start is not None:
    jax.block_until_ready(state)
    run.timing["later_steps"] = cfg.num_steps - start_step - 1
    run.timing["later_steps_seconds"] = round(time.perf_counter() - loop_start, 3)
  return state
