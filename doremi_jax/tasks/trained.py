"""A trained model read back from its run directory, for evaluation after
training (the lm-eval adapter, the Hugging Face export, `evaluate_tasks`).

`load(run_dir)` takes a stage's run directory (the one holding
run_info.json and checkpoints/), or a pipeline's (its DoReMi main model,
`main_doremi/`), and restores the newest checkpoint's parameters (or
`step`'s), replicated on this host's devices, with the model the run
recorded and the vocabulary it tokenized with.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import files
from doremi_jax import model as model_lib
from doremi_jax import rundir
from doremi_jax.config import ConfigError
from doremi_jax.data import vocab as vocab_lib


@dataclasses.dataclass
class Trained:
  """A run's model (`model.apply({'params': params}, tokens, positions,
  segment_ids)`), its parameters, vocabulary and training sequence length."""
  run_dir: str
  step: int
  model_cfg: model_lib.ModelConfig
  model: model_lib.Transformer
  params: Any
  vocabulary: vocab_lib.Vocabulary
  seq_len: int
  info: dict


def vocabulary_of(info: dict, where: str) -> vocab_lib.Vocabulary:
  """The vocabulary a run's run_info records (`rundir.describe_vocabulary`)."""
  tok = info.get("tokenizer") or {}
  cls = tok.get("class")
  if cls == "ByteVocabulary":
    return vocab_lib.ByteVocabulary()
  if cls == "SyntheticVocabulary":
    return vocab_lib.SyntheticVocabulary()
  if cls == "SentencePieceVocabulary":
    path = tok.get("sentencepiece_model_file")
    if not path or not files.exists(path):
      raise ConfigError(f"{where} was tokenized with the SentencePiece model {path!r}, which "
                        "is not there any more; put the model file back at that path.")
    return vocab_lib.SentencePieceVocabulary(path)
  raise ConfigError(f"{where} records no tokenizer this version can rebuild ({tok!r}).")


def run_directory(run_dir: str) -> str:
  """`run_dir` itself when it is a stage's run, a pipeline's DoReMi main
  model when it is a pipeline; ConfigError otherwise."""
  base = files.path(run_dir)
  if files.exists(base / rundir.RUN_INFO):
    return str(base)
  if files.exists(base / rundir.MAIN_MODEL_DOREMI / rundir.RUN_INFO):
    return str(base / rundir.MAIN_MODEL_DOREMI)
  raise ConfigError(f"{run_dir!r} is not a run directory (no {rundir.RUN_INFO}); pass the "
                    "workdir of a finished stage, or of a pipeline (its DoReMi main model).")


def load(run_dir: str, step: Optional[int] = None) -> Trained:
  """The run's parameters at `step` (newest when None), on this host's
  default device, with its model and vocabulary (see the module docstring)."""
  where = run_directory(run_dir)
  info = files.read_json(files.path(where) / rundir.RUN_INFO)
  cfg = rundir.recorded_model(info)
  model = model_lib.Transformer(cfg)
  seq_len = int(info.get("seq_len", cfg.max_len))
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, seq_len), np.int32))))["params"]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract)
  params, restored = ckpt_lib.restore_params(files.path(where) / rundir.CHECKPOINTS, abstract,
                                             f"the run {where!r}", step)
  return Trained(where, restored, cfg, model, params, vocabulary_of(info, where), seq_len, info)
