"""The mixture study's analysis (study.json) and report (study.md + plots),
from the run directories a `study` stage wrote. The numbers come from
`doremi_jax.stats`; this module only reads runs and lays them out."""

from __future__ import annotations

import time
from typing import Optional


from doremi_jax import files
from doremi_jax import health
from doremi_jax import plots
from doremi_jax import rundir
from doremi_jax import stats
from doremi_jax.data import scheduled

REPORT_FILE = "study.md"


def run_dir(root, arm: str, seed: int):
  return files.path(root) / "arms" / arm / f"seed_{seed}"


def _curve(path) -> tuple[list, list]:
  """(steps, uniform-average loss) of a run's evaluations, one per step."""
  rows = {int(r["step"]): r["uniform_average"] for r in files.read_jsonl(path / "eval.jsonl")}
  steps = sorted(rows)
  return steps, [rows[s] for s in steps]


def run_flops(path) -> float:
  """Training FLOPs of a finished run plus its evaluation passes (a forward
  is a third of a training token's FLOPs), an online mixer's included; the work of an uninterrupted run
  (a resumed run's repeated steps and evaluations are not counted)."""
  info = files.read_json(path / "run_info.json")
  done = files.read_json(path / "complete.json")
  per_token = float(info["flops_per_token"])
  train = per_token * info["tokens_per_step"] * done["num_steps"]
  evals = len({r["step"] for r in files.read_jsonl(path / "eval.jsonl")})
  extra = 0.0   # an online mixer's own evaluation passes (Aioli's LearnParams)
  if files.exists(path / "mixer_cost.json"):
    extra = files.read_json(path / "mixer_cost.json")["eval_tokens"] * per_token / 3
  return train + evals * info["eval_tokens"] * per_token / 3 + extra


def health_checks(root, arms: list, corpus, rates: dict, method_runs: dict, num_steps: int,
                  batch: int, seq_len: int) -> list:
  """The study's health lines: starvation and repetition of every arm under
  the main run's budget, Step 2's collapse, proxy-vs-reference and rounds for
  the DoReMi arms, and the tokenizer."""
  domains = list(corpus.domains)
  sizes = dict(zip(domains, corpus.train_tokens))
  lines = []
  for arm in arms:
    w = {d: float(x) for d, x in zip(domains, rates[arm])}
    lines.append(health.starved_domains(domains, w, num_steps, batch, f" ({arm})"))
    lines.append(health.repetition(domains, w, num_steps * batch * seq_len, sizes, f" ({arm})"))
  # DoReMi's own runs, once each (several arms may share them), by round
  proxies = list(dict.fromkeys(d for arm in arms for d in method_runs.get(arm, [])
                               if files.path(d).name == "proxy"))
  for d in proxies:
    label = f" ({files.path(d).parent.name.replace('_', ' ')})" if len(proxies) > 1 else ""
    for line in (health.weight_collapse(files.read_jsonl(files.path(d) / "doremi_weights.jsonl"))
                 + health.proxy_below_reference(files.read_json(files.path(d) / "eval.json"))):
      lines.append(dict(line, check=line["check"] + label))
  if proxies:
    lines += health.rounds_converged(rundir.load_pipeline_state(root / "doremi"))
  info = files.read_json(run_dir(root, arms[0], 0) / "run_info.json")
  return lines + health.tokenizer_line(info.get("tokenizer"), domains, corpus.bytes_per_token)


