r"""What an online mixer costs the main step: each mixer's step time over the
plain LM step's, measured alternating in one process (issue 14's goal: at
most 1.03x for ODM, ADO and Aioli's own computation).

    python bench/mixer_overhead.py [--d_model 128 --num_layers 2 --seq_len 128 --batch 32]

The default model is small (the quickstart's main model is smaller still):
a mixer's work does not grow with the model, so a small model is the
harder test of the 1.03x goal.

Programs (all `steps.lm_program`, the main stage's step, on the same numpy
batch): plain; + ODM; + ADO (a step without a refit: its curve buffer
holds every tenth step of `--num_steps`, as in a run of that length); + Aioli (its
in-step update is the identity: its work is between steps); + online DoReMi
(which adds a reference forward, the same size as the model here, reported
apart: its cost is the reference, not the mixer's arithmetic).

Beside the step ratios: ADO's refit step (L-BFGS from 27 starts on every
domain's curve, under `lax.cond` in the step), timed alone and amortised
over `update_interval` steps; Aioli's host update at the end of LearnParams
(matrix estimate, normalise, step) in milliseconds; and Aioli's evaluation
passes as a fraction of training compute for its README defaults and for
the study's settings (a forward is a third of a training token's FLOPs).

Each round times `--steps` steps of every program in turn; a ratio is the
median over rounds of program / plain within each round (with the middle
half of the rounds' ratios: the machine's noise). Beside it, the compiled
programs' FLOPs from XLA's cost analysis, program / plain: a deterministic
count of what each mixer adds to the step's arithmetic.
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


def run_steps(program, state, batch, n):
  for _ in range(n):
    state, m = program(state, batch)
  jax.block_until_ready((state, m))
  return state


def aioli_eval_fraction(k, update_steps, lp_rounds, eval_examples, batch):
  """Evaluation tokens over 3 x training tokens, per round (sequences of equal length)."""
  evals = lp_rounds * k + 1
  return evals * k * eval_examples / (3.0 * update_steps * batch)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--num_layers", type=int, default=2)
  p.add_argument("--num_heads", type=int, default=4)
  p.add_argument("--head_dim", type=int, default=32)
  p.add_argument("--mlp_dim", type=int, default=512)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--num_steps", type=int, default=10000,
                 help="the run length ADO's history buffer is sized for")
  p.add_argument("--steps", type=int, default=2, help="steps per program per round")
  p.add_argument("--rounds", type=int, default=60)
  p.add_argument("--json_out", default=None)
  args = p.parse_args()

  from doremi_jax import model as model_lib, state as state_lib, steps as steps_lib
  from doremi_jax import reference as reference_lib
  from doremi_jax.data import synthetic
  from doremi_jax.mixers import ado, aioli, doremi_online, odm

  vocab, k = synthetic.VOCAB_SIZE, len(synthetic.DOMAINS)
  model_cfg = model_lib.ModelConfig(d_model=args.d_model, num_layers=args.num_layers,
                                    num_heads=args.num_heads, head_dim=args.head_dim,
                                    mlp_dim=args.mlp_dim, max_len=args.seq_len)
  cfg = state_lib.TrainConfig(global_batch_size=args.batch, seq_len=args.seq_len,
                              num_steps=args.num_steps)
  setup = state_lib.build_setup(vocab, cfg, model_cfg=model_cfg)
  prior = np.full(k, 1.0 / k)
  n = args.num_steps
  ref_model = setup.make_model(setup.model_cfg)
  _, ref_shardings = setup.abstract_params(ref_model, args.seq_len)
  ref_params = state_lib.init_state(setup, 1).params
  reference = reference_lib.Reference(ref_model, ref_params, ref_shardings, {})
  mixers = {
      "odm": odm.ODMMixer(k, n, warmup_steps=0),
      # steps without a refit: the first fit is at step 1000 (the defaults)
      "ado": ado.ADOMixer(k, n),
      "aioli": aioli.AioliMixer(k, n),
      "doremi_online": doremi_online.DoReMiOnlineMixer(k, n),
  }
  programs = {"plain": steps_lib.lm_program(setup, k, 1, args.seq_len)}
  for name, mx in mixers.items():
    programs[name] = steps_lib.lm_program(setup, k, 1, args.seq_len, mixer=mx, prior=prior,
                                          reference=reference if mx.needs_reference else None)
  rng = np.random.default_rng(0)
  batch = state_lib.to_global({
      "targets": rng.integers(2, vocab, (args.batch, args.seq_len), dtype=np.int32),
      "segment_ids": np.ones((args.batch, args.seq_len), np.int32),
      "domain_ids": (np.arange(args.batch) % k).astype(np.int32)}, setup.batch_shardings)
  states = {name: run_steps(prog, prog.init(0), batch, 2) for name, prog in programs.items()}

  times = {name: [] for name in programs}
  for _ in range(args.rounds):
    for name, prog in programs.items():
      t = time.perf_counter()
      states[name] = run_steps(prog, states[name], batch, args.steps)
      times[name].append((time.perf_counter() - t) / args.steps)
  per_round = {name: np.array(times[name]) / np.array(times["plain"]) for name in programs}
  ratios = {name: float(np.median(per_round[name])) for name in programs if name != "plain"}
  spread = {name: [float(np.percentile(per_round[name], 25)),
                   float(np.percentile(per_round[name], 75))]
            for name in programs if name != "plain"}
  # The compiled programs' own count (XLA cost analysis): deterministic,
  # what the mixer adds to the step's arithmetic.
  flops = {}
  for name, prog in programs.items():
    cost = prog.lower(args.batch, args.seq_len).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops[name] = float(cost.get("flops", float("nan")))
  flop_ratios = {name: flops[name] / flops["plain"] for name in programs if name != "plain"}

  # ADO's refit step: a program whose every step refits (ignore 1, interval
  # 1, so no smoothing window fits before it). A fit's cost is its buffer's:
  # every tenth step of the run, the points not yet seen masked.
  refit_mixer = ado.ADOMixer(k, n, ignore_steps=1, update_interval=1, savgol_window=1,
                             savgol_order=0)
  refit = steps_lib.lm_program(setup, k, 1, args.seq_len, mixer=refit_mixer, prior=prior)
  rs = run_steps(refit, refit.init(0), batch, 2)
  t = time.perf_counter()
  rs = run_steps(refit, rs, batch, 3)
  refit_s = (time.perf_counter() - t) / 3
  plain_s = float(np.median(times["plain"]))
  amortised = (ratios["ado"] * 999 + refit_s / plain_s) / 1000

  # Aioli's host update at the end of LearnParams (second round: warm).
  am = aioli.AioliMixer(k, n)
  st = am.init(prior)
  losses = iter(np.linspace(5, 4, 200).reshape(-1, 1) + rng.uniform(0, 0.01, (200, k)))
  t_update = am.hyper["update_steps"] + am.lp_len
  for done in range(t_update + 1):   # evaluations feed the bursts; the last is the update
    if am.is_event(done):
      if done == t_update:
        t = time.perf_counter()
      st, _, _ = am.on_step_done(done, st, lambda: next(losses))
  aioli_update_ms = (time.perf_counter() - t) * 1e3

  readme = aioli_eval_fraction(k, 250, 4, 128, args.batch)
  study = aioli_eval_fraction(k, 50, 1, 128, 32)   # gin/study_mixers.gin
  result = {
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "backend": jax.default_backend(), "jax": jax.__version__},
      "config": vars(args) | {"num_params": setup.model_cfg.num_params(), "domains": k},
      "plain_step_seconds": plain_s,
      "step_time_over_plain": ratios,
      "step_time_over_plain_interquartile": spread,
      "xla_flops_over_plain": flop_ratios,
      "ado_refit_step_seconds": refit_s,
      "ado_amortised_over_plain_at_interval_1000": amortised,
      "aioli_host_update_ms": aioli_update_ms,
      "aioli_eval_compute_fraction": {
          "readme_defaults(T250,R4,128 examples/domain,this batch)": readme,
          "study_mixers.gin(T50,R1,128 examples/domain,batch 32)": study},
  }
  rows = [(f"+ {name}", f"{r:.3f}x (middle half of rounds {spread[name][0]:.3f}-"
                       f"{spread[name][1]:.3f}); XLA flops {flop_ratios[name]:.4f}x")
          for name, r in ratios.items()]
  rows += [("plain step", f"{plain_s * 1e3:.1f} ms"),
           ("ADO refit step (27-start L-BFGS, all domains)", f"{refit_s * 1e3:.0f} ms"),
           ("ADO amortised, refit every 1000 steps", f"{amortised:.3f}x"),
           ("Aioli host update per round", f"{aioli_update_ms:.1f} ms"),
           (f"Aioli evaluations / training compute (README: T 250, R 4; 128 sequences per "
            f"domain, batch {args.batch})", f"{readme:.1%}"),
           ("Aioli evaluations / training compute (gin/study_mixers.gin)", f"{study:.1%}")]
  emit(result, ["program", "vs plain LM step"], rows, args.json_out)


if __name__ == "__main__":
  main()
