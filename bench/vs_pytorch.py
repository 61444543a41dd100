r"""Our LM train step against the PyTorch peers a researcher would otherwise
run, at equal shape and parameter count, alternating in one run: Hugging
Face `GPT2LMHeadModel` + `torch.optim.AdamW`, and `LlamaForCausalLM` + AdamW
with our own architecture (RMSNorm, rotary, SwiGLU, untied embeddings, no
biases, our MLP width: the same parameters as ours, exactly).

    pip install -e ".[bench]"     # torch and transformers (never package deps)
    python bench/vs_pytorch.py [--shapes small medium] [--json_out FILE]

Shapes (vocabulary 128 unless said, batch x sequence tokens per step):

  small      d_model 256, 4 layers, 4 heads x 64, sequence 256, batch 16
  medium     d_model 512, 4 layers, 8 heads x 64, sequence 256, batch 8
  proxy280m  the paper's proxy (gin/models/280m.gin: d_model 1024, 16 layers,
             16 heads x 64, vocabulary 32768) at sequence 1024, batch 16; for
             a GPU: --shapes proxy280m --dtype bfloat16

On a GPU (JAX's backend 'gpu') the peer runs on CUDA with its fused AdamW
and PyTorch's SDPA attention; --dtype bfloat16 runs both sides' matmuls in
bf16 (ours: ModelConfig.compute_dtype, with cuDNN flash attention; theirs:
autocast).

GPT-2 has a 4 d MLP (two matrices), learned positions, tied embeddings and
biases; ours a SwiGLU MLP (three matrices), rotary positions, untied
embeddings and no biases. Our MLP width is chosen so that the parameter
counts match (both are printed). Both steps are a full training step: forward,
backward, gradient clipping at global norm 1.0 and the AdamW update, dropout
off. Each round times `--steps` steps
of ours, then of each peer's, after warm-up; the figure is the median over
rounds of tokens/s, and each ratio is taken within each round (ours /
theirs) so that machine noise hits both sides alike. The JSON names the
CPU model (`/proc/cpuinfo`): figures from different hosts differ.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from _emit import emit  # noqa: E402

VOCAB = 128
SHAPES = {
    "small": dict(d_model=256, num_layers=4, num_heads=4, head_dim=64, seq_len=256, batch=16),
    "medium": dict(d_model=512, num_layers=4, num_heads=8, head_dim=64, seq_len=256, batch=8),
    # the paper's proxy size (gin/models/280m.gin) at sequence 1024: for a GPU
    "proxy280m": dict(d_model=1024, num_layers=16, num_heads=16, head_dim=64, seq_len=1024,
                      batch=16, vocab=32768),
}


def vocab(shape: dict) -> int:
  return shape.get("vocab", VOCAB)


def gpt2_params(d: int, layers: int, seq: int, vocab: int) -> int:
  """GPT2LMHeadModel's parameter count (tied head; biases; two LayerNorms per
  block and a final one)."""
  block = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d
  return layers * block + vocab * d + seq * d + 2 * d


def matched_mlp_dim(shape: dict) -> int:
  """Our SwiGLU width whose parameter count is closest to GPT-2's."""
  from doremi_jax import model as model_lib
  target = gpt2_params(shape["d_model"], shape["num_layers"], shape["seq_len"], vocab(shape))
  def count(f):
    return model_lib.ModelConfig(vocab_size=vocab(shape), d_model=shape["d_model"],
                                 num_layers=shape["num_layers"], num_heads=shape["num_heads"],
                                 head_dim=shape["head_dim"], mlp_dim=f).num_params()
  base, per = count(1), count(2) - count(1)
  return max(1, round((target - base) / per) + 1)


