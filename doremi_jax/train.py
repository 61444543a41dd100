"""Sharded training machinery shared by every stage, and the reference stage
(DoReMi Step 1).

The train state is initialised directly sharded: its abstract shape comes
from `jax.eval_shape`, its shardings from the model's logical axis names and
the gin rules, and one jitted init writes each shard where it lives. The
train step is one `jax.jit` with explicit in/out shardings and donated state.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import config as config_lib
from doremi_jax import evaluate
from doremi_jax import io
from doremi_jax import loss as loss_lib
from doremi_jax import metrics as metrics_lib
from doremi_jax import model as model_lib
from doremi_jax import optimizer as opt_lib
from doremi_jax import sharding as sharding_lib
from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import loader as loader_lib


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  num_steps: int = 200
  global_batch_size: int = 32
  seq_len: int = 128
  seed: int = 0
  grad_accum_steps: int = 1
  log_every: int = 10
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  eval_every: int = 0                 # 0: evaluate at the start and the end only
  eval_examples_per_domain: int = 128
  eval_batch_size: int = 64
  tensorboard: bool = True


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def validate_batching(cfg: TrainConfig, mesh, rules):
  dp = sharding_lib.data_parallel_size(mesh, rules)
  nproc = jax.process_count()
  if cfg.global_batch_size <= 0 or cfg.num_steps <= 0 or cfg.seq_len <= 0:
    raise ConfigError("TrainConfig.global_batch_size, num_steps and seq_len must be positive.")
  if cfg.grad_accum_steps < 1 or cfg.global_batch_size % cfg.grad_accum_steps:
    raise ConfigError(
        f"TrainConfig.global_batch_size={cfg.global_batch_size} is not divisible by "
        f"grad_accum_steps={cfg.grad_accum_steps}.")
  micro = cfg.global_batch_size // cfg.grad_accum_steps
  for what, n in (("global_batch_size / grad_accum_steps", micro),
                  ("eval_batch_size", cfg.eval_batch_size)):
    if n % dp or n % nproc:
      raise ConfigError(
          f"TrainConfig.{what} = {n} is not divisible by the data-parallel size {dp} "
          f"(mesh {dict(mesh.shape)}, batch sharded over the axes the 'act_batch' rule "
          f"names) and the {nproc} process(es). Choose a batch size that is a multiple "
          f"of {int(np.lcm(dp, nproc))}.")


@dataclasses.dataclass
class ModelSetup:
  """Everything built from the config before any training state exists."""
  model_cfg: model_lib.ModelConfig
  model: model_lib.Transformer
  mesh: Any
  rules: tuple
  tx: optax.GradientTransformation
  lr_schedule: Callable
  abstract_state: Any           # unboxed ShapeDtypeStructs with shardings
  state_shardings: Any
  batch_shardings: dict


def build_setup(corpus, train_cfg: TrainConfig, model_cfg=None, mesh_cfg=None,
                opt_cfg=None, devices=None) -> ModelSetup:
  model_cfg = (model_cfg or model_lib.ModelConfig()).with_data_vocab(corpus.vocab_size)
  if train_cfg.seq_len > model_cfg.max_len:
    raise ConfigError(f"TrainConfig.seq_len={train_cfg.seq_len} exceeds "
                      f"ModelConfig.max_len={model_cfg.max_len}.")
  mesh_cfg = mesh_cfg or sharding_lib.MeshConfig()
  mesh = sharding_lib.make_mesh(mesh_cfg, devices)
  rules = tuple(tuple(r) for r in mesh_cfg.rules)
  validate_batching(train_cfg, mesh, rules)
  opt_cfg = opt_cfg or opt_lib.OptimizerConfig()
  tx = opt_lib.make_optimizer(opt_cfg, train_cfg.num_steps)
  model = model_lib.Transformer(model_cfg)

  def init_fn(rng):
    params = model.init(rng, jnp.zeros((1, train_cfg.seq_len), jnp.int32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  rng = jax.random.key(0)  # concrete, so made outside the (possibly abstract) mesh
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn, rng)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = ckpt_lib.abstract_with_shardings(nn.meta.unbox(boxed), shardings)
  batch_shardings = {"targets": sharding_lib.batch_sharding(mesh, rules, 2),
                     "domain_ids": sharding_lib.batch_sharding(mesh, rules, 1)}
  setup = ModelSetup(model_cfg, model, mesh, rules, tx,
                     opt_lib.learning_rate_schedule(opt_cfg, train_cfg.num_steps),
                     abstract, shardings, batch_shardings)
  setup.init_fn = init_fn  # type: ignore[attr-defined]
  return setup


def init_state(setup: ModelSetup, seed: int) -> TrainState:
  """Initialises parameters and optimizer state directly into their shards."""
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    init = jax.jit(lambda k: nn.meta.unbox(setup.init_fn(k)),  # type: ignore[attr-defined]
                   out_shardings=setup.state_shardings)
    return init(jax.random.key(seed))


def to_global(batch: dict, shardings: dict) -> dict:
  """Assembles the global batch from each process's local rows."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


