r"""What training a swarm in one program buys: tokens/s of N small models
trained together (`swarm.program.swarm_program`, one jitted step over a
leading member axis) against the same N models trained one after another
(`steps.lm_program`, the main stage's step, the same compiled program for
every model), measured alternating in one process. Issue 15's goal: at
least 2x for N = 16 on 2 CPU cores.

    python bench/swarm_throughput.py [--members 16 --batch 32 --seq_len 128]

The default model and batch are the swarm quickstart's (gin/models/tiny.gin,
32 sequences of 128 tokens per member and step); `--batch_sizes` repeats the
comparison for other per-member batches.

Each round times `--steps` swarm steps, then `--steps` steps of each of the
N single models in turn (the sequential runs' work for the same tokens); a
ratio is the median over rounds of sequential time / swarm time within each
round (with the middle half of the rounds' ratios: the machine's noise).
Both use the same numpy batches; the loader is not timed (a swarm and N
separate runs read the same examples). The members' parameters after the
timed steps are checked against the single models' (float32 tolerance).
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


def measure(args, batch_size: int) -> dict:
  from doremi_jax import model as model_lib, state as state_lib, steps as steps_lib
  from doremi_jax.data import synthetic
  from doremi_jax.swarm import program as swarm_lib

  vocab, k, n = synthetic.VOCAB_SIZE, len(synthetic.DOMAINS), args.members
  model_cfg = model_lib.ModelConfig(d_model=args.d_model, num_layers=args.num_layers,
                                    num_heads=args.num_heads, head_dim=args.head_dim,
                                    mlp_dim=args.mlp_dim, max_len=args.seq_len)
  cfg = state_lib.TrainConfig(global_batch_size=batch_size, seq_len=args.seq_len,
                              num_steps=1000)
  seeds = list(range(n))
  swarm = swarm_lib.swarm_program(
      swarm_lib.swarm_setup(vocab, cfg, n, model_cfg=model_cfg), k, 1, args.seq_len, seeds)
  single = steps_lib.lm_program(state_lib.build_setup(vocab, cfg, model_cfg=model_cfg), k, 1,
                                args.seq_len)
  rng = np.random.default_rng(0)
  host = {"targets": rng.integers(2, vocab, (n, batch_size, args.seq_len), dtype=np.int32),
          "segment_ids": np.ones((n, batch_size, args.seq_len), np.int32),
          "domain_ids": rng.integers(0, k, (n, batch_size), dtype=np.int32)}
  swarm_batch = swarm.global_batch(host)
  single_batches = [single.global_batch({key: v[m] for key, v in host.items()})
                    for m in range(n)]
  sw_state = swarm.init()
  states = [single.init(s) for s in seeds]

  def run_swarm(state, steps):
    for _ in range(steps):
      state, met = swarm(state, swarm_batch)
    jax.block_until_ready((state, met))
    return state

  def run_sequential(states, steps):
    out = []
    for m, st in enumerate(states):
      for _ in range(steps):
        st, met = single(st, single_batches[m])
      out.append(st)
    jax.block_until_ready((out, met))
    return out

  sw_state = run_swarm(sw_state, 1)          # compile
  states = run_sequential(states, 1)
  t_swarm, t_seq = [], []
  for _ in range(args.rounds):
    t = time.perf_counter()
    sw_state = run_swarm(sw_state, args.steps)
    t_swarm.append(time.perf_counter() - t)
    t = time.perf_counter()
    states = run_sequential(states, args.steps)
    t_seq.append(time.perf_counter() - t)
  diff = max(float(np.max(np.abs(np.asarray(a)[m] - np.asarray(b))))
             for m, st in enumerate(states)
             for a, b in zip(jax.tree.leaves(sw_state.params), jax.tree.leaves(st.params)))
  ratio = np.array(t_seq) / np.array(t_swarm)
  tokens = n * batch_size * args.seq_len * args.steps
  return {"batch": batch_size,
          "swarm_tokens_per_second": float(tokens / np.median(t_swarm)),
          "sequential_tokens_per_second": float(tokens / np.median(t_seq)),
          "speedup": float(np.median(ratio)),
          "speedup_interquartile": [float(np.percentile(ratio, 25)),
                                    float(np.percentile(ratio, 75))],
          "max_param_difference_after_timing": diff,
          "num_params_per_member": model_cfg.with_data_vocab(vocab).num_params()}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--members", type=int, default=16)
  p.add_argument("--d_model", type=int, default=64)
  p.add_argument("--num_layers", type=int, default=2)
  p.add_argument("--num_heads", type=int, default=4)
  p.add_argument("--head_dim", type=int, default=16)
  p.add_argument("--mlp_dim", type=int, default=256)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 8])
  p.add_argument("--steps", type=int, default=2, help="steps per model per round")
  p.add_argument("--rounds", type=int, default=15)
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  results = [measure(args, b) for b in args.batch_sizes]
  result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "backend": jax.default_backend(), "devices": jax.device_count(),
                        "jax": jax.__version__},
            "config": vars(args), "results": results}
  rows = [(f"{args.members} members, {r['batch']} x {args.seq_len} tokens each",
           f"{r['swarm_tokens_per_second'] / 1e3:.1f}k", f"{r['sequential_tokens_per_second'] / 1e3:.1f}k",
           f"{r['speedup']:.2f}x ({r['speedup_interquartile'][0]:.2f}-"
           f"{r['speedup_interquartile'][1]:.2f})")
          for r in results]
  emit(result, ["swarm step", "swarm tok/s", "sequential tok/s", "swarm / sequential"], rows,
       args.json_out)


if __name__ == "__main__":
  main()
