"""The frozen reference model that a Group-DRO step (Step 2) or an online
mixer that compares with a reference (`doremi_online`) runs inside its
step: loaded from a finished `reference` run, or, when a stage only builds
its program (`context.build_only`, e.g. for `compile_check` before any run
exists), its abstract shapes sized by the reference run's recorded model or
by gin's `reference/ModelConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import gin

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import context
from doremi_jax import files
from doremi_jax import model as model_lib
from doremi_jax import rundir
from doremi_jax.config import ConfigError
from doremi_jax.state import ModelSetup


@dataclasses.dataclass
class Reference:
  """The reference's model, its parameters (arrays, or ShapeDtypeStructs
  with shardings when only building), their shardings on the consumer's
  mesh, and the reference run's run_info (empty when abstract)."""
  model: model_lib.Transformer
  params: Any
  shardings: Any
  info: dict

  @property
  def steps_trained(self) -> int:
    return int(self.info.get("num_steps", 0))


def check_compatible(info: dict, corpus, consumer_cfg: model_lib.ModelConfig,
                     reference_dir: str, setting: str) -> model_lib.ModelConfig:
  """Raises ConfigError unless the reference was trained on the same domains
  with the same tokenizer; returns the reference's ModelConfig, computing
  the way the consumer's model does (attention kernel, loss chunks, remat)."""
  if info.get("stage") != "reference":
    logging.warning("reference_dir %s holds a %r run, not a reference run.", reference_dir,
                    info.get("stage"))
  if list(info.get("domains", [])) != list(corpus.domains):
    raise ConfigError(
        f"the reference run {reference_dir!r} was trained on domains {info.get('domains')} "
        f"but this run's corpus has {list(corpus.domains)}. Use a reference trained on the "
        f"same domain list (same names, same order) in {setting}.")
  tok = rundir.describe_vocabulary(corpus.vocabulary)
  same = lambda t: {k: v for k, v in (t or {}).items() if k != "sentencepiece_model_file"}
  if same(info.get("tokenizer")) != same(tok):
    raise ConfigError(
        f"the reference run {reference_dir!r} used tokenizer {info.get('tokenizer')} but this "
        f"run uses {tok}. The reference and this model must share the tokenizer: retrain the "
        "reference with this run's vocabulary.")
  ref_cfg = rundir.recorded_model(info).with_execution_of(consumer_cfg)
  if ref_cfg.vocab_size != consumer_cfg.vocab_size:
    raise ConfigError(
        f"reference model vocab_size {ref_cfg.vocab_size} != this model's vocab_size "
        f"{consumer_cfg.vocab_size}; set ModelConfig.vocab_size to match the reference.")
  return ref_cfg


def _abstract(corpus, setup: ModelSetup, seq_len: int,
              info: Optional[dict], reference_dir: Optional[str]) -> Reference:
  """The reference's abstract parameters: the recorded model of an existing
  reference run, else gin's `reference/ModelConfig` (what a pipeline trains)."""
  if info is not None:
    ref_cfg = check_compatible(info, corpus, setup.model_cfg, reference_dir, "reference_dir")
  else:
    with gin.config_scope("reference"):
      ref_cfg = model_lib.ModelConfig().with_data_vocab(corpus.vocab_size)
    ref_cfg = ref_cfg.with_execution_of(setup.model_cfg)
  ref_model = setup.make_model(ref_cfg)
  abstract, shardings = setup.abstract_params(ref_model, seq_len)
  return Reference(ref_model, abstract, shardings, {})


def load(reference_dir: Optional[str], corpus, setup: ModelSetup, seq_len: int,
         setting: str = "train_proxy.reference_dir", step: Optional[int] = None) -> Reference:
  """The reference run's parameters (newest checkpoint unless `step`),
  restored into the shardings of `setup`'s mesh; `setting` names the gin
  setting that points at it, in errors. When only building, the abstract
  reference (`reference_dir` may then be None or a run still to come)."""
  info_path = None if reference_dir is None else files.path(reference_dir) / rundir.RUN_INFO
  if context.current().build_only:
    info = files.read_json(info_path) if info_path and files.exists(info_path) else None
    return _abstract(corpus, setup, seq_len, info, reference_dir)
  if reference_dir is None or not files.exists(reference_dir):
    raise ConfigError(f"reference run directory {reference_dir!r} does not exist. Set "
                      f"{setting} to the workdir of a finished `reference` stage (Step 1).")
  if not files.exists(info_path):
    raise ConfigError(f"{reference_dir!r} is not a reference run directory: it has no "
                      f"{rundir.RUN_INFO}. Point {setting} at the workdir of a `reference` "
                      "stage run.")
  info = files.read_json(info_path)
  ref_cfg = check_compatible(info, corpus, setup.model_cfg, reference_dir, setting)
  ref_model = setup.make_model(ref_cfg)
  abstract, shardings = setup.abstract_params(ref_model, seq_len)
  params, restored_step = ckpt_lib.restore_params(
      files.path(reference_dir) / rundir.CHECKPOINTS, abstract,
      f"the reference run {reference_dir!r}", step)
  expected = info.get("num_steps")
  if expected is not None and restored_step < expected:
    logging.warning("reference checkpoint at step %d of %d: the reference run is unfinished.",
                    restored_step, expected)
  return Reference(ref_model, params, shardings, info)
