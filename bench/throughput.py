r"""Step throughput, MFU against this machine's measured matmul peak, the
Group-DRO overhead and the input pipeline's headroom, all in one run.

    python bench/throughput.py [--d_model 256 --num_layers 4 --seq_len 256 --batch 16]

Prints one JSON object and a markdown table. MFU is model FLOPs per second
divided by the peak of a dense matmul measured in the same run, in the same
dtype as the model's compute. The model FLOPs of a step are the step
program's own `StepProgram.flops_per_token` (`doremi_jax.steps`, the one
convention shared with `compile_check`) times its tokens: for the LM step
`ModelConfig.flops_per_token` (6 x non-embedding-input parameters + the
attention matmuls, PaLM convention); for the Group-DRO step the proxy's plus
the reference forward's (a third of the reference's), plus a second proxy
forward with gradient accumulation (not used here). This script has no FLOPs
formula of its own.

The LM and Group-DRO steps are `steps.lm_program` and `steps.dro_program`
(the programs the stages train), run on batches of random token ids and
domain ids made with numpy. The input-pipeline measurement reads the
built-in synthetic corpus's packed rows by index, as training does; neither
needs TensorFlow or seqio (e.g. on a GPU machine without them).
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _emit import emit  # noqa: E402


def matmul_rate(dtype, m: int, k: int, n: int, repeats: int = 10) -> float:
  """FLOP/s of the best of `repeats` [m, k] x [k, n] matmuls (2mkn flops)."""
  f = jax.jit(lambda a, b: a @ b)
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (m, k), dtype)
  b = jax.random.normal(k2, (k, n), dtype)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * m * k * n / best


def time_steps(program, state, batch, steps: int):
  """Seconds per step of a `StepProgram` (median over `steps` after one
  compile+warmup step)."""
  state, m = program(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, m = program(state, batch)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t)
  return float(np.median(times)), state


def input_pipeline_seconds(args, num_domains: int, vocab_size: int):
  """(seconds per batch of the stratified loader alone, as Step 2 uses it,
  None): packed rows read by index, no TensorFlow or seqio (the second
  item, the reason a measurement was skipped, is kept for the JSON's
  `input_pipeline_skipped`)."""
  from doremi_jax.data import loader as loader_lib, synthetic, synthetic_tasks
  corpus = synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=args.seq_len))
  assert (corpus.num_domains, corpus.vocab_size) == (num_domains, vocab_size), \
      "the numpy batches must match the synthetic corpus's domains and vocabulary"
  loader = loader_lib.BatchLoader(corpus, loader_lib.StratifiedAssignment(num_domains, 0),
                                  args.batch, args.seq_len, seed=0)
  try:
    for _ in range(10):
      loader.next()
    t = time.perf_counter()
    for _ in range(args.loader_batches):
      loader.next()
    return (time.perf_counter() - t) / args.loader_batches, None
  finally:
    loader.close()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--num_layers", type=int, default=4)
  p.add_argument("--num_heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--mlp_dim", type=int, default=2048)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--compute_dtype", default="float32")
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--loader_batches", type=int, default=200)
  p.add_argument("--json_out", default=None)
  args = p.parse_args()

  from doremi_jax import doremi, model as model_lib, state as state_lib, steps as steps_lib
  from doremi_jax import reference as reference_lib
  from doremi_jax.data import synthetic  # numpy only: the built-in corpus's sizes

  # The built-in synthetic corpus's vocabulary and domains (batches are numpy).
  vocab_size, k = synthetic.VOCAB_SIZE, len(synthetic.DOMAINS)
  model_cfg = model_lib.ModelConfig(
      d_model=args.d_model, num_layers=args.num_layers, num_heads=args.num_heads,
      head_dim=args.head_dim, mlp_dim=args.mlp_dim, max_len=args.seq_len,
      compute_dtype=args.compute_dtype)
  cfg = state_lib.TrainConfig(global_batch_size=args.batch, seq_len=args.seq_len)
  setup = state_lib.build_setup(vocab_size, cfg, model_cfg=model_cfg)
  mcfg = setup.model_cfg
  tokens = args.batch * args.seq_len

  # The two step programs the stages train: the plain LM step (reference /
  # main) and the Group-DRO step (proxy) against a reference of the same size.
  lm = steps_lib.lm_program(setup, k, 1, args.seq_len)
  ref_model = setup.make_model(mcfg)
  _, ref_shardings = setup.abstract_params(ref_model, args.seq_len)
  ref_params = state_lib.init_state(setup, 1).params
  dro = steps_lib.dro_program(setup, reference_lib.Reference(ref_model, ref_params,
                                                             ref_shardings, {}),
                              k, 1, doremi.DROConfig(), np.full(k, 1.0 / k), args.seq_len)
  fpt = lm.flops_per_token
  flops_per_token = int(fpt) if float(fpt).is_integer() else fpt

  n = args.matmul_n
  peak = matmul_rate(jnp.dtype(args.compute_dtype), n, n, n)
  dt = jnp.dtype(args.compute_dtype)
  hk = args.num_heads * args.head_dim
  # The model's matmuls at their real shapes (tokens x in -> out).
  shaped = {
      "qkv/out projection [T,d]x[d,HK]": matmul_rate(dt, tokens, args.d_model, hk),
      "MLP up [T,d]x[d,F]": matmul_rate(dt, tokens, args.d_model, args.mlp_dim),
      "MLP down [T,F]x[F,d]": matmul_rate(dt, tokens, args.mlp_dim, args.d_model),
  }

  rng = np.random.default_rng(0)
  batch = state_lib.to_global({
      "targets": rng.integers(2, vocab_size, (args.batch, args.seq_len), dtype=np.int32),
      "segment_ids": np.ones((args.batch, args.seq_len), np.int32),
      "domain_ids": (np.arange(args.batch) % k).astype(np.int32)}, setup.batch_shardings)

  lm_s, _ = time_steps(lm, lm.init(0), batch, args.steps)
  dro_s, _ = time_steps(dro, dro.init(0), batch, args.steps)

  # Input pipeline: batches/s of the loader alone (stratified, as Step 2).
  loader_s, skipped = input_pipeline_seconds(args, k, vocab_size)

  lm_flops = lm.flops_per_token * tokens / lm_s
  dro_model_flops = dro.flops_per_token * tokens
  result = {
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                  "devices": [str(d) for d in jax.devices()], "jax": jax.__version__},
      "config": vars(args) | {"num_params": mcfg.num_params(), "tokens_per_step": tokens,
                              "flops_per_token": flops_per_token},
      "matmul_peak_flops": peak,
      "model_shaped_matmul_flops": shaped,
      "lm_step": {"seconds": lm_s, "tokens_per_s": tokens / lm_s, "model_flops_per_s": lm_flops,
                  "mfu": lm_flops / peak},
      "dro_step": {"seconds": dro_s, "tokens_per_s": tokens / dro_s,
                   "model_flops_per_s": dro_model_flops / dro_s,
                   "mfu": dro_model_flops / dro_s / peak},
      "dro_overhead": dro_s / lm_s,
      "input_pipeline": None if loader_s is None else {
          "seconds_per_batch": loader_s, "examples_per_s": args.batch / loader_s,
          "step_consumes_examples_per_s": args.batch / min(lm_s, dro_s),
          "headroom": min(lm_s, dro_s) / loader_s},
  }
  if skipped:
    result["input_pipeline_skipped"] = skipped
  rows = [
      ("matmul peak (measured, %s, n=%d)" % (args.compute_dtype, args.matmul_n),
       f"{peak / 1e9:.1f} GFLOP/s"),
      *[(f"matmul at model shape {name}", f"{r / 1e9:.1f} GFLOP/s ({100 * r / peak:.0f}% of peak)")
        for name, r in shaped.items()],
      ("model", f"{mcfg.num_params() / 1e6:.2f}M params, d {args.d_model}, {args.num_layers} "
                f"layers, seq {args.seq_len}, batch {args.batch}"),
      ("model FLOPs/token (6N + attention)", f"{lm.flops_per_token / 1e6:.1f}M"),
      ("LM step", f"{lm_s * 1e3:.0f} ms, {tokens / lm_s / 1e3:.1f}k tok/s, "
                  f"MFU {100 * lm_flops / peak:.0f}%"),
      ("Group-DRO step", f"{dro_s * 1e3:.0f} ms, {tokens / dro_s / 1e3:.1f}k tok/s, "
                         f"MFU {100 * result['dro_step']['mfu']:.0f}%"),
      ("DRO overhead (DRO step / LM step)", f"{dro_s / lm_s:.3f} (floor ~4/3)"),
      ("input pipeline", "not measured: TensorFlow/seqio not importable" if loader_s is None else
       f"{args.batch / loader_s:.0f} examples/s vs {args.batch / min(lm_s, dro_s):.0f} "
       f"consumed: {result['input_pipeline']['headroom']:.0f}x headroom"),
  ]
  emit(result, ["measure", "value"], rows, args.json_out)


if __name__ == "__main__":
  main()