def jax_step(shape: dict, model_overrides: dict):
  """(step(), num_params) for our LM step program at `shape`."""
  from doremi_jax import model as model_lib, state as state_lib, steps as steps_lib
  model_cfg = model_lib.ModelConfig(
      vocab_size=vocab(shape), d_model=shape["d_model"], num_layers=shape["num_layers"],
      num_heads=shape["num_heads"], head_dim=shape["head_dim"], mlp_dim=matched_mlp_dim(shape),
      max_len=shape["seq_len"], **model_overrides)
  cfg = state_lib.TrainConfig(global_batch_size=shape["batch"], seq_len=shape["seq_len"])
  setup = state_lib.build_setup(vocab(shape), cfg, model_cfg=model_cfg, devices=jax.devices()[:1])
  program = steps_lib.lm_program(setup, 1, 1, shape["seq_len"])
  rng = np.random.default_rng(0)
  batch = state_lib.to_global({
      "targets": rng.integers(1, vocab(shape), (shape["batch"], shape["seq_len"]), dtype=np.int32),
      "segment_ids": np.ones((shape["batch"], shape["seq_len"]), np.int32),
      "domain_ids": np.zeros(shape["batch"], np.int32)}, setup.batch_shardings)
  box = {"state": program.init(0)}

  def step():
    box["state"], m = program(box["state"], batch)
    jax.block_until_ready((box["state"], m))
  return step, setup.model_cfg.num_params()


def torch_train_step(model, shape: dict, device: str, dtype: str):
  """(step(), num_params) of a full AdamW training step of a `transformers`
  causal LM on random ids of `shape` on `device` ('cpu' or 'cuda'); bf16
  through autocast (fp32 master weights, as ours)."""
  import contextlib
  import torch
  model = model.to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                          fused=device == "cuda")
  ids = torch.randint(1, vocab(shape), (shape["batch"], shape["seq_len"]), device=device)
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bfloat16" \
      else contextlib.nullcontext

  def step():
    with autocast():
      loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    # Our step clips at OptimizerConfig.grad_clip_norm = 1.0; so does this one
    # (as Hugging Face's Trainer does by default).
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
      torch.cuda.synchronize()
  return step, sum(p.numel() for p in model.parameters())


