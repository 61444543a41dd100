"""Stage `proxy` (DoReMi Step 2): the proxy trained with Group DRO against a
finished reference run.

Batches are stratified (every global batch holds the same number of
sequences of every domain); the step is `steps.dro_program`; the math is in
`doremi_jax.doremi`. Writes doremi_weights.jsonl (one line per logged step:
the current weights, the per-domain excess and the running average),
average_domain_weights.json ({domain: weight}, read by Step 3),
reference_eval.json, and eval.json with each domain's excess over the
reference.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Optional

import gin
import jax
import numpy as np

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import doremi
from doremi_jax import files
from doremi_jax import mixers
from doremi_jax import model as model_lib
from doremi_jax import rundir
from doremi_jax import runner
from doremi_jax import steps
from doremi_jax.config import ConfigError
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import scheduled
from doremi_jax.data.registry import get_corpus
from doremi_jax.data import weights as weights_lib
from doremi_jax.mixers import base as mixers_base
from doremi_jax.stages import registry
from doremi_jax.state import ModelSetup, TrainConfig, build_setup


@dataclasses.dataclass
class Reference:
  model: model_lib.Transformer
  params: Any
  shardings: Any
  info: dict


def check_reference_compatible(info: dict, corpus, proxy_model_cfg: model_lib.ModelConfig,
                               reference_dir: str) -> model_lib.ModelConfig:
  """Raises ConfigError unless the reference was trained on the same domains
  with the same tokenizer; returns the reference's ModelConfig."""
  if info.get("stage") != "reference":
    logging.warning("reference_dir %s holds a %r run, not a reference run.", reference_dir,
                    info.get("stage"))
  if list(info.get("domains", [])) != list(corpus.domains):
    raise ConfigError(
        f"the reference run {reference_dir!r} was trained on domains {info.get('domains')} "
        f"but this run's corpus has {list(corpus.domains)}. Use a reference trained on the "
        "same domain list (same names, same order).")
  tok = rundir.describe_vocabulary(corpus.vocabulary)
  same = lambda t: {k: v for k, v in (t or {}).items() if k != "sentencepiece_model_file"}
  if same(info.get("tokenizer")) != same(tok):
    raise ConfigError(
        f"the reference run {reference_dir!r} used tokenizer {info.get('tokenizer')} but this "
        f"run uses {tok}. The reference and proxy must share the tokenizer: retrain the "
        "reference with this run's vocabulary.")
  ref_cfg = model_lib.ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in info["model"].items()})
  # The reference's forward runs in the proxy's program: it computes the way
  # the proxy does (attention kernel, loss chunks, remat).
  ref_cfg = ref_cfg.with_execution_of(proxy_model_cfg)
  if ref_cfg.vocab_size != proxy_model_cfg.vocab_size:
    raise ConfigError(
        f"reference model vocab_size {ref_cfg.vocab_size} != proxy vocab_size "
        f"{proxy_model_cfg.vocab_size}; set ModelConfig.vocab_size to match the reference.")
  return ref_cfg


def load_reference(reference_dir: str, corpus, setup: ModelSetup, seq_len: int,
                   step: Optional[int] = None) -> Reference:
  """The reference run's parameters (newest checkpoint unless `step`),
  restored into the shardings of `setup`'s mesh."""
  if not files.exists(reference_dir):
    raise ConfigError(f"reference run directory {reference_dir!r} does not exist. Set "
                      "train_proxy.reference_dir to the workdir of a finished `reference` "
                      "stage (Step 1).")
  info_path = files.path(reference_dir) / "run_info.json"
  if not files.exists(info_path):
    raise ConfigError(f"{reference_dir!r} is not a reference run directory: it has no "
                      "run_info.json. Point train_proxy.reference_dir at the workdir of a "
                      "`reference` stage run.")
  info = files.read_json(info_path)
  ref_cfg = check_reference_compatible(info, corpus, setup.model_cfg, reference_dir)
  ref_model = setup.make_model(ref_cfg)
  abstract, shardings = setup.abstract_params(ref_model, seq_len)
  params, restored_step = ckpt_lib.restore_params(
      files.path(reference_dir) / "checkpoints", abstract, f"the reference run {reference_dir!r}",
      step)
  expected = info.get("num_steps")
  if expected is not None and restored_step < expected:
    logging.warning("reference checkpoint at step %d of %d: the reference run is unfinished.",
                    restored_step, expected)
  return Reference(ref_model, params, shardings, info)


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


