"""Stage `proxy` (DoReMi Step 2): Group-DRO training of the proxy model.

One jitted step computes, in a single XLA program: the proxy's per-token
losses (forward + vjp), the frozen reference's per-token losses on the same
tokens, the clipped per-domain excess, the new domain weights, the gradient
of the weight-averaged per-domain mean proxy loss, and the optimizer update.
Batches are stratified: every global batch holds the same number of
sequences of every domain.

With gradient accumulation (A > 1 micro-batches) the excess must be known
over the whole global batch before any gradient is taken, so the step first
runs proxy and reference forwards over all micro-batches, then a second
forward + backward with the new weights (one extra proxy forward per step).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import doremi
from doremi_jax import evaluate
from doremi_jax import io
from doremi_jax import metrics as metrics_lib
from doremi_jax import model as model_lib
from doremi_jax import sharding as sharding_lib
from doremi_jax import train
from doremi_jax.config import ConfigError
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import loader as loader_lib


@dataclasses.dataclass(frozen=True)
class DROConfig:
  step_size: float = 1.0
  smoothing: float = 1e-3
  weights_warmup_steps: int = 0     # no weight updates before this step
  update_every: int = 1             # update the weights every N steps

  def validate(self):
    if not (np.isfinite(self.step_size) and self.step_size > 0):
      raise ConfigError(f"train_proxy.step_size must be a positive number, got {self.step_size}.")
    if not (0 <= self.smoothing <= 1):
      raise ConfigError(f"train_proxy.smoothing must be in [0, 1], got {self.smoothing}.")
    if self.update_every < 1 or self.weights_warmup_steps < 0:
      raise ConfigError("train_proxy.update_every must be >= 1 and weights_warmup_steps >= 0.")


# --------------------------------------------------------------------------
# The reference model


@dataclasses.dataclass
class Reference:
  model: model_lib.Transformer
  params: Any
  shardings: Any
  info: dict


def _read_reference_info(reference_dir: str) -> dict:
  info_path = io.path(reference_dir) / "run_info.json"
  if not io.exists(reference_dir):
    raise ConfigError(f"reference run directory {reference_dir!r} does not exist. Set "
                      "train_proxy.reference_dir to the workdir of a finished `reference` "
                      "stage (Step 1).")
  if not io.exists(info_path):
    raise ConfigError(f"{reference_dir!r} is not a reference run directory: it has no "
                      "run_info.json. Point train_proxy.reference_dir at the workdir of a "
                      "`reference` stage run.")
  return io.read_json(info_path)


def check_reference_compatible(info: dict, corpus, proxy_model_cfg: model_lib.ModelConfig,
                               reference_dir: str) -> model_lib.ModelConfig:
  """Raises ConfigError unless the reference was trained on the same domains
  with the same tokenizer; returns the reference's ModelConfig."""
  if info.get("stage") not in ("reference",):
    logging.warning("reference_dir %s holds a %r run, not a reference run.", reference_dir,
                    info.get("stage"))
  if list(info.get("domains", [])) != list(corpus.domains):
    raise ConfigError(
        f"the reference run {reference_dir!r} was trained on domains {info.get('domains')} "
        f"but this run's corpus has {list(corpus.domains)}. Use a reference trained on the "
        "same domain list (same names, same order).")
  tok = train.describe_vocabulary(corpus.vocabulary)
  same = lambda t: {k: v for k, v in (t or {}).items() if k != "sentencepiece_model_file"}
  if same(info.get("tokenizer")) != same(tok):
    raise ConfigError(
        f"the reference run {reference_dir!r} used tokenizer {info.get('tokenizer')} but this "
        f"run uses {tok}. The reference and proxy must share the tokenizer: retrain the "
        "reference with this run's vocabulary.")
  ref_cfg = model_lib.ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in info["model"].items()})
  if ref_cfg.vocab_size != proxy_model_cfg.vocab_size:
    raise ConfigError(
        f"reference model vocab_size {ref_cfg.vocab_size} != proxy vocab_size "
        f"{proxy_model_cfg.vocab_size}; set ModelConfig.vocab_size to match the reference.")
  return ref_cfg


def abstract_params(model, setup: train.ModelSetup, seq_len: int):
  """(abstract params with shardings, shardings) of `model` on setup's mesh."""
  import flax.linen as nn
  rng, tokens = jax.random.key(0), jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    boxed = jax.eval_shape(model.init, rng, tokens)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), setup.mesh,
                                            setup.rules)["params"]
  return ckpt_lib.abstract_with_shardings(nn.meta.unbox(boxed)["params"], shardings), shardings


def dro_state_shardings(setup: train.ModelSetup, w0):
  """(abstract DROState with shardings, shardings): replicated on the mesh."""
  replicated = sharding_lib.replicated(setup.mesh)
  dro_abstract = jax.eval_shape(lambda: doremi.DROState.create(w0))
  dro_shardings = jax.tree.map(lambda _: replicated, dro_abstract)
  return ckpt_lib.abstract_with_shardings(dro_abstract, dro_shardings), dro_shardings


