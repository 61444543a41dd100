r"""What each of the model's CPU-layout choices buys: our LM step as it is,
and with one choice at a time put back to the plain formulation, alternating
in one process.

    python bench/cpu_ablation.py [--shape small] [--json_out FILE]

Variants (each is the current step with one thing replaced, traced while the
replacement is in place):

  current            the model as it is
  plain_projections  every projection as `jnp.einsum` over [batch, length, ...]
                     (not merged into one token axis: `model.token_matmul`)
  plain_attention    `jax.nn.dot_product_attention(implementation='xla')`
                     (not `attention.xla_attention`)
  one_query_block    `attention.xla_attention` without skipping the causal
                     mask's upper blocks (`attention.query_blocks` = 1)

Each round times `--steps` steps of every variant in turn; the figure is the
median over rounds of current / variant step time, within each round, so
that machine noise hits all variants alike. Shapes are bench/vs_pytorch.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _emit import emit  # noqa: E402
import vs_pytorch  # noqa: E402

from doremi_jax import attention, model  # noqa: E402


@contextlib.contextmanager
def _replaced(module, name, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


VARIANTS = {
    "current": contextlib.nullcontext,
    "plain_projections": lambda: _replaced(model, "token_matmul",
                                           lambda eqn, x, w: jnp.einsum(eqn, x, w)),
    "plain_attention": lambda: _replaced(
        attention, "xla_attention",
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                     implementation="xla")),
    "one_query_block": lambda: _replaced(attention, "query_blocks", lambda length: 1),
}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shape", default="small", choices=list(vs_pytorch.SHAPES))
  p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  shape = vs_pytorch.SHAPES[args.shape]
  steps = {}
  for name, replaced in VARIANTS.items():
    with replaced():
      step, _ = vs_pytorch.jax_step(shape, {})
      step()            # traced and compiled with the replacement in place
    step()
    steps[name] = step
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, step in steps.items():
      t = time.perf_counter()
      for _ in range(args.steps):
        step()
      times[name].append((time.perf_counter() - t) / args.steps)
  tokens = shape["batch"] * shape["seq_len"]
  base = np.array(times["current"])
  results = {}
  for name, ts in times.items():
    ratio = np.array(ts) / base       # > 1: current is faster than this variant
    results[name] = {"tokens_per_s": tokens / float(np.median(ts)), "seconds": ts,
                     "current_faster_median": float(np.median(ratio)),
                     "current_faster_range": [float(ratio.min()), float(ratio.max())]}
  result = {"shape": dict(shape, name=args.shape), "backend": jax.default_backend(),
            "jax": jax.__version__, "config": vars(args), "variants": results}
  rows = [(name, f"{r['tokens_per_s'] / 1e3:.2f}k",
           f"**{r['current_faster_median']:.2f}x** ({r['current_faster_range'][0]:.2f}-"
           f"{r['current_faster_range'][1]:.2f})") for name, r in results.items()]
  emit(result, ["variant", "tok/s", "current is faster by (range over rounds)"], rows,
       args.json_out)


if __name__ == "__main__":
  main()
