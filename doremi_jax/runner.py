"""The stage runner: the skeleton every training stage shares.

`run_stage` takes a step program (`doremi_jax.steps`), a loader factory
(which rows each global batch holds) and the stage's `Hook`s, and owns
everything else: restore-or-init from the newest readable checkpoint,
run_info and config, metrics and progress, evaluation (at the start, every
`eval_every` steps and at the end, on the same `test` rows for every
stage), checkpoints (train state + data position) and the completion
marker written last. In build-only mode (`context.build_only`) it raises
`context.ProgramBuilt` with the program instead, before it reads or writes
anything.

A `Hook` is the one way a stage extends the skeleton: its own run_info
entries and start files, a reference evaluation, per-step and per-log
callbacks, host-side events between steps, extra data state in the
checkpoint, its result files at the end. A mixture whose rates change
during training is a hook too (`Publisher`).

The loop (`doremi_jax.loop`) guards the run: every step's loss,
per-domain losses and gradient norm are checked (fetched one step late, so
the device never waits on the host), and before any checkpoint is written
the steps it covers are checked. A non-finite value stops the stage with
`TrainingDiverged` naming the step and the domains, and no checkpoint
holding it is written: the last good one stays resumable. A stop request
(SIGTERM, Ctrl-C: `doremi_jax.preemption`) ends the stage with a checkpoint
of the step in flight; a run resumed after it ends bitwise where an
uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import context
from doremi_jax import evaluate
from doremi_jax import files
from doremi_jax import preemption
from doremi_jax import rundir
from doremi_jax.analysis import compare
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import packing
from doremi_jax.loop import TrainingDiverged, train_loop  # noqa: F401  (TrainingDiverged: public)
from doremi_jax.state import TrainConfig
from doremi_jax.steps import StepProgram


class Hook:
  """What a stage adds to the skeleton; override only what it needs. Every
  method runs on every process unless its docstring says otherwise."""

  def run_info(self) -> dict:
    """Entries for run_info.json (they override the runner's own)."""
    return {}

  def identity(self) -> dict:
    """What of the stage's own settings decides its result (a mixture, a
    method's settings), for identity.json: a resume must match it."""
    return {}

  def start(self, workdir: str, start_step: int, data_state: Optional[dict]) -> None:
    """After the checkpoint is restored, before the loader is made."""

  def reference_eval(self, evaluator) -> Optional[dict]:
    """An evaluation summary to report every evaluation's excess over."""
    return None

  def on_step(self, step: int, host: dict) -> None:
    """Every step's host metrics, in order, once checked finite."""

  def on_log(self, step: int, host: dict) -> None:
    """At every logged step (`log_every` and the last)."""

  def after_step(self, done: int, state, evaluator):
    """After each step is dispatched (and with done 0 before the first step
    of a fresh run), before its checkpoint; returns the state (Aioli's
    host-driven rounds change it)."""
    return state

  def data_state(self, done: int, data_state: dict) -> dict:
    """The data state saved with the checkpoint after `done` steps."""
    return data_state

  def on_finish(self, state, final: dict, reference: Optional[dict]) -> Optional[str]:
    """At the end: write the stage's result files; returns its one-line
    summary (the last hook's that returns one is kept)."""
    return None

  def close(self) -> None:
    """Always, when the stage ends or fails."""


class Record(Hook):
  """What a stage records before it trains: `info` entries in run_info.json
  and `start_files`, {name: JSON object} written (process 0) when it starts
  (e.g. the rates a static mixture trains with)."""

  def __init__(self, info: Optional[dict] = None, start_files: Optional[dict] = None):
    self.info, self.start_files = dict(info or {}), dict(start_files or {})

  def run_info(self):
    return self.info

  def identity(self):
    """The stage's recorded settings and start files; another run it reads
    (`*reference_dir`) by that run's identity, not by its path."""
    info = {k: (rundir.identity_digest(v) if k.endswith("reference_dir") else v)
            for k, v in self.info.items()}
    return {"info": info, "start_files": self.start_files}

  def start(self, workdir, start_step, data_state):
    if rundir.is_writer():
      for name, obj in self.start_files.items():
        files.write_json(files.path(workdir) / name, obj)


class OnFinish(Hook):
  """`fn(state, final, reference) -> summary` at the end, as a hook."""

  def __init__(self, fn: Callable):
    self.fn = fn

  def on_finish(self, state, final, reference):
    return self.fn(state, final, reference)


class Publisher(Hook):
  """A mixture whose rates change during training
  (`scheduled.RatesPublisher`): every step's metrics publish the rates they
  are the source of, the checkpoint's data state keeps the published
  blocks a resumed run needs, and at every logged step all processes are
  checked to hold the same published rates."""

  def __init__(self, publisher, corpus):
    self.publisher, self.corpus = publisher, corpus

  def start(self, workdir, start_step, data_state):
    self.publisher.restore(start_step, data_state)
    self.publisher.start(start_step)
    if loader_lib.BatchLoader.needs_replay(data_state, self.corpus):
      self.publisher.check_replayable(start_step)

  def on_step(self, step, host):
    self.publisher.on_step(step, host)

  def on_log(self, step, host):
    check_same_rates(step, self.publisher)

  def data_state(self, done, data_state):
    return dict(data_state, mixture=self.publisher.data_state(done))

  def close(self):
    self.publisher.assignment.close()


def batch_loader(corpus, assignment, cfg: TrainConfig) -> Callable:
  """The loader factory of a run over `assignment`: `(start_step,
  data_state) -> BatchLoader` positioned where the checkpoint left off."""

  def make(start_step: int, data_state: Optional[dict]) -> loader_lib.BatchLoader:
    positions = None if data_state is None else np.asarray(data_state["positions"])
    return loader_lib.BatchLoader(
        corpus, assignment, cfg.global_batch_size, cfg.seq_len, cfg.seed, start_step,
        positions, jax.process_index(), jax.process_count())

  return make


def summary_line(final: dict) -> str:
  return (f"uniform avg {final['uniform_average']:.4f}, worst "
          f"{final['worst_case']['loss']:.4f} ({final['worst_case']['domain']})")


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


@dataclasses.dataclass
class _Run:
  """One invocation of a stage: what the loop and the evaluations share."""
  workdir: str
  stage: str
  corpus: Any
  cfg: TrainConfig
  program: StepProgram
  hooks: Sequence[Hook]
  checkpointer: ckpt_lib.Checkpointer
  info: dict
  evaluator: Any = None
  reference: Optional[dict] = None
  timing: dict = dataclasses.field(default_factory=dict)

  def evaluate(self, state, step: int) -> dict:
    summary = self.evaluator(self.program.params_of(state), step, self.reference)
    if rundir.is_writer():
      files.append_jsonl(files.path(self.workdir) / rundir.EVAL_LOG, summary)
    return summary

  def after_step(self, done: int, state):
    for hook in self.hooks:
      state = hook.after_step(done, state, self.evaluator)
    return state

  @property
  def tokens_per_step(self) -> int:
    return self.info.get("tokens_per_step", self.cfg.tokens_per_step)


def _restore(run: _Run):
  """(start step, state, data state): the newest checkpoint, or a fresh init."""
  restored = run.checkpointer.restore_latest(run.program.abstract_state)
  if restored is None:
    return 0, run.program.init(run.cfg.seed), None
  return restored


def _write_run_info(run: _Run, start_step: int):
  cfg, corpus = run.cfg, run.corpus
  rundir.write_run_info(run.workdir, run.stage, start_step, corpus, run.program.setup, {**dict(
      num_steps=cfg.num_steps, seq_len=cfg.seq_len, seed=cfg.seed,
      tokens_per_step=cfg.tokens_per_step, flops_per_token=run.program.flops_per_token,
      eval_tokens=cfg.eval_examples_per_domain * corpus.num_domains * cfg.seq_len,
      tokens_per_row=dict(zip(corpus.domains,
                              loader_lib.tokens_per_row(corpus, cfg.seq_len).tolist()))),
      **run.info})


def _finish(run: _Run, state) -> tuple:
  """The final evaluation, eval.json, and the hooks' result files; returns
  (the stage's one-line summary, the final evaluation)."""
  final = run.evaluate(state, run.cfg.num_steps)
  if rundir.is_writer():
    files.write_json(files.path(run.workdir) / rundir.EVAL, final)
    print(f"[{run.stage}] final per-domain loss ({final['split']} split):\n" +
          compare.format_table(final),
          flush=True)
  summary = summary_line(final)
  for hook in run.hooks:
    summary = hook.on_finish(state, final, run.reference) or summary
  return summary, final


def _check_same_run(workdir, stage, corpus, cfg, program, hooks) -> tuple:
  """Before anything is written: the run directory holds no run, or this
  one (its stage, domains, model and every setting that decides the
  result). Returns (this run's identity, a num_steps extension or None)."""
  rundir.check_resumable(workdir, stage, program.setup.model_cfg, corpus.domains)
  method = {}
  for hook in hooks:
    method.update(hook.identity())
  identity = rundir.run_identity(stage, cfg, program.setup, corpus, method)
  return identity, rundir.check_identity(workdir, identity)


def run_stage(*, workdir: str, stage: str, corpus, cfg: TrainConfig, program: StepProgram,
              loader: Callable[[int, Optional[dict]], Any],
              hooks: Sequence[Hook] = ()) -> dict:
  """Trains `program` for `cfg.num_steps` in `workdir` (resuming if it holds
  checkpoints) and returns the final evaluation summary. `loader(start_step,
  data_state)` makes the run's loader (`batch_loader` for most stages).

  Writes: checkpoints/, config.gin, run_info.json (with the hooks'
  entries), metrics.jsonl, tensorboard/, eval.jsonl, eval.json, the hooks'
  files, and complete.json last."""
  if context.current().build_only:
    raise context.ProgramBuilt(program)
  if preemption.requested() and jax.process_count() == 1:   # between a study's runs
    raise preemption.Stopped(stage, None, preemption.requested())
  t0 = time.time()
  workdir = str(workdir)
  identity, extended = _check_same_run(workdir, stage, corpus, cfg, program, hooks)
  for split in packing.SPLITS:   # packed data for this vocabulary and length?
    loader_lib.open_sources(corpus, split, cfg.seq_len)
  info = {}
  for hook in hooks:
    info.update(hook.run_info())
  run = _Run(workdir, stage, corpus, cfg, program, hooks, ckpt_lib.Checkpointer(
      files.path(workdir) / rundir.CHECKPOINTS, cfg.checkpoint_every, cfg.keep_checkpoints,
      cfg.async_checkpointing), info)
  batches = None
  try:
    start_step, state, data_state = _restore(run)
    rundir.write_identity(workdir, identity, start_step, extended)
    rundir.trim_logs(workdir, start_step)
    for hook in hooks:
      hook.start(workdir, start_step, data_state)
    _write_run_info(run, start_step)
    batches = loader(start_step, data_state)
    run.evaluator = (program.make_evaluator or evaluate.Evaluator.create)(program.setup, corpus,
                                                                          cfg)
    for hook in hooks:
      run.reference = hook.reference_eval(run.evaluator) or run.reference
    if start_step == 0:
      rundir.announce(stage, "initial eval: " + summary_line(run.evaluate(state, 0)))
      state = run.after_step(0, state)
    else:
      rundir.announce(stage, f"resuming from step {start_step}")
      if cfg.eval_every and start_step % cfg.eval_every == 0 and start_step < cfg.num_steps \
          and not rundir.logged_eval(workdir, start_step):   # killed before it ran
        run.evaluate(state, start_step)
    state = train_loop(run, state, batches, start_step)
    summary, final = _finish(run, state)
  finally:
    if batches is not None:
      batches.close()
    for hook in hooks:
      hook.close()
    run.checkpointer.close()
  rundir.mark_complete(workdir, stage, cfg.num_steps, time.time() - t0, summary,
                       dict(run.timing, tokens_per_step=run.tokens_per_step))
  return final