def load_reference(reference_dir: str, corpus, setup: train.ModelSetup, seq_len: int,
                   step: Optional[int] = None) -> Reference:
  info = _read_reference_info(reference_dir)
  ref_cfg = check_reference_compatible(info, corpus, setup.model_cfg, reference_dir)
  ref_model = model_lib.Transformer(ref_cfg)
  abstract, shardings = abstract_params(ref_model, setup, seq_len)
  ckpt_dir = io.path(reference_dir) / "checkpoints"
  if not io.exists(ckpt_dir):
    raise ConfigError(f"the reference run {reference_dir!r} has no checkpoints/ directory; "
                      "run the reference stage to completion first.")
  mngr = ocp.CheckpointManager(ckpt_dir if "://" in str(ckpt_dir) else ckpt_dir.absolute(),
                               options=ocp.CheckpointManagerOptions(
                                   read_only=True, save_interval_steps=0, create=False))
  latest = mngr.latest_step() if step is None else step
  if latest is None:
    raise ConfigError(f"the reference run {reference_dir!r} has no checkpoint yet; run the "
                      "reference stage to completion first.")
  expected = info.get("num_steps")
  if expected is not None and latest < expected:
    logging.warning("reference checkpoint at step %d of %d: the reference run is unfinished.",
                    latest, expected)
  item = {"params": abstract}
  try:
    restored = mngr.restore(latest, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"could not restore the reference parameters from {ckpt_dir}/{latest}: "
                      f"{e}. The checkpoint does not match the reference's recorded "
                      "architecture.") from e
  finally:
    mngr.close()
  return Reference(ref_model, restored.state["params"], shardings, info)


# --------------------------------------------------------------------------
# The Group-DRO step


def make_proxy_step(setup: train.ModelSetup, ref_model, ref_shardings, num_domains: int,
                    accum: int, dro_cfg: DROConfig, state_shardings):
  model = setup.model

  def step(state, batch, ref_params):
    ts: train.TrainState = state["train"]
    dro: doremi.DROState = state["dro"]
    targets_BxL, dom_B = batch["targets"], batch["domain_ids"]
    ref_params = jax.lax.stop_gradient(ref_params)
    ref_loss_BxL, mask_BxL = train.forward_losses(ref_model, ref_params, targets_BxL, accum)
    if accum == 1:
      proxy_loss_BxL, vjp = jax.vjp(
          lambda p: train.loss_lib.per_token_loss(model, p, targets_BxL)[0], ts.params)
    else:
      proxy_loss_BxL, _ = train.forward_losses(model, ts.params, targets_BxL, accum)
    excess_K = doremi.per_domain_excess_loss(proxy_loss_BxL, ref_loss_BxL, mask_BxL, dom_B,
                                             num_domains)
    t = ts.step
    do_update = (t >= dro_cfg.weights_warmup_steps) & (
        (t - dro_cfg.weights_warmup_steps) % dro_cfg.update_every == 0)
    new_dro = doremi.dro_update(dro, excess_K, dro_cfg.step_size, dro_cfg.smoothing, do_update)
    w_BxL = doremi.token_weights(new_dro.weights, mask_BxL, dom_B, num_domains)
    if accum == 1:
      grads = vjp(w_BxL)[0]
    else:
      grads, proxy_loss_BxL = train.weighted_grads(model, ts.params, targets_BxL, w_BxL, accum)
    new_ts = train.apply_gradients(setup, ts, grads)
    p_sum, counts = evaluate.per_domain_sums(proxy_loss_BxL, mask_BxL, dom_B, num_domains)
    r_sum, _ = evaluate.per_domain_sums(ref_loss_BxL, mask_BxL, dom_B, num_domains)
    proxy_dom = p_sum / jnp.maximum(counts, 1.0)
    metrics = {
        "loss": jnp.sum(new_dro.weights * proxy_dom),  # the DRO objective
        "proxy_domain_loss": proxy_dom,
        "reference_domain_loss": r_sum / jnp.maximum(counts, 1.0),
        "excess": excess_K,
        "domain_weights": new_dro.weights,
        "average_weights": new_dro.average_weights,
        "weights_updated": do_update,
        "domain_tokens": counts,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": setup.lr_schedule(t),
    }
    return {"train": new_ts, "dro": new_dro}, metrics

  return train.jit_step(setup, step, state_shardings, (ref_shardings,))


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


# --------------------------------------------------------------------------
# Stage