def analyse(root, arms: list, seeds: int, baseline: str, corpus, rates: dict,
            method_runs: dict, level: float = 0.95) -> dict:
  """study.json: per arm and domain, means with intervals over seeds, paired
  differences against the baseline with verdicts, the speed-up to the
  baseline's final loss, the seed-to-seed spread and the cost."""
  domains = list(corpus.domains)
  floors = (dict(zip(domains, corpus.entropy_floors))
            if corpus.entropy_floors is not None else None)
  per = {}
  for arm in arms:
    finals = [files.read_json(run_dir(root, arm, s) / "eval.json") for s in range(seeds)]
    dom = {d: [f["per_domain"][d]["loss"] for f in finals] for d in domains}
    per[arm] = {
        "uniform_avg": [f["uniform_average"] for f in finals],
        "worst_case": [f["worst_case"]["loss"] for f in finals],
        "excess_over_floor": ([stats.excess_over_floor({d: dom[d][s] for d in domains}, floors)
                               for s in range(seeds)] if floors else None),
        "domains": dom,
        "curves": [_curve(run_dir(root, arm, s)) for s in range(seeds)],
    }
  main_flops = run_flops(run_dir(root, baseline, 0))
  info = files.read_json(run_dir(root, baseline, 0) / "run_info.json")
  seq_len = info["seq_len"]
  checks = health_checks(root, arms, corpus, rates, method_runs, info["num_steps"],
                         info["tokens_per_step"] // seq_len, seq_len)
  m = max(len(arms) - 1, 1)
  results = {}
  for arm in arms:
    p = per[arm]
    r = {
        "uniform_avg": stats.summarize(p["uniform_avg"], level),
        "worst_case": stats.summarize(p["worst_case"], level),
        "domains": {d: stats.summarize(p["domains"][d], level) for d in domains},
        "weights": {d: float(w) for d, w in zip(domains, rates[arm])},
    }
    r["shares"] = health.shares(domains, r["weights"], corpus.bytes_per_token)
    if p["excess_over_floor"] is not None:
      r["excess_over_floor"] = stats.summarize(p["excess_over_floor"], level)
    r["spread"] = {"uniform_avg_std": r["uniform_avg"]["std"],
                   "worst_case_std": r["worst_case"]["std"]}
    own = sum(run_flops(run_dir(root, arm, s)) for s in range(seeds)) / seeds
    extra = sum(run_flops(files.path(d)) for d in method_runs.get(arm, []))
    r["cost"] = {"main_run_flops": own, "method_flops": extra,
                 "total_flops_per_seed": own + extra,
                 "fraction_of_one_main_run": (own + extra) / main_flops}
    if arm == baseline:
      r["speedup"] = {"mean": 1.0, "ci": [1.0, 1.0], "reached": seeds}
    else:
      b = per[baseline]
      vs = {key: stats.paired_difference(p[key], b[key], level, m)
            for key in ("uniform_avg", "worst_case")}
      vs["domains"] = {d: stats.paired_difference(p["domains"][d], b["domains"][d], level, m)
                       for d in domains}
      if p["excess_over_floor"] is not None:
        vs["excess_over_floor"] = stats.paired_difference(
            p["excess_over_floor"], b["excess_over_floor"], level, m)
      r["vs_baseline"] = vs
      r["speedup"] = stats.speedup(p["curves"], b["curves"], level, m)
    results[arm] = r
  return {
      "baseline": baseline, "arms": list(arms), "seeds": seeds, "domains": domains,
      "level": level, "comparisons": m,
      "adjustment": f"Bonferroni over the {m} arm(s) compared with the baseline: each "
                    f"interval at confidence {stats.adjusted_level(level, m):.4f}",
      "curves": {arm: [[list(map(int, c[0])), list(map(float, c[1]))] for c in per[arm]["curves"]]
                 for arm in arms},
      "results": results,
      "health": checks,
  }


def _ci(x: dict, nd: int = 4) -> str:
  return f"{x['mean']:.{nd}f} [{x['ci'][0]:.{nd}f}, {x['ci'][1]:.{nd}f}]"


def _diff(x: Optional[dict], nd: int = 4) -> str:
  if x is None:
    return "(baseline)"
  return f"{x['diff']:+.{nd}f} [{x['ci'][0]:+.{nd}f}, {x['ci'][1]:+.{nd}f}] **{x['verdict']}**"


def _speedup(sp: dict, seeds: int) -> str:
  """A speed-up cell; where some seeds never reached the target the figure
  is an upper bound (their ratio counts as last step / baseline steps)."""
  text = f"{sp['mean']:.2f} [{sp['ci'][0]:.2f}, {sp['ci'][1]:.2f}]"
  if sp["reached"] < seeds:
    text = f"at most {text}: target not reached on {seeds - sp['reached']} of {seeds} seeds"
  return text


def format_verdicts(study: dict) -> str:
  """The console table: each arm's uniform average and its verdict."""
  lines = [f"{'arm':<16}{'uniform avg':>12}{'vs ' + study['baseline']:>14}  verdict"]
  for arm, r in study["results"].items():
    vs = r.get("vs_baseline", {}).get("uniform_avg")
    lines.append(f"{arm:<16}{r['uniform_avg']['mean']:12.4f}"
                 + (f"{vs['diff']:+14.4f}  {vs['verdict']}" if vs else f"{'':>14}  baseline"))
  return "\n".join(lines)


def write(root, study: dict) -> str:
  """study.md and its plots (RUN/plots/); returns the report's path."""
  root = files.path(root)
  base, domains = study["baseline"], study["domains"]
  res = study["results"]
  md = [f"# Mixture study: {len(study['arms'])} arms x {study['seeds']} seeds", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{root}`.", "",
        f"Baseline: **{base}**. Lower loss is better; a difference is arm minus baseline, "
        f"paired by seed (same initialisation and data-order seed in every arm). "
        f"Intervals are {study['level']:.0%} t intervals over seeds; the differences' "
        f"intervals are adjusted for several arms ({study['adjustment']}). **wins**: the "
        "whole interval is below zero; **loses**: above; **ties**: it contains zero.", "",
        "## Verdicts", "",
        "| arm | uniform avg | vs baseline | worst case vs baseline | speed-up to baseline's "
        "final loss | cost (x one main run) |", "|---|---|---|---|---|---|"]
  for arm, r in res.items():
    vs = r.get("vs_baseline", {})
    sp = r["speedup"]
    md.append(f"| {arm} | {_ci(r['uniform_avg'])} | {_diff(vs.get('uniform_avg'))} | "
              f"{_diff(vs.get('worst_case'))} | {_speedup(sp, study['seeds'])} | "
              f"{r['cost']['fraction_of_one_main_run']:.2f} |")
  md += ["", "## Per domain: arm minus baseline", "",
         "| arm | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
  for arm, r in res.items():
    if "vs_baseline" in r:
      md.append(f"| {arm} | " + " | ".join(_diff(r["vs_baseline"]["domains"][d], 3)
                                           for d in domains) + " |")
  md += ["", "## Weights of every arm", "",
         "| arm | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
  for arm, r in res.items():
    md.append(f"| {arm} | " + " | ".join(f"{r['weights'][d]:.3f}" for d in domains) + " |")
  if all("bytes" in r.get("shares", {}) for r in res.values()):
    md += ["", "The same weights as shares of UTF-8 bytes (the tokenizer's bytes per token "
           "differ by domain; weights found with another tokenizer would mean other byte "
           "shares):", "", "| arm | " + " | ".join(domains) + " |",
           "|---|" + "---|" * len(domains)]
    for arm, r in res.items():
      md.append(f"| {arm} | " + " | ".join(f"{r['shares']['bytes'][d]:.3f}" for d in domains)
                + " |")
  md += ["", "## Seed-to-seed spread (standard deviation over seeds)", "",
         "| arm | uniform avg | worst case |", "|---|---|---|"]
  for arm, r in res.items():
    md.append(f"| {arm} | {r['spread']['uniform_avg_std']:.4f} | "
              f"{r['spread']['worst_case_std']:.4f} |")
  md += ["", "## Health checks", "",
         "Weights are shares of tokens (every sequence has the same length). A local "
         "corpus's train sizes (for repetition) are its train bytes over the bytes per "
         "token measured on its validation text.", ""]
  md += health.format_lines(study.get("health", []))
  plot_dir = root / "plots"
  figs = []
  if plots.plot_forest(study, plot_dir / "study_forest.png"):
    figs.append(("Paired differences against the baseline", "study_forest.png"))
  if plots.plot_study_curves(study, plot_dir / "study_curves.png"):
    figs.append(("Uniform-average validation loss, mean and range over seeds",
                 "study_curves.png"))
  schedules = {arm: scheduled.read_log(run_dir(root, arm, 0) / "mixture_weights.jsonl")
               for arm in res}
  if plots.plot_mixer_rates(schedules, plot_dir / "study_mixer_rates.png"):
    figs.append(("Online mixers' rates over training (the weights above are their time "
                 "averages, mean over seeds)", "study_mixer_rates.png"))
  for title, name in figs:
    md += ["", f"## {title}", "", f"![{title}](plots/{name})"]
  path = root / REPORT_FILE
  files.write_text(path, "\n".join(md) + "\n")
  return str(path)
