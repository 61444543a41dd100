r"""Reproduction study on the built-in corpus: main models of equal compute on
(a) uniform, (b) size-proportional, (c) DoReMi and (d) iterated DoReMi
(2 rounds) weights, over several seeds; plus the sensitivity of the DoReMi
weights to the step size and to the reference weights.

    python bench/reproduce.py --out docs/results/reproduction [--seeds 0 1 2]

Uses gin/quickstart.gin's settings for every stage (tiny models, 200 steps,
from gin/cpu.gin); each stage runs as the registered stage
(`doremi_jax.stages.registry`) under its gin scope.
Writes results.json, reproduction.md (tables: mean and 95% t-interval over
seeds) and plots into --out; the run directories go under --runs
(runs/reproduce) and a re-run skips finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

ARMS = ("uniform", "proportional", "doremi", "iterated")
EXTRA: list = []   # gin bindings added to every run (--steps)


def _configure(bindings):
  import gin
  from doremi_jax import config as config_lib, main as main_lib
  gin.clear_config()
  main_lib.register_configurables()
  config_lib.parse_gin([os.path.join(REPO, "gin", "quickstart.gin")], list(bindings) + EXTRA)


def _main_model(run_dir, weights, seed):
  """Trains (or reads back) a main model on `weights`; returns its eval."""
  from doremi_jax import files, rundir
  from doremi_jax.stages import registry
  if not rundir.is_complete(run_dir):
    _configure([f"TrainConfig.seed = {seed}"])
    registry.get("main")(run_dir, weights=weights)   # under the `main` gin scope
  return files.read_json(os.path.join(run_dir, "eval.json"))


def _pipeline(run_dir, seed, *bindings):
  from doremi_jax.stages import registry
  _configure([f"TrainConfig.seed = {seed}", "train_pipeline.run_main = False",
              "train_pipeline.run_baseline = False", *bindings])
  return registry.get("pipeline")(run_dir)


def t_interval(xs):
  """Mean and half-width of the 95% t-interval."""
  from scipy import stats
  xs = np.asarray(xs, np.float64)
  if len(xs) < 2:
    return float(xs.mean()), float("nan")
  return float(xs.mean()), float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) /
                                 np.sqrt(len(xs)))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="docs/results/reproduction")
  p.add_argument("--runs", default="runs/reproduce", help="run directories (checkpoints)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--step_sizes", type=float, nargs="*", default=[0.5, 2.0])
  p.add_argument("--steps", type=int, default=None,
                 help="override every stage's steps (a quick smoke run; default: the "
                      "quickstart's 200)")
  args = p.parse_args()
  if args.steps:
    EXTRA[:] = [f"STEPS = {args.steps}",   # gin/cpu.gin's macro: every stage's steps
                f"TrainConfig.checkpoint_every = {args.steps}"]
  runs = args.runs
  t0 = time.time()
  results = {"seeds": args.seeds, "arms": {a: [] for a in ARMS}, "weights": {},
             "sensitivity": {}}

  for seed in args.seeds:
    base = os.path.join(runs, f"seed{seed}")
    state = _pipeline(os.path.join(base, "doremi"), seed, "train_pipeline.rounds = 2",
                      "train_pipeline.tolerance = 0.0", "train_pipeline.write_report = False")
    w1, w2 = state["rounds"][0]["weights"], state["rounds"][1]["weights"]
    results["weights"].setdefault("doremi", []).append(w1)
    results["weights"].setdefault("iterated", []).append(w2)
    for arm, w in (("uniform", "uniform"), ("proportional", "proportional"), ("doremi", w1),
                   ("iterated", w2)):
      ev = _main_model(os.path.join(base, f"main_{arm}"), w, seed)
      results["arms"][arm].append(ev)
    print(f"[reproduce] seed {seed} done at {time.time() - t0:.0f}s", flush=True)

  seed0 = args.seeds[0]
  for eta in args.step_sizes:
    st = _pipeline(os.path.join(runs, f"eta{eta:g}"), seed0, "train_pipeline.rounds = 1",
                   f"train_proxy.step_size = {eta}", "train_pipeline.write_report = False")
    results["sensitivity"][f"step_size={eta:g}"] = st["rounds"][0]["weights"]
  st = _pipeline(os.path.join(runs, "ref_proportional"), seed0, "train_pipeline.rounds = 1",
                 "train_pipeline.reference_weights = 'proportional'",
                 "train_pipeline.write_report = False")
  results["sensitivity"]["reference=proportional"] = st["rounds"][0]["weights"]
  results["sensitivity"]["step_size=1 (default)"] = results["weights"]["doremi"][0]
  results["seconds"] = time.time() - t0

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  md = write_markdown(results, args.out)
  print(md)
  print(f"[reproduce] {time.time() - t0:.0f}s; wrote {args.out}/results.json and "
        f"{args.out}/reproduction.md", flush=True)


def write_markdown(results, out, domains=None) -> str:
  arms = results["arms"]
  domains = domains or list(arms["uniform"][0]["per_domain"])
  n = len(results["seeds"])
  lines = [f"Validation loss (nats/token), mean ± 95% t-interval over {n} seeds:", "",
           "| domain | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]

  def cell(vals):
    m, h = t_interval(vals)
    return f"{m:.4f} ± {h:.4f}"

  for d in domains:
    lines.append(f"| {d} | " + " | ".join(
        cell([e["per_domain"][d]["loss"] for e in arms[a]]) for a in ARMS) + " |")
  lines.append("| *uniform average* | " + " | ".join(
      cell([e["uniform_average"] for e in arms[a]]) for a in ARMS) + " |")
  lines.append("| *worst case* | " + " | ".join(
      cell([e["worst_case"]["loss"] for e in arms[a]]) for a in ARMS) + " |")
  learnable = [d for d in domains if d != "noise"]
  lines.append("| *average of learnable domains* | " + " | ".join(
      cell([np.mean([e["per_domain"][d]["loss"] for d in learnable]) for e in arms[a]])
      for a in ARMS) + " |")
  lines += ["", "Paired differences against uniform (same seed), mean ± 95% t-interval; "
            "negative = better than uniform:", "",
            "| measure | " + " | ".join(ARMS[1:]) + " |", "|---|" + "---|" * (len(ARMS) - 1)]

  def paired(fn):
    return " | ".join(cell([fn(e) - fn(u) for e, u in zip(arms[a], arms["uniform"])])
                      for a in ARMS[1:])
  lines.append("| uniform average | " + paired(lambda e: e["uniform_average"]) + " |")
  lines.append("| worst case | " + paired(lambda e: e["worst_case"]["loss"]) + " |")
  lines.append("| average of learnable domains | " + paired(
      lambda e: np.mean([e["per_domain"][d]["loss"] for d in learnable])) + " |")
  for d in domains:
    lines.append(f"| {d} | " + paired(lambda e, d=d: e["per_domain"][d]["loss"]) + " |")
  lines += ["", "Weights found (mean ± std over seeds):", "",
            "| domain | DoReMi | iterated DoReMi (round 2) |", "|---|---|---|"]
  for d in domains:
    row = []
    for key in ("doremi", "iterated"):
      ws = [w[d] for w in results["weights"][key]]
      row.append(f"{np.mean(ws):.3f} ± {np.std(ws, ddof=1) if len(ws) > 1 else 0:.3f}")
    lines.append(f"| {d} | " + " | ".join(row) + " |")
  lines += ["", f"Sensitivity (seed {results['seeds'][0]}):", "",
            "| setting | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
  for k, w in results["sensitivity"].items():
    lines.append(f"| {k} | " + " | ".join(f"{w[d]:.3f}" for d in domains) + " |")
  md = "\n".join(lines) + "\n"
  with open(os.path.join(out, "reproduction.md"), "w") as f:
    f.write(md)
  plot(results, out, domains)
  return md


def plot(results, out, domains):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  arms = results["arms"]
  fig, ax = plt.subplots(figsize=(10, 4.5))
  x = np.arange(len(domains) + 2)
  labels = domains + ["uniform avg", "worst case"]
  width = 0.8 / len(ARMS)
  for j, a in enumerate(ARMS):
    vals = [[e["per_domain"][d]["loss"] for e in arms[a]] for d in domains]
    vals += [[e["uniform_average"] for e in arms[a]], [e["worst_case"]["loss"] for e in arms[a]]]
    ms = [t_interval(v) for v in vals]
    ax.bar(x + (j - (len(ARMS) - 1) / 2) * width, [m for m, _ in ms], width,
           yerr=[h for _, h in ms], capsize=2, label=a)
  ax.set_xticks(x, labels)
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_title(f"Main models of equal compute, {len(results['seeds'])} seeds (95% CI)")
  ax.legend(title="weights")
  ax.grid(axis="y", alpha=0.3)
  fig.savefig(os.path.join(out, "main_models.png"), dpi=110, bbox_inches="tight")
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(10, 4.2))
  sens = results["sensitivity"]
  width = 0.8 / len(sens)
  for j, (k, w) in enumerate(sens.items()):
    ax.bar(np.arange(len(domains)) + (j - (len(sens) - 1) / 2) * width,
           [w[d] for d in domains], width, label=k)
  ax.set_xticks(np.arange(len(domains)), domains)
  ax.set_ylabel("DoReMi domain weight")
  ax.set_title("Sensitivity of the DoReMi weights (seed %d)" % results["seeds"][0])
  ax.legend()
  ax.grid(axis="y", alpha=0.3)
  fig.savefig(os.path.join(out, "sensitivity.png"), dpi=110, bbox_inches="tight")
  plt.close(fig)


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--tables_from":
    # Rewrite reproduction.md and the plots from a results.json.
    out_dir = os.path.dirname(sys.argv[2])
    res = json.load(open(sys.argv[2]))
    print(write_markdown(res, out_dir, list(res["arms"]["uniform"][0]["per_domain"])))
  else:
    main()
