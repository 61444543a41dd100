"""The mixture study's analysis (study.json), from the run directories a
`study` stage wrote (RUN/arms/<arm>/seed_<s>/ and its methods' own runs).
The numbers come from `analysis.stats`; this module reads the runs and puts
the results together. The stage writes study.json; `study_report` lays it
out."""

from __future__ import annotations

import numpy as np

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import health
from doremi_jax.analysis import ladder_stats
from doremi_jax.analysis import stats
from doremi_jax.analysis import task_stats


def _curve(path) -> tuple[list, list]:
  """(steps, uniform-average loss) of a run's evaluations, one per step."""
  rows = {int(r["step"]): r["uniform_average"] for r in files.read_jsonl(path / rundir.EVAL_LOG)}
  steps = sorted(rows)
  return steps, [rows[s] for s in steps]


def run_flops(path) -> float:
  """Training FLOPs of a finished run plus its evaluation passes (a forward
  is a third of a training token's FLOPs), an online mixer's included; the
  work of an uninterrupted run (a resumed run's repeated steps and
  evaluations are not counted)."""
  info = files.read_json(path / rundir.RUN_INFO)
  done = files.read_json(path / rundir.COMPLETE)
  per_token = float(info["flops_per_token"])
  train = per_token * info["tokens_per_step"] * done["num_steps"]
  evals = len({r["step"] for r in files.read_jsonl(path / rundir.EVAL_LOG)})
  extra = 0.0   # an online mixer's own evaluation passes (Aioli's LearnParams)
  if files.exists(path / rundir.MIXER_COST):
    extra = files.read_json(path / rundir.MIXER_COST)["eval_tokens"] * per_token / 3
  return train + evals * info["eval_tokens"] * per_token / 3 + extra


def health_checks(root, arms: list, corpus, rates: dict, method_runs: dict, num_steps: int,
                  batch: int, seq_len: int, infos: dict) -> list:
  """The study's health lines: starvation and repetition of every arm under
  the main run's budget, Step 2's collapse, proxy-vs-reference and rounds for
  the DoReMi arms, and the tokenizer. `infos`: every arm's seed-0
  run_info."""
  domains = list(corpus.domains)
  sizes = dict(zip(domains, corpus.train_tokens))
  lines = []
  for arm in arms:
    w = {d: float(x) for d, x in zip(domains, rates[arm])}
    lines.append(health.starved_domains(domains, w, num_steps, batch, f" ({arm})"))
    lines.append(health.repetition(domains, w, num_steps * batch, seq_len, sizes, f" ({arm})",
                                   infos[arm].get("tokens_per_row"),
                                   bool(infos[arm].get("equal_rows"))))
  # DoReMi's own runs, once each (several arms may share them), by round
  proxies = list(dict.fromkeys(d for arm in arms for d in method_runs.get(arm, [])
                               if files.path(d).name == "proxy"))
  for d in proxies:
    parts = files.path(d).relative_to(files.path(root)).parts[:-1]   # [scale,] seed, round
    parts = parts[1:] if parts[0] == rundir.STUDY_DOREMI else parts
    label = f" ({', '.join(p.replace('_', ' ') for p in parts)})" if len(proxies) > 1 else ""
    for line in (health.weight_collapse(files.read_jsonl(files.path(d) / rundir.DOREMI_WEIGHTS_LOG))
                 + health.proxy_below_reference(files.read_json(files.path(d) / rundir.EVAL))):
      lines.append(dict(line, check=line["check"] + label))
  for pipeline in dict.fromkeys(files.path(d).parent.parent for d in proxies):
    seed = f" ({pipeline.name.replace('_', ' ')})" if pipeline.name.startswith("seed_") else ""
    lines += [dict(line, check=line["check"] + seed)
              for line in health.rounds_converged(rundir.load_pipeline_state(pipeline))]
  return lines + health.tokenizer_line(infos[arms[0]].get("tokenizer"), domains,
                                       corpus.bytes_per_token)