def torch_step(shape: dict, threads: int, device: str, dtype: str):
  """(step(), num_params) for GPT2LMHeadModel + AdamW at `shape`."""
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  cfg = GPT2Config(vocab_size=vocab(shape), n_positions=shape["seq_len"],
                   n_embd=shape["d_model"], n_layer=shape["num_layers"],
                   n_head=shape["num_heads"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                   attn_implementation="sdpa")
  return torch_train_step(GPT2LMHeadModel(cfg), shape, device, dtype)


def llama_step(shape: dict, threads: int, device: str, dtype: str):
  """(step(), num_params) for LlamaForCausalLM + AdamW with our block at
  `shape` (our MLP width, untied, no biases): the peer with our own
  architecture."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=vocab(shape), hidden_size=shape["d_model"],
                    intermediate_size=matched_mlp_dim(shape),
                    num_hidden_layers=shape["num_layers"],
                    num_attention_heads=shape["num_heads"],
                    num_key_value_heads=shape["num_heads"], head_dim=shape["head_dim"],
                    max_position_embeddings=shape["seq_len"], tie_word_embeddings=False,
                    attention_bias=False, mlp_bias=False, attn_implementation="sdpa")
  return torch_train_step(LlamaForCausalLM(cfg), shape, device, dtype)


def require_torch():
  """(torch, transformers), or exit 2 naming the bench extra."""
  try:
    import torch
    import transformers
  except ImportError as e:
    print(f"error: {e}; install the bench extra: pip install -e \".[bench]\"", file=sys.stderr)
    sys.exit(2)
  return torch, transformers


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), or the platform's processor."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def time_steps(step, n: int) -> float:
  t = time.perf_counter()
  for _ in range(n):
    step()
  return (time.perf_counter() - t) / n


PEERS = {"gpt2": torch_step, "llama": llama_step}


def compare(name: str, shape: dict, args, model_overrides: dict) -> dict:
  """Ours against every peer at `shape`: each round times ours, then each
  peer; a ratio (ours' tokens/s over the peer's) is taken within a round."""
  ours, ours_params = jax_step(shape, model_overrides)
  peers = {p: PEERS[p](shape, args.threads, args.torch_device, args.dtype) for p in args.peers}
  for _ in range(args.warmup):
    ours()
    for step, _ in peers.values():
      step()
  tokens = shape["batch"] * shape["seq_len"]
  rounds = []
  for _ in range(args.rounds):
    r = {"ours_s": time_steps(ours, args.steps)}
    for p, (step, _) in peers.items():
      r[f"{p}_s"] = time_steps(step, args.steps)
      r[f"ratio_{p}"] = r[f"{p}_s"] / r["ours_s"]
    rounds.append(r)
  out = {
      "shape": shape | {"vocab": vocab(shape), "mlp_dim_ours": matched_mlp_dim(shape),
                        "mlp_dim_gpt2": 4 * shape["d_model"]},
      "params": {"ours": ours_params, **{p: n for p, (_, n) in peers.items()}},
      "tokens_per_step": tokens,
      "ours_tokens_per_s": tokens / float(np.median([r["ours_s"] for r in rounds])),
      "rounds": rounds,
  }
  for p in peers:
    ratios = [r[f"ratio_{p}"] for r in rounds]
    out[f"{p}_tokens_per_s"] = tokens / float(np.median([r[f"{p}_s"] for r in rounds]))
    out[f"ratio_{p}_median"] = float(np.median(ratios))
    out[f"ratio_{p}_range"] = [float(min(ratios)), float(max(ratios))]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", nargs="+", default=["small", "medium"], choices=list(SHAPES))
  p.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
  p.add_argument("--rounds", type=int, default=5, help="alternations ours/theirs")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="torch intra-op threads (JAX's CPU backend uses all cores)")
  p.add_argument("--attention", default=None, help="ModelConfig.attention for ours")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="compute dtype of both (ours: ModelConfig.compute_dtype; theirs: "
                      "autocast); parameters and optimizer state stay fp32 on both sides")
  p.add_argument("--torch_device", default=None, choices=["cpu", "cuda"],
                 help="default: cuda when JAX's backend is a GPU, else cpu")
  p.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS),
                 help="gpt2: GPT2LMHeadModel; llama: LlamaForCausalLM with our architecture")
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  torch, transformers = require_torch()
  if args.torch_device is None:
    args.torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  overrides = {"compute_dtype": args.dtype}
  if args.attention is not None:
    overrides["attention"] = args.attention
  results = {name: compare(name, SHAPES[name], args, overrides) for name in args.shapes}
  result = {
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "cpu_model": cpu_model(),
                  "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                  "jax": jax.__version__, "torch": torch.__version__,
                  "transformers": transformers.__version__, "torch_threads": args.threads},
      "config": vars(args),
      "results": results,
  }
  rows = []
  for name, r in results.items():
    s = r["shape"]
    for peer in args.peers:
      rows.append((f"{name}: d {s['d_model']}, {s['num_layers']} layers, {s['num_heads']}x"
                   f"{s['head_dim']}, seq {s['seq_len']}, batch {s['batch']}", peer,
                   f"{r['params']['ours'] / 1e6:.2f}M / {r['params'][peer] / 1e6:.2f}M",
                   f"{r['ours_tokens_per_s'] / 1e3:.2f}k", f"{r[f'{peer}_tokens_per_s'] / 1e3:.2f}k",
                   f"**{r[f'ratio_{peer}_median']:.2f}x** ({r[f'ratio_{peer}_range'][0]:.2f}-"
                   f"{r[f'ratio_{peer}_range'][1]:.2f})"))
  emit(result, ["shape", "peer", "params (ours / peer)", "ours tok/s", "peer + AdamW tok/s",
                "ours / peer (range over rounds)"], rows, args.json_out)


if __name__ == "__main__":
  main()
