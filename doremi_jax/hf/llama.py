"""Our Transformer (doremi_jax/model.py) as a Hugging Face `transformers`
`LlamaForCausalLM`: its config.json, generation_config.json and weights.

The architectures are the same computation: pre-norm RMSNorm (eps inside
the rsqrt, in fp32), rotary embeddings over each head's two halves (ours
rotate (x1, x2) to (x1 cos - x2 sin, x2 cos + x1 sin) with frequencies
theta^(-2i/K), Llama's `rotate_half` with `cat(freqs, freqs)` is that),
attention scaled by 1/sqrt(head_dim), SwiGLU `down(silu(gate(x)) * up(x))`,
no biases. Weight mapping (a torch Linear weight is [out, in]; our kernels
are einsum kernels [in..., out...]):

  ours                              shape      Llama                                    shape
  embed/embedding                   [V, D]     model.embed_tokens.weight                [V, D]
  layer_i/attn_norm/scale           [D]        model.layers.i.input_layernorm.weight    [D]
  layer_i/query/kernel              [D, H, K]  model.layers.i.self_attn.q_proj.weight   [H*K, D]
  layer_i/key/kernel, value/kernel  [D, H, K]  ...self_attn.k_proj.weight, v_proj       [H*K, D]
  layer_i/out/kernel                [H, K, D]  ...self_attn.o_proj.weight               [D, H*K]
  layer_i/mlp_norm/scale            [D]        ...post_attention_layernorm.weight       [D]
  layer_i/gate/kernel, up/kernel    [D, F]     ...mlp.gate_proj.weight, up_proj         [F, D]
  layer_i/down/kernel               [F, D]     ...mlp.down_proj.weight                  [D, F]
  final_norm/scale                  [D]        model.norm.weight                        [D]
  unembed/kernel (untied)           [D, V]     lm_head.weight                           [V, D]

q/k/v: the kernel reshaped to [D, H*K] (head h is columns h*K..h*K+K-1, as
Llama's `view(..., heads, head_dim)` reads them) and transposed; o: reshaped
to [H*K, D] and transposed; the MLP's: transposed. With `tied_embeddings`
our logits are `embed.attend(x) / sqrt(D)`, which Llama does not scale:
the 1/sqrt(D) is folded into model.norm.weight, and config.json sets
tie_word_embeddings (no lm_head.weight is written). With `scan_layers`,
layers/block/... holds every layer's parameter stacked on a leading layer
axis; layer i is index i. Every tensor is written in float32.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import linen as nn

from doremi_jax.config import ConfigError
from doremi_jax.model import ModelConfig

ARCHITECTURE = "LlamaForCausalLM"


def check_exportable(cfg: ModelConfig) -> None:
  """ConfigError when `transformers`' LlamaConfig cannot hold `cfg`."""
  if cfg.d_model % cfg.num_heads:
    raise ConfigError(
        f"transformers' LlamaConfig requires hidden_size to be a multiple of "
        f"num_attention_heads; this model has d_model={cfg.d_model} and "
        f"num_heads={cfg.num_heads}, so it has no LlamaForCausalLM form.")


def config(cfg: ModelConfig, bos_id: int, eos_id: int) -> dict:
  """config.json of the `LlamaForCausalLM` equal to `cfg`'s model. The
  rotary base is written both ways transformers reads it (v5's
  `rope_parameters`, v4's `rope_theta`). No pad_token_id: our pad is the
  BOS id 0, which transformers would mask out of a prompt."""
  check_exportable(cfg)
  return {
      "architectures": [ARCHITECTURE],
      "model_type": "llama",
      "vocab_size": int(cfg.vocab_size),
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_len,
      "rms_norm_eps": float(cfg.norm_eps),
      "rope_theta": float(cfg.rope_theta),
      "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
      "attention_bias": False,
      "attention_dropout": 0.0,
      "mlp_bias": False,
      "tie_word_embeddings": bool(cfg.tied_embeddings),
      "bos_token_id": bos_id,
      "eos_token_id": eos_id,
      "pad_token_id": None,
      "initializer_range": 0.02,
      "pretraining_tp": 1,
      "use_cache": True,
      "dtype": "float32",
  }


def generation_config(bos_id: int, eos_id: int) -> dict:
  """generation_config.json: greedy by default, stop at EOS, and pad finished
  sequences of a batch with EOS (not with 0, the BOS every prompt starts with)."""
  return {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id,
          "do_sample": False}


def layer_params(cfg: ModelConfig, params) -> list:
  """Each layer's parameters ({'query': {'kernel': ...}, ...}), from the
  per-layer `layer_i` trees or the scanned `layers/block` stack."""
  if cfg.scan_layers:
    stacked = params["layers"]["block"]
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(cfg.num_layers)]
  return [params[f"layer_{i}"] for i in range(cfg.num_layers)]


def _linear(kernel, n_in_axes: int) -> np.ndarray:
  """A torch Linear weight [out, in] of an einsum kernel whose first
  `n_in_axes` axes are its inputs."""
  k = np.asarray(kernel, np.float32)
  n_in = int(np.prod(k.shape[:n_in_axes]))
  return np.ascontiguousarray(k.reshape(n_in, -1).T)


def _vector(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def layer_tensors(i: int, layer: dict) -> dict:
  """The `model.layers.i.*` tensors of one layer's parameters."""
  p = f"model.layers.{i}."
  return {
      p + "input_layernorm.weight": _vector(layer["attn_norm"]["scale"]),
      p + "self_attn.q_proj.weight": _linear(layer["query"]["kernel"], 1),
      p + "self_attn.k_proj.weight": _linear(layer["key"]["kernel"], 1),
      p + "self_attn.v_proj.weight": _linear(layer["value"]["kernel"], 1),
      p + "self_attn.o_proj.weight": _linear(layer["out"]["kernel"], 2),
      p + "post_attention_layernorm.weight": _vector(layer["mlp_norm"]["scale"]),
      p + "mlp.gate_proj.weight": _linear(layer["gate"]["kernel"], 1),
      p + "mlp.up_proj.weight": _linear(layer["up"]["kernel"], 1),
      p + "mlp.down_proj.weight": _linear(layer["down"]["kernel"], 1),
  }


def tensors(cfg: ModelConfig, params) -> dict:
  """{name: float32 array} of the `LlamaForCausalLM` state dict (the module
  docstring's mapping). `params` may hold jax arrays or flax boxed ones."""
  params = nn.unbox(params)
  out = {"model.embed_tokens.weight": _vector(params["embed"]["embedding"])}
  for i, layer in enumerate(layer_params(cfg, params)):
    out.update(layer_tensors(i, layer))
  norm = _vector(params["final_norm"]["scale"])
  if cfg.tied_embeddings:
    norm = (norm / np.float32(math.sqrt(cfg.d_model))).astype(np.float32)
  else:
    out["lm_head.weight"] = _linear(params["unembed"]["kernel"], 1)
  out["model.norm.weight"] = norm
  return out


def write_safetensors(path: str, named: dict) -> None:
  """model.safetensors of `named` arrays, with the metadata transformers
  expects of a PyTorch checkpoint (no torch needed to write it)."""
  from safetensors.numpy import save_file
  save_file(named, path, metadata={"format": "pt"})


def num_params(named: dict) -> int:
  return int(sum(a.size for a in named.values()))