def eval_split(root) -> str:
  """The split every final evaluation of the study is on (each eval.json
  says; they must agree)."""
  splits = {files.read_json(p).get("split", "validation")
            for p in files.path(root).glob(f"arms/*/seed_*/{rundir.EVAL}")}
  if len(splits) != 1:
    raise ValueError(f"the study's evaluations are on different splits: {sorted(splits)}")
  return splits.pop()


def _seed_values(root, arm: str, seeds: int, domains, floors) -> dict:
  """One arm's final evaluations over seeds: [seed] lists per metric."""
  finals = [files.read_json(rundir.arm_dir(root, arm, s) / rundir.EVAL) for s in range(seeds)]
  dom = {d: [f["per_domain"][d]["loss"] for f in finals] for d in domains}
  return {
      "finals": finals,
      "logs": [files.read_jsonl(rundir.arm_dir(root, arm, s) / rundir.EVAL_LOG)
               for s in range(seeds)],
      "uniform_avg": [f["uniform_average"] for f in finals],
      "worst_case": [f["worst_case"]["loss"] for f in finals],
      "excess_over_floor": ([stats.excess_over_floor({d: dom[d][s] for d in domains}, floors)
                             for s in range(seeds)] if floors else None),
      "domains": dom,
      "curves": [_curve(rundir.arm_dir(root, arm, s)) for s in range(seeds)],
  }


def _vs_baseline(p: dict, b: dict, domains, level: float, m: int) -> dict:
  """Paired differences of an arm's seed values `p` against the baseline's `b`."""
  vs = {key: stats.paired_difference(p[key], b[key], level, m)
        for key in ("uniform_avg", "worst_case")}
  vs["domains"] = {d: stats.paired_difference(p["domains"][d], b["domains"][d], level, m)
                   for d in domains}
  if p["excess_over_floor"] is not None:
    vs["excess_over_floor"] = stats.paired_difference(
        p["excess_over_floor"], b["excess_over_floor"], level, m)
  return vs


def _cost(root, arm: str, seeds: int, method_runs: dict, main_flops: float,
          per_seed: bool) -> dict:
  """One seed's cost of an arm: its main run and its method's own runs (a
  per-seed method's runs for one seed; a shared method's whole runs)."""
  own = sum(run_flops(rundir.arm_dir(root, arm, s)) for s in range(seeds)) / seeds
  extra = sum(run_flops(files.path(d)) for d in method_runs.get(arm, []))
  extra /= seeds if per_seed else 1
  return {"main_run_flops": own, "method_flops": extra, "total_flops_per_seed": own + extra,
          "fraction_of_one_main_run": (own + extra) / main_flops}


def _tasks_and_primary(per: dict, arms: list, baseline: str, level: float, m: int,
                       primary: str, results: dict) -> tuple:
  """(the primary metric's name, every task metric's statistics); adds
  each arm's `primary` statistics to `results`."""
  finals = {arm: per[arm]["finals"] for arm in arms}
  logs = {arm: per[arm]["logs"] for arm in arms}
  tasks = task_stats.analyse(finals, logs, baseline, level, m)
  key = task_stats.resolve(primary, finals[baseline][0])
  if key is None:
    raise ValueError(f"train_study.primary {primary!r} is not among the evaluated metrics")
  head = task_stats.analyse_metric(key, finals, logs, baseline, level, m)
  for arm in arms:
    results[arm]["primary"] = head[arm]
  return key, tasks


def power_of(arm: list, baseline: list, level: float, power: float, difference: float) -> dict:
  """How many paired seeds an arm's difference from the baseline (per-seed
  values of one metric) would need at `level` and `power`: for
  `difference`, and for the difference measured."""
  d = np.asarray(arm, np.float64) - np.asarray(baseline, np.float64)
  sd = float(np.std(d, ddof=1))
  return {"sd_of_paired_difference": sd, "level": level, "power": power,
          "difference": difference,
          "seeds_needed": ladder_stats.seeds_needed(sd, difference, level, power),
          "observed_difference": float(d.mean()),
          "seeds_needed_for_observed": ladder_stats.seeds_needed(sd, d.mean(), level, power)}