@gin.configurable
def train_proxy(workdir: str, reference_dir: str = gin.REQUIRED, step_size: float = 1.0,
                smoothing: float = 1e-3, initial_weights: Any = "uniform",
                weights_warmup_steps: int = 0, update_every: int = 1,
                devices=None) -> dict:
  """Trains the proxy with Group DRO against the reference in `reference_dir`.

  Writes to `workdir`: doremi_weights.jsonl (one line per logged step),
  average_domain_weights.json ({domain: weight}, read by Step 3), eval.json
  (per-domain validation loss with the excess over the reference), and the
  usual config, metrics and checkpoints (which include the DRO state).
  Returns the averaged weights as {domain: weight}.
  """
  t0 = time.time()
  dro_cfg = DROConfig(step_size, smoothing, weights_warmup_steps, update_every)
  dro_cfg.validate()
  cfg = train.TrainConfig()
  corpus = corpus_lib.get_corpus()
  k = corpus.num_domains
  w0 = corpus_lib.resolve_weights(initial_weights, corpus, "train_proxy.initial_weights")
  assignment = loader_lib.StratifiedAssignment(k, cfg.seed)
  assignment.counts(0, cfg.global_batch_size)  # batch >= k, else a clear error
  setup = train.build_setup(corpus, cfg, devices=devices)
  reference = load_reference(reference_dir, corpus, setup, cfg.seq_len)

  workdir = str(workdir)
  dro_abstract, dro_shardings = dro_state_shardings(setup, w0)
  state_shardings = {"train": setup.state_shardings, "dro": dro_shardings}
  abstract = {"train": setup.abstract_state, "dro": dro_abstract}
  checkpointer = ckpt_lib.Checkpointer(io.path(workdir) / "checkpoints", cfg.checkpoint_every,
                                       cfg.keep_checkpoints, cfg.async_checkpointing)
  try:
    init = lambda: {"train": train.init_state(setup, cfg.seed),
                    "dro": jax.device_put(doremi.DROState.create(w0), dro_shardings)}
    state, start_step, data_state = train.restore_or_init(setup, checkpointer, cfg.seed,
                                                          init, abstract)
    train.write_run_info(workdir, "proxy", start_step, corpus, setup, {
        "reference_dir": str(reference_dir), "num_steps": cfg.num_steps,
        "dro": dataclasses.asdict(dro_cfg),
        "initial_weights": dict(zip(corpus.domains, w0.tolist()))})
    loader = train.resume_loader(corpus, assignment, cfg, start_step, data_state)
    writer = metrics_lib.MetricsWriter(workdir, corpus.domains, "proxy", cfg.tensorboard)
    weights_log = io.path(workdir) / "doremi_weights.jsonl"
    evaluator = train.Evaluator.create(setup, corpus, cfg)
    ref_eval = evaluator(reference.params, reference.info.get("num_steps", 0))

    def on_log(step, m):
      check_same_on_all_processes(step, m["domain_weights"])
      if train.is_writer():
        io.append_jsonl(weights_log, {
            "step": int(step), "timestamp": time.time(),
            "domain_names": list(corpus.domains),
            "domain_weights": np.asarray(m["domain_weights"]).tolist(),
            "perdomain_scores": np.asarray(m["excess"]).tolist(),
            "average_weights": np.asarray(m["average_weights"]).tolist()})

    if start_step:
      train._announce("proxy", f"resuming from step {start_step}")
    step_fn = make_proxy_step(setup, reference.model, reference.shardings, k,
                              cfg.grad_accum_steps, dro_cfg, state_shardings)
    timing = {}
    state = train.train_loop(
        stage="proxy", workdir=workdir, cfg=cfg, state=state,
        step_fn=lambda s, b: step_fn(s, b, reference.params), loader=loader,
        checkpointer=checkpointer, writer=writer, batch_shardings=setup.batch_shardings,
        start_step=start_step, on_log=on_log, timing=timing,
        evaluate_fn=lambda s, step: evaluator(s["train"].params, step, ref_eval))
    loader.close()
    check_same_on_all_processes(cfg.num_steps, state["dro"].average_weights)
    if jax.process_count() > 1:
      train._announce("proxy", f"domain weights identical on all {jax.process_count()} "
                               "processes at every logged step")
    avg = np.asarray(jax.device_get(state["dro"].average_weights), np.float64)
    result = dict(zip(corpus.domains, avg.tolist()))
    final = evaluator(state["train"].params, cfg.num_steps, ref_eval)
    if train.is_writer():
      io.write_json(io.path(workdir) / "average_domain_weights.json", result)
      io.write_json(io.path(workdir) / "reference_eval.json", ref_eval)
      io.write_json(io.path(workdir) / "eval.json", final)
      print("[proxy] averaged DoReMi domain weights:\n" + "\n".join(
          f"  {d:<14}{w:.4f}" for d, w in result.items()), flush=True)
  finally:
    checkpointer.close()
  top = sorted(result.items(), key=lambda kv: -kv[1])
  train.mark_complete(workdir, "proxy", cfg.num_steps, time.time() - t0,
                      "averaged weights " + ", ".join(f"{d} {w:.3f}" for d, w in top),
                      dict(timing, tokens_per_step=cfg.global_batch_size * cfg.seq_len))
  return result