@gin.configurable
def train_proxy(workdir: str, reference_dir: str = gin.REQUIRED, step_size: float = 1.0,
                smoothing: float = 1e-3, initial_weights: Any = "uniform",
                weights_warmup_steps: int = 0, update_every: int = 1,
                devices=None, mixer: Optional[str] = None, mode: str = "reweight") -> dict:
  """Trains the proxy with Group DRO against the reference in `reference_dir`
  (eta `step_size`, c `smoothing`; see `doremi.DROConfig`). Returns the
  averaged weights as {domain: weight}. `mode` 'reweight' (the paper's
  Algorithm 1: stratified batches, loss reweighted by the weights) or
  'resample' (the variant the paper proposes for larger proxies: batches
  sampled from the current weights, plain loss; see `steps.dro_program`;
  it also writes mixture_weights.jsonl, the rates of every step). (`mixer`
  exists only to refuse one.)"""
  mixers.refuse_on_stage("proxy", mixer)
  if mode not in steps.DRO_MODES:
    raise ConfigError(f"train_proxy.mode = {mode!r}; choose 'reweight' (the paper's Step 2) "
                      "or 'resample' (batches sampled from the weights).")
  dro_cfg = doremi.DROConfig(step_size, smoothing, weights_warmup_steps, update_every)
  cfg = TrainConfig()
  corpus = get_corpus()
  domains = corpus.domains
  w0 = weights_lib.resolve_weights(initial_weights, corpus, "train_proxy.initial_weights")
  publisher = None
  if mode == "resample":
    assignment = scheduled.ScheduledAssignment(w0, cfg.seed, 1)
    publisher = scheduled.RatesPublisher(
        assignment, "domain_weights", domains, cfg.num_steps, mixers_base.DELAY,
        files.path(workdir) / "mixture_weights.jsonl", "doremi_resample", rundir.is_writer(),
        score_key="excess")
  else:
    assignment = loader_lib.StratifiedAssignment(corpus.num_domains, cfg.seed)
    assignment.counts(0, cfg.global_batch_size)  # batch >= k, else a clear error
  setup = build_setup(corpus.vocab_size, cfg, devices=devices)
  reference = load_reference(reference_dir, corpus, setup, cfg.seq_len)
  program = steps.dro_program(setup, reference.model, reference.params, reference.shardings,
                              corpus.num_domains, cfg.grad_accum_steps, dro_cfg, w0,
                              cfg.seq_len, mode)
  weights_log = files.path(workdir) / "doremi_weights.jsonl"
  result = {}

  def on_log(step, m):
    check_same_on_all_processes(step, m["domain_weights"])
    if rundir.is_writer():
      files.append_jsonl(weights_log, {
          "step": int(step), "timestamp": time.time(), "domain_names": list(domains),
          "domain_weights": np.asarray(m["domain_weights"]).tolist(),
          "perdomain_scores": np.asarray(m["excess"]).tolist(),
          "average_weights": np.asarray(m["average_weights"]).tolist()})

  def on_finish(state, final, reference_eval):
    check_same_on_all_processes(cfg.num_steps, state["dro"].average_weights)
    if jax.process_count() > 1:
      rundir.announce("proxy", f"domain weights identical on all {jax.process_count()} "
                               "processes at every logged step")
    avg = np.asarray(jax.device_get(state["dro"].average_weights), np.float64)
    result.update(weights_lib.as_dict(domains, avg))
    if rundir.is_writer():
      files.write_json(files.path(workdir) / "average_domain_weights.json", result)
      files.write_json(files.path(workdir) / "reference_eval.json", reference_eval)
      print("[proxy] averaged DoReMi domain weights:\n" + "\n".join(
          f"  {d:<14}{w:.4f}" for d, w in result.items()), flush=True)
    top = sorted(result.items(), key=lambda kv: -kv[1])
    return "averaged weights " + ", ".join(f"{d} {w:.3f}" for d, w in top)

  runner.run_stage(
      workdir=workdir, stage="proxy", corpus=corpus, cfg=cfg, program=program,
      assignment=assignment,
      info={"reference_dir": str(reference_dir), "dro": dataclasses.asdict(dro_cfg),
            "initial_weights": weights_lib.as_dict(domains, w0), "mode": mode,
            "sampling": "stratified" if mode == "reweight" else "dro_weights"},
      publisher=publisher,
      hooks=runner.Hooks(
          on_log=on_log, on_finish=on_finish,
          reference_eval=lambda ev: ev(reference.params, reference.info.get("num_steps", 0))))
  return result


def build_program(corpus, cfg: TrainConfig, devices=None) -> steps.StepProgram:
  """The Group-DRO step program against an abstract reference sized by gin's
  `reference/ModelConfig` (what a pipeline trains), with the default DRO
  settings: what `compile_check` compiles."""
  k = corpus.num_domains
  loader_lib.StratifiedAssignment(k, cfg.seed).counts(0, cfg.global_batch_size)
  setup = build_setup(corpus.vocab_size, cfg, devices=devices)
  with gin.config_scope("reference"):
    ref_cfg = model_lib.ModelConfig().with_data_vocab(corpus.vocab_size)
  ref_model = setup.make_model(ref_cfg.with_execution_of(setup.model_cfg))
  ref_abstract, ref_shardings = setup.abstract_params(ref_model, cfg.seq_len)
  return steps.dro_program(setup, ref_model, ref_abstract, ref_shardings, k,
                           cfg.grad_accum_steps, doremi.DROConfig(), np.full(k, 1.0 / k),
                           cfg.seq_len)


registry.register(registry.Stage("proxy", train_proxy, build_program))