def _losses(p: dict, domains, level: float) -> dict:
  """An arm's losses over seeds: means with intervals and the spread."""
  r = {"uniform_avg": stats.summarize(p["uniform_avg"], level),
       "worst_case": stats.summarize(p["worst_case"], level),
       "domains": {d: stats.summarize(p["domains"][d], level) for d in domains}}
  if p["excess_over_floor"] is not None:
    r["excess_over_floor"] = stats.summarize(p["excess_over_floor"], level)
  r["spread"] = {"uniform_avg_std": r["uniform_avg"]["std"],
                 "worst_case_std": r["worst_case"]["std"]}
  return r


def analyse(root, arms: list, seeds: int, baseline: str, corpus, rates: dict,
            method_runs: dict, level: float = 0.95, method_seeds: str = "per_seed",
            primary: str = "uniform_avg", power: tuple = (0.8, 0.01),
            method_root=None) -> dict:
  """study.json: per arm and domain, means with intervals over seeds, paired
  differences against the baseline with verdicts, the speed-up to the
  baseline's final loss, the seed-to-seed spread and the cost; the same
  for every downstream-task metric (`task_stats`), and for `primary`, the
  metric the headline verdict uses, with the seeds each arm would need
  (`power`: (power, difference), `power_of`). `root` holds the arms' runs;
  `method_root` the methods' own (default `root`; a ladder rung's arms are
  under the study's RUN/rungs/<rung>/)."""
  domains = list(corpus.domains)
  floors = (dict(zip(domains, corpus.entropy_floors))
            if corpus.entropy_floors is not None else None)
  per = {arm: _seed_values(root, arm, seeds, domains, floors) for arm in arms}
  main_flops = run_flops(rundir.arm_dir(root, baseline, 0))
  infos = {arm: files.read_json(rundir.arm_dir(root, arm, 0) / rundir.RUN_INFO) for arm in arms}
  info = infos[baseline]
  seq_len = info["seq_len"]
  checks = health_checks(method_root or root, arms, corpus, rates, method_runs,
                         info["num_steps"], info["tokens_per_step"] // seq_len, seq_len, infos)
  m = max(len(arms) - 1, 1)
  results = {}
  for arm in arms:
    p = per[arm]
    r = _losses(p, domains, level)
    r["weights"] = {d: float(w) for d, w in zip(domains, rates[arm])}
    r["shares"] = health.shares(domains, r["weights"], corpus.bytes_per_token,
                                infos[arm].get("tokens_per_row"),
                                bool(infos[arm].get("equal_rows")))
    r["cost"] = _cost(root, arm, seeds, method_runs, main_flops, method_seeds == "per_seed")
    if arm == baseline:
      r["speedup"] = {"mean": 1.0, "ci": [1.0, 1.0], "reached": seeds}
    else:
      r["vs_baseline"] = _vs_baseline(p, per[baseline], domains, level, m)
      r["speedup"] = stats.speedup(p["curves"], per[baseline]["curves"], level, m)
    results[arm] = r
  key, tasks = _tasks_and_primary(per, arms, baseline, level, m, primary, results)
  for arm in arms:
    if arm != baseline:
      results[arm]["power"] = power_of(results[arm]["primary"]["values"],
                                       results[baseline]["primary"]["values"],
                                       stats.adjusted_level(level, m), *power)
  return {
      "primary": key, "tasks": tasks,
      "task_curves": task_stats.primary_curves({arm: per[arm]["logs"] for arm in arms}),
      "baseline": baseline, "arms": list(arms), "seeds": seeds, "domains": domains,
      "level": level, "comparisons": m, "split": eval_split(root),
      "method_seeds": method_seeds,
      "main_model": {"num_params": info.get("num_params"),
                     "train_tokens": info["tokens_per_step"] * info["num_steps"],
                     "flops_per_run": main_flops},
      "adjustment": f"Bonferroni over the {m} arm(s) compared with the baseline: each "
                    f"interval at confidence {stats.adjusted_level(level, m):.4f}",
      "curves": {arm: [[list(map(int, c[0])), list(map(float, c[1]))] for c in per[arm]["curves"]]
                 for arm in arms},
      "results": results,
      "health": checks,
  }
