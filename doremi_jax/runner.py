"""The stage runner: the skeleton every training stage shares.

`run_stage` takes a step program (`doremi_jax.steps`), a domain assignment
(which domain each row of each global batch comes from) and a stage's
`Hooks`, and owns everything else: restore-or-init from the newest readable
checkpoint, run_info and config, the exactly resumable loader, metrics and
progress, evaluation (at the start, every `eval_every` steps and at the
end, on the same validation examples for every stage), checkpoints (train
state + data position) and the completion marker written last.

It also guards the run: every step's loss, per-domain losses and gradient
norm are checked (fetched one step late, so the device never waits on the
host), and before any checkpoint is written the steps it covers are
checked. A non-finite value stops the stage with `TrainingDiverged` naming
the step and the domains, and no checkpoint holding it is written: the last
good one stays resumable.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from functools import partial
from typing import Any, Callable, Optional

import jax
import numpy as np

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import evaluate
from doremi_jax import files
from doremi_jax import metrics as metrics_lib
from doremi_jax import rundir
from doremi_jax.config import ConfigError
from doremi_jax.data import loader as loader_lib
from doremi_jax.state import TrainConfig
from doremi_jax.steps import StepProgram


class TrainingDiverged(ConfigError):
  """A non-finite loss or gradient: the settings need changing (exit 2)."""


@dataclasses.dataclass
class Hooks:
  """What a stage adds to the skeleton.

  on_log(step, host_metrics): at every logged step (`log_every` and the last).
  reference_eval(evaluator) -> summary: evaluated once before training; every
    evaluation then reports each domain's excess over it.
  on_finish(state, final_eval, reference_eval) -> str: writes the stage's own
    result files (process 0 only) and returns its one-line summary.
  after_step(done, state, evaluator) -> state: on every process after each
    step is dispatched (and with done 0 before the first step of a fresh
    run), before that step's checkpoint; may change the state (Aioli's
    host-driven rounds).
  """
  on_log: Optional[Callable[[int, dict], None]] = None
  after_step: Optional[Callable[[int, Any, evaluate.Evaluator], Any]] = None
  reference_eval: Optional[Callable[[evaluate.Evaluator], dict]] = None
  on_finish: Optional[Callable[[Any, dict, Optional[dict]], str]] = None


def resume_loader(corpus, assignment, cfg: TrainConfig, start_step: int,
                  data_state: Optional[dict]) -> loader_lib.BatchLoader:
  """This process's batch loader, positioned where the checkpoint left off."""
  positions = None if data_state is None else np.asarray(data_state["positions"])
  return loader_lib.BatchLoader(
      corpus, assignment, cfg.global_batch_size, cfg.seq_len, cfg.seed, start_step, positions,
      jax.process_index(), jax.process_count())


def summary_line(final: dict) -> str:
  return (f"uniform avg {final['uniform_average']:.4f}, worst "
          f"{final['worst_case']['loss']:.4f} ({final['worst_case']['domain']})")