# --------------------------------------------------------------------------
# Loss and gradients with optional accumulation


def _split_micro(x, accum: int):
  """[B, ...] -> [A, B/A, ...]; micro-batch m holds rows m, m+A, m+2A, ...

  so each micro-batch keeps the batch sharding of the global batch."""
  b = x.shape[0]
  x = x.reshape((b // accum, accum) + x.shape[1:])
  return jnp.swapaxes(x, 0, 1)


def _merge_micro(x):
  """Inverse of `_split_micro`."""
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape((-1,) + x.shape[2:])


def _constrain_micro(x):
  return nn.with_logical_constraint(x, (None, "act_batch") + (None,) * (x.ndim - 2))


def forward_losses(model, params, targets_BxL, accum: int):
  """Per-token losses (no gradient), micro-batched. Returns (loss_BxL, mask_BxL)."""
  if accum == 1:
    return loss_lib.per_token_loss(model, params, targets_BxL)
  def body(_, t):
    return None, loss_lib.per_token_loss(model, params, _constrain_micro(t[None])[0])
  _, (loss, mask) = jax.lax.scan(body, None, _split_micro(targets_BxL, accum))
  return _merge_micro(loss), _merge_micro(mask)


def weighted_grads(model, params, targets_BxL, weights_BxL, accum: int):
  """Gradient of sum(loss_BxL * weights_BxL) w.r.t. params, accumulated over
  `accum` micro-batches; also returns loss_BxL (for metrics)."""
  def micro(t, w):
    loss, vjp = jax.vjp(lambda p: loss_lib.per_token_loss(model, p, t)[0], params)
    return vjp(w.astype(loss.dtype))[0], loss
  if accum == 1:
    return micro(targets_BxL, weights_BxL)
  def body(acc, tw):
    g, loss = micro(*tw)
    return jax.tree.map(jnp.add, acc, g), loss
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, loss = jax.lax.scan(body, zeros, (_split_micro(targets_BxL, accum),
                                           _split_micro(weights_BxL, accum)))
  return grads, _merge_micro(loss)


def apply_gradients(setup: ModelSetup, state: TrainState, grads):
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state)


def make_reference_step(setup: ModelSetup, num_domains: int, accum: int):
  """Plain LM step: mean token loss over the global batch."""
  model = setup.model

  def step(state: TrainState, batch):
    targets_BxL = batch["targets"]
    mask_BxL = (targets_BxL != 0).astype(jnp.float32)
    total = jnp.maximum(mask_BxL.sum(), 1.0)
    grads, loss_BxL = weighted_grads(model, state.params, targets_BxL, mask_BxL / total, accum)
    new_state = apply_gradients(setup, state, grads)
    sums, counts = evaluate.per_domain_sums(loss_BxL, mask_BxL, batch["domain_ids"], num_domains)
    metrics = {
        "loss": loss_BxL.sum() / total,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": setup.lr_schedule(state.step),
        "domain_loss": sums / jnp.maximum(counts, 1.0),
        "domain_tokens": counts,
    }
    return new_state, metrics

  return jit_step(setup, step, setup.state_shardings)


def jit_step(setup: ModelSetup, step_fn, state_shardings, extra_shardings: tuple = ()):
  """jit of `step_fn(state, batch, *extra)` with explicit shardings, donated
  state (not the extra inputs, e.g. frozen reference parameters), traced
  under the mesh and the logical-axis rules."""
  replicated = sharding_lib.replicated(setup.mesh)
  jitted = jax.jit(step_fn,
                   in_shardings=(state_shardings, setup.batch_shardings, *extra_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  @functools.wraps(step_fn)
  def call(state, batch, *extra):
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
      return jitted(state, batch, *extra)
  call.jitted = jitted  # for ahead-of-time lowering
  return call


# --------------------------------------------------------------------------
# The training loop shared by the stages


@dataclasses.dataclass
class Evaluator:
  setup: ModelSetup
  corpus: Any
  batches: list
  step_fn: Callable

  @classmethod
  def create(cls, setup, corpus, cfg: TrainConfig):
    batches = loader_lib.eval_batches(
        corpus, cfg.seq_len, cfg.eval_examples_per_domain, cfg.eval_batch_size,
        jax.process_index(), jax.process_count(), host_reads=loader_lib.loader_host_reads())
    step_fn = evaluate.make_eval_step(
        setup.model, corpus.num_domains, setup.state_shardings.params,
        setup.batch_shardings, sharding_lib.replicated(setup.mesh))
    return cls(setup, corpus, batches, step_fn)

  def __call__(self, params, step: int, reference: Optional[dict] = None) -> dict:
    with jax.set_mesh(self.setup.mesh), nn.logical_axis_rules(self.setup.rules):
      sums, counts = evaluate.run_eval(
          self.step_fn, params, self.batches,
          lambda b: to_global(b, self.setup.batch_shardings))
    return evaluate.summarize(self.corpus.domains, sums, counts, step,
                              self.corpus.entropy_floors, reference)


def is_writer() -> bool:
  return jax.process_index() == 0


def train_loop(*, stage: str, workdir: str, cfg: TrainConfig, state, step_fn,
               loader: loader_lib.BatchLoader, checkpointer: ckpt_lib.Checkpointer,
               writer: metrics_lib.MetricsWriter, batch_shardings: dict, start_step: int,
               evaluate_fn: Optional[Callable] = None, on_log: Optional[Callable] = None,
               timing: Optional[dict] = None):
  """Runs steps start_step..num_steps-1. `step_fn(state, batch) -> (state,
  metrics)`; `evaluate_fn(state, step)` is called every `eval_every` steps;
  `on_log(step, metrics)` gets host metrics at each log step. `timing`, if
  given, receives the first step's seconds (compile + run) and the seconds
  of the loop after it. Returns the final state."""
  progress = metrics_lib.Progress(stage, start_step, cfg.num_steps,
                                  cfg.global_batch_size * cfg.seq_len)
  pending = None  # (step, device metrics): fetched one step late (nanodo style)

  def flush(pending):
    step, m = pending
    host = jax.device_get(m)
    writer.write(step, host)
    if on_log is not None:
      on_log(step, host)
    progress.update(step, float(host["loss"]))

  compile_start = time.perf_counter()
  for step in range(start_step, cfg.num_steps):
    local, data_state = loader.next()
    state, metrics = step_fn(state, to_global(local, batch_shardings))
    if step == start_step:
      jax.block_until_ready(metrics)
      first = time.perf_counter() - compile_start
      if is_writer():
        logging.info("%s: first step (compile + run) took %.1fs", stage, first)
      if timing is not None:
        timing.update(first_step_seconds=round(first, 3), loop_start=time.perf_counter())
      progress.start_timing(step + 1)
    if pending is not None:
      flush(pending)
      pending = None
    done = step + 1
    if done % cfg.log_every == 0 or done == cfg.num_steps:
      pending = (done, metrics)
    checkpointer.maybe_save(done, state, data_state, force=done == cfg.num_steps)
    if evaluate_fn is not None and cfg.eval_every and done % cfg.eval_every == 0 \
        and done != cfg.num_steps:
      evaluate_fn(state, done)
  if pending is not None:
    flush(pending)
  writer.flush()
  if timing is not None and "loop_start" in timing:
    jax.block_until_ready(state)
    timing["later_steps"] = cfg.num_steps - start_step - 1
    timing["later_steps_seconds"] = round(time.perf_counter() - timing.pop("loop_start"), 3)
  return state


def restore_or_init(setup: ModelSetup, checkpointer: ckpt_lib.Checkpointer, seed: int,
                    init_fn: Optional[Callable] = None, abstract=None):
  """Returns (state, start_step, data_state or None)."""
  latest = checkpointer.latest_step()
  abstract = setup.abstract_state if abstract is None else abstract
  if latest is None:
    state = (init_fn or (lambda: init_state(setup, seed)))()
    return state, 0, None
  state, data_state = checkpointer.restore(latest, abstract)
  return state, latest, data_state


def resume_loader(corpus, assignment, cfg: TrainConfig, start_step: int,
                  data_state: Optional[dict]) -> loader_lib.BatchLoader:
  """This process's batch loader, positioned where the checkpoint left off."""
  positions = None if data_state is None else np.asarray(data_state["positions"])
  return loader_lib.BatchLoader(
      corpus, assignment, cfg.global_batch_size, cfg.seq_len, cfg.seed, start_step, positions,
      jax.process_index(), jax.process_count(), host_reads=loader_lib.loader_host_reads())


def write_run_info(workdir: str, stage: str, start_step: int, corpus, setup: ModelSetup,
                   extra: Optional[dict] = None):
  if not is_writer():
    return
  config_lib.write_config(workdir, config_lib.operative_config(), start_step)
  info = {
      "stage": stage,
      "corpus": corpus.name,
      "domains": list(corpus.domains),
      "tokenizer": describe_vocabulary(corpus.vocabulary),
      "model": dataclasses.asdict(setup.model_cfg),
      "num_params": setup.model_cfg.num_params(),
      "mesh": dict(setup.mesh.shape),
      "num_devices": setup.mesh.size,
      "process_count": jax.process_count(),
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
  }
  info.update(extra or {})
  name = "run_info.json" if start_step == 0 or not io.exists(io.path(workdir) / "run_info.json") \
      else f"run_info.resumed_at_{start_step}.json"
  io.write_json(io.path(workdir) / name, info)


def describe_vocabulary(vocab) -> dict:
  d = {"class": type(vocab).__name__, "vocab_size": int(vocab.vocab_size)}
  path = getattr(vocab, "sentencepiece_model_file", None)
  if path:
    import hashlib
    d["sentencepiece_model_file"] = str(path)
    # Identity by content: the same model copied elsewhere is the same tokenizer.
    d["sentencepiece_sha256"] = hashlib.sha256(io.path(path).read_bytes()).hexdigest()
  return d


# --------------------------------------------------------------------------
# Stage: reference (DoReMi Step 1)


@gin.configurable
def train_reference(workdir: str, weights: Any = "uniform", devices=None) -> dict:
  """DoReMi Step 1: trains the reference model on the mixture `weights`
  (any spec `train_main` accepts; 'uniform' by default, or 'proportional',
  or {domain: weight}) and evaluates it per domain.

  Writes to `workdir`: checkpoints/, config.gin, run_info.json,
  reference_weights.json, metrics.jsonl, tensorboard/, eval.jsonl, eval.json.
  Returns the final evaluation summary.
  """
  return train_on_mixture(workdir, "reference", weights, devices)


@gin.configurable
def train_main(workdir: str, weights: Any = gin.REQUIRED, devices=None) -> dict:
  """DoReMi Step 3: trains the (large) main model on a seqio Mixture whose
  rates are `weights`: a Step 2 run directory or `{domain: weight}` JSON file
  (typically `.../average_domain_weights.json`), a preset ('uniform',
  'proportional', 'pile_baseline', 'pile_doremi_280m'), or a mapping.
  Domains are resampled with these probabilities (not loss-reweighted).

  Writes main_weights.json (the rates used), eval.json and the usual files.
  """
  return train_on_mixture(workdir, "main", weights, devices)


def train_on_mixture(workdir: str, stage: str, weights: Any, devices=None) -> dict:
  """Registers the seqio Mixture `<corpus>_<stage>` with rates `weights` and
  trains an LM on it."""
  cfg = TrainConfig()
  corpus = corpus_lib.get_corpus()
  what = f"train_{stage}.weights"
  w = corpus_lib.resolve_weights(corpus_lib.load_weights_spec(weights, what), corpus, what)
  mixture = corpus_lib.register_mixture(f"{corpus.name}_{stage}", corpus, w)
  rates = corpus_lib.mixture_rates(mixture, corpus)
  return train_lm(workdir, stage, corpus, cfg, loader_lib.MixtureAssignment(rates, cfg.seed),
                  {"mixture": mixture, "weights": dict(zip(corpus.domains, rates.tolist()))},
                  devices=devices)


def train_lm(workdir: str, stage: str, corpus, cfg: TrainConfig, assignment, mixture_info: dict,
             devices=None, model_cfg=None) -> dict:
  """Trains an LM on a mixture (Step 1 and Step 3) with eval at start/end."""
  t0 = time.time()
  setup = build_setup(corpus, cfg, model_cfg=model_cfg, devices=devices)
  workdir = str(workdir)
  checkpointer = ckpt_lib.Checkpointer(io.path(workdir) / "checkpoints", cfg.checkpoint_every,
                                       cfg.keep_checkpoints, cfg.async_checkpointing)
  try:
    state, start_step, data_state = restore_or_init(setup, checkpointer, cfg.seed)
    write_run_info(workdir, stage, start_step, corpus, setup, {"num_steps": cfg.num_steps})
    if is_writer():
      io.write_json(io.path(workdir) / f"{stage}_weights.json", mixture_info["weights"])
    loader = resume_loader(corpus, assignment, cfg, start_step, data_state)
    evaluator = Evaluator.create(setup, corpus, cfg)
    writer = metrics_lib.MetricsWriter(workdir, corpus.domains, stage, cfg.tensorboard)
    eval_log = io.path(workdir) / "eval.jsonl"

    def do_eval(st, step):
      summary = evaluator(st.params, step)
      if is_writer():
        io.append_jsonl(eval_log, summary)
      return summary

    if start_step == 0:
      s0 = do_eval(state, 0)
      _announce(stage, f"initial eval: uniform avg {s0['uniform_average']:.4f}, worst "
                       f"{s0['worst_case']['loss']:.4f} ({s0['worst_case']['domain']})")
    else:
      _announce(stage, f"resuming from step {start_step}")
    step_fn = make_reference_step(setup, corpus.num_domains, cfg.grad_accum_steps)
    timing = {}
    state = train_loop(stage=stage, workdir=workdir, cfg=cfg, state=state, step_fn=step_fn,
                       loader=loader, checkpointer=checkpointer, writer=writer,
                       batch_shardings=setup.batch_shardings, start_step=start_step,
                       evaluate_fn=do_eval, timing=timing)
    loader.close()
    final = do_eval(state, cfg.num_steps)
    if is_writer():
      io.write_json(io.path(workdir) / "eval.json", final)
      print(f"[{stage}] final per-domain validation loss:\n" + evaluate.format_table(final),
            flush=True)
  finally:
    checkpointer.close()
  mark_complete(workdir, stage, cfg.num_steps, time.time() - t0,
                f"uniform avg {final['uniform_average']:.4f}, worst "
                f"{final['worst_case']['loss']:.4f} ({final['worst_case']['domain']})",
                dict(timing, tokens_per_step=cfg.global_batch_size * cfg.seq_len))
  return final


COMPLETE = "complete.json"


def mark_complete(workdir: str, stage: str, num_steps: int, seconds: float, summary: str,
                  timing: Optional[dict] = None):
  """Written last, once the final checkpoint is on disk: the stage is done.
  The pipeline skips stages that have it. `timing` (this invocation's first
  step and later steps) is recorded with it."""
  if is_writer():
    io.write_json(io.path(workdir) / COMPLETE, {
        "stage": stage, "num_steps": int(num_steps), "seconds": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "timing": timing or {}})
    print(f"[{stage}] done in {seconds:.0f}s: {summary}", flush=True)


def is_complete(workdir: str) -> bool:
  return io.exists(io.path(workdir) / COMPLETE)


def _announce(stage: str, msg: str):
  if is_writer():
    print(f"[{stage}] {msg}", flush=True)
