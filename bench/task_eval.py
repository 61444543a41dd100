r"""Downstream evaluation's speed: log-likelihood requests per second and
greedy-decoded tokens per second at two model sizes, ours against
`transformers` on the same model exported with `export_model --format hf`,
alternating in one run; and the cost of in-loop task evaluation as a
fraction of a stage's training time with the default settings.

    pip install -e ".[bench]"     # torch and transformers (the peer only)
    python bench/task_eval.py [--sizes small medium] [--json_out FILE]

Sizes (vocabulary 128, MLP 4 d, untied):

  small   d_model 256, 4 layers, 4 heads x 64
  medium  d_model 512, 4 layers, 8 heads x 64

Log-likelihood: `--requests` requests of a 48-token context and an 8-token
continuation. Ours packs them into rows of 256 tokens with segment ids
(`tasks.scoring.loglikelihoods`, 16 rows a batch); the peer runs each
batch of 16 requests alone through `LlamaForCausalLM` (one request a row,
as lm-eval's `hf` model does) and sums the continuation's log-probabilities.

Decoding: 8 prompts of 64 tokens, 64 new tokens each, greedy, no stop
(every row decodes all 64): ours `tasks.decode.greedy_generate` (a
key/value cache, one prefill and one single-token step program);
theirs `generate(do_sample=False, use_cache=True)`.

In-loop cost: the quickstart's model and batch (gin/quickstart.gin: 200
steps of 32 x 128 tokens, `TrainConfig.eval_every = 0`, so the tasks are
scored at the start and the end of every stage), the four built-in tasks
at `TrainConfig.eval_task_examples = 256`: two task evaluations over 200
training steps, each timed in the same run.

Each figure is the median over `--rounds` rounds; ratios are taken within
a round (ours / theirs: how many times faster ours is).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _emit import emit  # noqa: E402
from vs_pytorch import cpu_model, require_torch  # noqa: E402

VOCAB = 128
SIZES = {"small": dict(d_model=256, num_layers=4, num_heads=4, head_dim=64),
         "medium": dict(d_model=512, num_layers=4, num_heads=8, head_dim=64)}
CONTEXT, CONTINUATION, ROW, BATCH_ROWS = 48, 8, 256, 16
PROMPT, NEW, PROMPTS = 64, 64, 8


def trained_at(size: dict):
  """A random model of `size` as `tasks.trained.load` returns a run."""
  import flax.linen as nn
  from doremi_jax.data import vocab as vocab_lib
  from doremi_jax.model import ModelConfig, Transformer
  from doremi_jax.tasks import trained
  cfg = ModelConfig(vocab_size=VOCAB, mlp_dim=4 * size["d_model"], max_len=ROW,
                    unembed_init_scale=1.0, **size)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  return trained.Trained("bench", 0, cfg, model, params, vocab_lib.SyntheticVocabulary(), ROW, {})


def hf_model(t, out_dir: str, threads: int):
  import torch
  import transformers
  from doremi_jax import export_model
  torch.set_num_threads(threads)
  export_model.export_hf(t, out_dir)
  return transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()


def loglik_pair(t, hf, requests):
  """(ours(), theirs()) scoring every request once."""
  import torch
  from doremi_jax.tasks import scoring

  def ours():
    return scoring.loglikelihoods(t.model, t.params, requests, ROW, BATCH_ROWS)

  ids = torch.as_tensor([[0] + c + x for c, x in requests])     # one request a row

  def theirs():
    out = []
    with torch.no_grad():
      for lo in range(0, len(ids), BATCH_ROWS):
        batch = ids[lo:lo + BATCH_ROWS]
        logp = torch.log_softmax(hf(batch[:, :-1]).logits.float(), -1)
        tok = logp.gather(-1, batch[:, 1:, None])[..., 0]
        out.append(tok[:, -CONTINUATION:].sum(-1))
    return torch.cat(out).numpy()
  return ours, theirs


def decode_pair(t, hf, prompts):
  import torch
  from doremi_jax.tasks import decode

  def ours():
    return decode.greedy_generate(t.model, t.params, prompts, NEW, max_len=1 + PROMPT + NEW,
                                  batch_size=PROMPTS)

  ids = torch.as_tensor([[0] + p for p in prompts])

  def theirs():
    with torch.no_grad():
      return hf.generate(ids, do_sample=False, use_cache=True, max_new_tokens=NEW,
                         min_new_tokens=NEW, eos_token_id=None, pad_token_id=1)
  return ours, theirs


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def alternate(ours, theirs, rounds: int, units: int) -> dict:
  """Units per second of each side, and ours/theirs, over alternating rounds."""
  ours(), theirs()       # compile / warm up
  rows = [(timed(ours), timed(theirs)) for _ in range(rounds)]
  ratio = [b / a for a, b in rows]
  return {"ours_per_s": units / float(np.median([a for a, _ in rows])),
          "theirs_per_s": units / float(np.median([b for _, b in rows])),
          "ratio_median": float(np.median(ratio)), "ratio_range": [min(ratio), max(ratio)],
          "rounds": [{"ours_s": a, "theirs_s": b} for a, b in rows]}


def against_transformers(name: str, args) -> dict:
  rng = np.random.default_rng(0)
  t = trained_at(SIZES[name])
  hf = hf_model(t, tempfile.mkdtemp(prefix="task_eval_hf_"), args.threads)
  requests = [(rng.integers(2, VOCAB, CONTEXT).tolist(), rng.integers(2, VOCAB, CONTINUATION)
               .tolist()) for _ in range(args.requests)]
  ours, theirs = loglik_pair(t, hf, requests)
  np.testing.assert_allclose(ours(), theirs(), rtol=1e-3, atol=1e-3)   # the same scores
  prompts = [rng.integers(2, VOCAB, PROMPT).tolist() for _ in range(PROMPTS)]
  gen_ours, gen_theirs = decode_pair(t, hf, prompts)
  return {"size": SIZES[name] | {"mlp_dim": 4 * SIZES[name]["d_model"], "vocab": VOCAB},
          "params": t.model_cfg.num_params(),
          "loglikelihood_requests": alternate(ours, theirs, args.rounds, args.requests),
          "decoded_tokens": alternate(gen_ours, gen_theirs, args.rounds, PROMPTS * NEW)}


def in_loop_cost(rounds: int) -> dict:
  """Two evaluations of the four built-in tasks against 200 LM steps at
  the quickstart's settings (see the module docstring)."""
  from doremi_jax import model as model_lib, state as state_lib, steps as steps_lib
  from doremi_jax.data import packing, synthetic
  from doremi_jax.data.synthetic_tasks import synthetic_corpus
  from doremi_jax.tasks import builtin, suite
  corpus = synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=128))
  cfg = state_lib.TrainConfig(num_steps=200, global_batch_size=32, seq_len=128,
                              eval_tasks=builtin.NAMES)
  model_cfg = model_lib.ModelConfig(d_model=64, num_layers=2, num_heads=4, head_dim=16,
                                    mlp_dim=256)          # gin/models/tiny.gin
  setup = state_lib.build_setup(corpus.vocab_size, cfg, model_cfg=model_cfg,
                                devices=jax.devices()[:1])
  program = steps_lib.lm_program(setup, corpus.num_domains, 1, cfg.seq_len)
  rng = np.random.default_rng(0)
  batch = state_lib.to_global({
      "targets": rng.integers(2, VOCAB, (32, 128), dtype=np.int32),
      "segment_ids": np.ones((32, 128), np.int32), "domain_ids": np.zeros(32, np.int32)},
      setup.batch_shardings)
  box = {"state": program.init(0)}

  def steps10():
    for _ in range(10):
      box["state"], m = program(box["state"], batch)
    jax.block_until_ready(m)

  tasks = suite.TaskSuite.create(cfg.eval_tasks, corpus, packing.TEST, cfg.seq_len,
                                 cfg.eval_batch_size, cfg.eval_task_examples)

  def evaluate():
    with setup.scope():
      tasks(setup.model, box["state"].params)
  steps10(), evaluate()
  rows = [(timed(steps10) / 10, timed(evaluate)) for _ in range(rounds)]
  step_s, eval_s = (float(np.median(x)) for x in zip(*rows))
  return {"step_s": step_s, "task_eval_s": eval_s, "evaluations": 2, "steps": cfg.num_steps,
          "tasks": list(cfg.eval_tasks), "items_per_task": cfg.eval_task_examples,
          "fraction_of_training": 2 * eval_s / (cfg.num_steps * step_s)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
  p.add_argument("--requests", type=int, default=256)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  p.add_argument("--json_out", default=None)
  args = p.parse_args()
  torch, transformers = require_torch()
  import platform
  results = {name: against_transformers(name, args) for name in args.sizes}
  cost = in_loop_cost(args.rounds)
  result = {"machine": {"cpu_model": cpu_model(), "platform": platform.platform(),
                        "cpu_count": os.cpu_count(), "jax": jax.__version__,
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "torch_threads": args.threads},
            "config": vars(args), "results": results, "in_loop_cost": cost}
  rows = []
  for name, r in results.items():
    for what, unit in (("loglikelihood_requests", "requests/s"), ("decoded_tokens", "tokens/s")):
      x = r[what]
      rows.append((f"{name} ({r['params'] / 1e6:.1f}M)", f"{what.replace('_', ' ')}",
                   f"{x['ours_per_s']:.0f} {unit}", f"{x['theirs_per_s']:.0f} {unit}",
                   f"**{x['ratio_median']:.2f}x** ({x['ratio_range'][0]:.2f}-"
                   f"{x['ratio_range'][1]:.2f})"))
  rows.append(("quickstart (tiny)", "in-loop tasks: 2 evaluations / 200 steps",
               f"{cost['task_eval_s']:.2f} s per evaluation", f"{cost['step_s'] * 1e3:.0f} ms "
               "per step", f"**{cost['fraction_of_training']:.1%}** of training time"))
  emit(result, ["model", "measure", "ours", "transformers / training", "ours / theirs"], rows,
       args.json_out)


if __name__ == "__main__":
  main()