def run_stage(*, workdir: str, stage: str, corpus, cfg: TrainConfig, program: StepProgram,
              assignment, info: Optional[dict] = None, start_files: Optional[dict] = None,
              hooks: Optional[Hooks] = None, publisher=None,
              make_loader: Optional[Callable] = None) -> dict:
  """Trains `program` for `cfg.num_steps` in `workdir` (resuming if it holds
  checkpoints) and returns the final evaluation summary.

  Writes: checkpoints/, config.gin, run_info.json (with `info`), each
  `start_files` entry as JSON, metrics.jsonl, tensorboard/, eval.jsonl,
  eval.json, the hooks' files, and complete.json last.

  With a `publisher` (`scheduled.RatesPublisher`, for an `assignment`
  whose rates change during training) every step's metrics publish the
  rates they are the source of, the checkpoint's data state keeps the
  published blocks a resumed run needs, and at every logged step all
  processes are checked to hold the same published rates.

  `make_loader(start_step, data_state)`, if given, makes the loader instead
  of a `BatchLoader` over `assignment` (the swarm's one loader per member);
  `info` entries override the run_info fields computed here.
  """
  t0 = time.time()
  workdir = str(workdir)
  hooks = hooks or Hooks()
  rundir.check_resumable(workdir, stage, program.setup.model_cfg, corpus.domains)
  for split in ("train", "validation"):   # packed data for this vocabulary and length?
    loader_lib.open_sources(corpus, split, cfg.seq_len)
  checkpointer = ckpt_lib.Checkpointer(files.path(workdir) / "checkpoints", cfg.checkpoint_every,
                                       cfg.keep_checkpoints, cfg.async_checkpointing)
  loader = None
  try:
    restored = checkpointer.restore_latest(program.abstract_state)
    if restored is None:
      start_step, state, data_state = 0, program.init(cfg.seed), None
    else:
      start_step, state, data_state = restored
    if publisher is not None:
      publisher.restore(start_step, data_state)
      publisher.start(start_step)
      if loader_lib.BatchLoader.needs_replay(data_state, corpus):
        publisher.check_replayable(start_step)
    rundir.write_run_info(workdir, stage, start_step, corpus, program.setup, {**dict(
        num_steps=cfg.num_steps, seq_len=cfg.seq_len, seed=cfg.seed,
        tokens_per_step=cfg.tokens_per_step, flops_per_token=program.flops_per_token,
        eval_tokens=cfg.eval_examples_per_domain * corpus.num_domains * cfg.seq_len),
        **(info or {})})
    if rundir.is_writer():
      for name, obj in (start_files or {}).items():
        files.write_json(files.path(workdir) / name, obj)
    loader = (make_loader or partial(resume_loader, corpus, assignment, cfg))(start_step,
                                                                              data_state)
    evaluator = (program.make_evaluator or evaluate.Evaluator.create)(program.setup, corpus, cfg)
    reference = hooks.reference_eval(evaluator) if hooks.reference_eval else None
    eval_log = files.path(workdir) / "eval.jsonl"

    def do_eval(st, step):
      summary = evaluator(program.params_of(st), step, reference)
      if rundir.is_writer():
        files.append_jsonl(eval_log, summary)
      return summary

    if start_step == 0:
      rundir.announce(stage, "initial eval: " + summary_line(do_eval(state, 0)))
    else:
      rundir.announce(stage, f"resuming from step {start_step}")
    writer = metrics_lib.MetricsWriter(workdir, corpus.domains, stage, cfg.tensorboard)
    timing = {}
    after_step = None
    if hooks.after_step is not None:
      after_step = lambda done, st: hooks.after_step(done, st, evaluator)
      if start_step == 0:
        state = after_step(0, state)
    state = train_loop(stage=stage, cfg=cfg, program=program, state=state, loader=loader,
                       checkpointer=checkpointer, writer=writer, start_step=start_step,
                       domains=corpus.domains, evaluate_fn=do_eval, on_log=hooks.on_log,
                       timing=timing, publisher=publisher, after_step=after_step,
                       tokens_per_step=(info or {}).get("tokens_per_step"))
    final = do_eval(state, cfg.num_steps)
    if rundir.is_writer():
      files.write_json(files.path(workdir) / "eval.json", final)
      print(f"[{stage}] final per-domain validation loss:\n" + evaluate.format_table(final),
            flush=True)
    summary = hooks.on_finish(state, final, reference) if hooks.on_finish else \
        summary_line(final)
  finally:
    if loader is not None:
      loader.close()
    if publisher is not None:
      publisher.assignment.close()
    checkpointer.close()
  rundir.mark_complete(workdir, stage, cfg.num_steps, time.time() - t0, summary,
                       dict(timing, tokens_per_step=(info or {}).get("tokens_per_step",
                                                                     cfg.tokens_per_step)))
  return final


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
      "OptimizerConfig.learning_rate (or keep OptimizerConfig.grad_clip_norm > 0), then "
      f"re-run the same command to resume from step {last or 0}.")


