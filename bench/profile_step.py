r"""Where the LM train step's time goes on this backend: a jax.profiler trace
of 3 steps at the throughput benchmark's size, summed per XLA op kind.

    python bench/profile_step.py

The step is `doremi_jax.steps.lm_program`'s, on numpy batches of random
token ids (no TensorFlow or seqio needed, e.g. on a GPU machine).

Op durations overlap across the backend's threads, so the percentages are
shares of op time, not of wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main(steps: int = 3, d_model: int = 512, num_layers: int = 4, num_heads: int = 8,
         head_dim: int = 64, mlp_dim: int = 2048, seq_len: int = 256, batch: int = 8):
  """Profiles `steps` LM steps (`steps.lm_program`, the step the reference and
  main stages train) on numpy batches of random token ids: no TensorFlow or
  seqio. The command line runs the defaults (the throughput benchmark's
  size); smaller sizes are for smoke tests."""
  from doremi_jax import model as model_lib, state as state_lib, steps as steps_lib
  from doremi_jax.data import synthetic  # numpy only: the built-in corpus's sizes
  vocab_size, k = synthetic.VOCAB_SIZE, len(synthetic.DOMAINS)
  mc = model_lib.ModelConfig(d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                             head_dim=head_dim, mlp_dim=mlp_dim, max_len=seq_len)
  setup = state_lib.build_setup(
      vocab_size, state_lib.TrainConfig(global_batch_size=batch, seq_len=seq_len), model_cfg=mc)
  program = steps_lib.lm_program(setup, k, 1, seq_len)
  state = program.init(0)
  rng = np.random.default_rng(0)
  global_batch = state_lib.to_global(
      {"targets": rng.integers(2, vocab_size, (batch, seq_len), dtype=np.int32),
       "segment_ids": np.ones((batch, seq_len), np.int32),
       "domain_ids": (np.arange(batch) % k).astype(np.int32)}, setup.batch_shardings)
  state, m = program(state, global_batch)
  jax.block_until_ready(m)
  logdir = tempfile.mkdtemp(prefix="doremi_profile_")
  jax.profiler.start_trace(logdir, create_perfetto_trace=True)
  for _ in range(steps):
    state, m = program(state, global_batch)
    jax.block_until_ready((state, m))
  jax.profiler.stop_trace()
  path = glob.glob(os.path.join(logdir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
  trace = json.load(gzip.open(path))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_kind = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or "dur" not in e or name.startswith(("ThunkExecutor", "$")):
      continue
    per_kind[re.sub(r"[.\d]+$", "", name)] += e["dur"]
  total = sum(per_kind.values())
  rows = [{"op_kind": k, "ms_per_step": v / 1e3 / steps, "share": v / total}
          for k, v in per_kind.most_common(12)]
  print(json.dumps({"backend": jax.default_backend(), "trace": path, "ops": rows}, indent=2))
  print("\n| XLA op kind | ms/step (op time) | share of op time |\n|---|---|---|")
  for r in rows:
    print(f"| {r['op_kind']} | {r['ms_per_step']:.1f} | {100 * r['share']:.1f}% |")


if __name__ == "__main__":
  main()
