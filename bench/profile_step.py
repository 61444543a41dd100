r"""Where the LM train step's time goes on this backend: a jax.profiler trace
of 3 steps at the throughput benchmark's size, summed per XLA op kind.

    python bench/profile_step.py

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


def main(steps: int = 3):
  from doremi_jax import model as model_lib, train
  from doremi_jax.data import corpus as corpus_lib, synthetic
  corpus = corpus_lib.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=256))
  mc = model_lib.ModelConfig(d_model=512, num_layers=4, num_heads=8, head_dim=64, mlp_dim=2048,
                             max_len=256)
  setup = train.build_setup(corpus, train.TrainConfig(global_batch_size=8, seq_len=256),
                            model_cfg=mc)
  step = train.make_reference_step(setup, corpus.num_domains, 1)
  state = train.init_state(setup, 0)
  rng = np.random.default_rng(0)
  batch = train.to_global({"targets": rng.integers(2, 128, (8, 256), dtype=np.int32),
                           "domain_ids": (np.arange(8) % 5).astype(np.int32)},
                          setup.batch_shardings)
  state, m = step(state, batch)
  jax.block_until_ready(m)
  logdir = tempfile.mkdtemp(prefix="doremi_profile_")
  jax.profiler.start_trace(logdir, create_perfetto_trace=True)
  for _ in range(steps):
    state, m = step(state, batch)
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