def check_same_rates(step: int, publisher) -> None:
  """Every process must have published the same rates (each computes them
  from the same replicated state); checked with one all-gather of a CRC."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  every = np.asarray(multihost_utils.process_allgather(
      np.asarray([publisher.fingerprint()], np.int64)))
  if not np.all(every == every.flat[0]):
    raise RuntimeError(f"step {step}: the mixture's published rates differ between "
                       f"processes (CRCs {every.ravel().tolist()})")


def train_loop(*, stage: str, cfg: TrainConfig, program: StepProgram, state, loader,
               checkpointer: ckpt_lib.Checkpointer, writer: metrics_lib.MetricsWriter,
               start_step: int, domains, evaluate_fn: Optional[Callable] = None,
               on_log: Optional[Callable] = None, timing: Optional[dict] = None,
               publisher=None, after_step: Optional[Callable] = None,
               tokens_per_step: Optional[int] = None):
  """Runs steps start_step..num_steps-1 and returns the final state.

  Each step's metrics are fetched after the next step is dispatched (nanodo
  style), checked (`check_finite`) and, at log steps, written and passed to
  `on_log(step, host_metrics)`. Before a checkpoint is saved every step up to
  it is checked. `evaluate_fn(state, step)` runs every `eval_every` steps.
  `timing`, if given, receives the first step's seconds (compile + run) and
  the seconds of the loop after it. `publisher` (see `run_stage`) gets
  every step's metrics in order; `after_step(done, state) -> state` runs
  after each step, before its checkpoint. `tokens_per_step` (default the
  config's) counts the progress line's tokens (a swarm's, all members')."""
  progress = metrics_lib.Progress(stage, start_step, cfg.num_steps,
                                  tokens_per_step or cfg.tokens_per_step)
  unchecked = []  # [(step, device metrics)], oldest first

  def settle(keep: int):
    while len(unchecked) > keep:
      step, m = unchecked.pop(0)
      host = jax.device_get(m)
      check_finite(step, cfg.num_steps, host, program.domain_loss_key, domains, checkpointer)
      if publisher is not None:
        publisher.on_step(step, host)
      if step % cfg.log_every == 0 or step == cfg.num_steps:
        if publisher is not None:
          check_same_rates(step, publisher)
        writer.write(step, host)
        if on_log is not None:
          on_log(step, host)
        progress.update(step, float(host["loss"]))

  compile_start = time.perf_counter()
  for step in range(start_step, cfg.num_steps):
    local, data_state = loader.next()
    state, metrics = program(state, program.global_batch(local))
    if step == start_step:
      jax.block_until_ready(metrics)
      first = time.perf_counter() - compile_start
      if rundir.is_writer():
        logging.info("%s: first step (compile + run) took %.1fs", stage, first)
      if timing is not None:
        timing.update(first_step_seconds=round(first, 3), loop_start=time.perf_counter())
      progress.start_timing(step + 1)
    done = step + 1
    if after_step is not None:
      state = after_step(done, state)
    unchecked.append((done, metrics))
    last = done == cfg.num_steps
    if last or checkpointer.due(done):
      settle(keep=0)
      if publisher is not None:
        data_state = dict(data_state, mixture=publisher.data_state(done))
      checkpointer.maybe_save(done, state, data_state, force=last)
    else:
      settle(keep=1)
    if evaluate_fn is not None and cfg.eval_every and done % cfg.eval_every == 0 and not last:
      evaluate_fn(state, done)
  settle(keep=0)
  writer.flush()
  if timing is not None and "loop_start" in timing:
    jax.block_until_ready(state)
    timing["later_steps"] = cfg.num_steps - start_step - 1
    timing["later_steps_seconds"] = round(time.perf_counter() - timing.pop("loop_start"), 3)
  return state
