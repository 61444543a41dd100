"""Downstream-task metrics in the study: per-seed values read from the arms'
evaluations, their means and intervals, paired differences with verdicts,
and the speed-up to the baseline's final value (the DoReMi paper's
"reaches the baseline's accuracy N times faster"), all with
`analysis.stats`.

A metric is named "TASK/METRIC" (e.g. "markov_next/prob_correct"); "TASK"
alone means that task's primary metric (its `primary` field, BPB). Lower
is better for BPB, higher for accuracy, the normalised probability of the
correct choice and exact match: verdicts and speed-ups follow the
direction. The losses' own names, "uniform_avg" and "worst_case", are
metrics too (`train_study.primary`).
"""

from __future__ import annotations

from typing import Optional, Sequence

from doremi_jax.analysis import stats

# Every per-task number a summary carries that is a metric, and its direction.
HIGHER_IS_BETTER = {"acc": True, "acc_per_char": True, "acc_per_token": True,
                    "prob_correct": True, "exact_match": True, "bpb": False}
LOSS_METRICS = ("uniform_avg", "worst_case")


def higher_is_better(key: str) -> bool:
  """The direction of metric `key` ("TASK/METRIC" or a loss name)."""
  return HIGHER_IS_BETTER.get(key.rpartition("/")[2], False)


def metric_keys(summary: dict) -> list:
  """Every "TASK/METRIC" an evaluation summary holds, in its order."""
  return [f"{task}/{m}" for task, row in summary.get("tasks", {}).items()
          for m in HIGHER_IS_BETTER if m in row]


def resolve(key: str, summary: dict) -> Optional[str]:
  """`key` as a "TASK/METRIC" or loss name present in `summary`, or None."""
  if key in LOSS_METRICS:
    return key
  tasks = summary.get("tasks", {})
  if "/" not in key:
    return f"{key}/{tasks[key]['primary']}" if key in tasks else None
  task, _, metric = key.rpartition("/")
  return key if metric in tasks.get(task, {}) and metric in HIGHER_IS_BETTER else None


def value(summary: dict, key: str) -> float:
  """Metric `key` of an evaluation summary."""
  if key == "uniform_avg":
    return float(summary["uniform_average"])
  if key == "worst_case":
    return float(summary["worst_case"]["loss"])
  task, _, metric = key.rpartition("/")
  return float(summary["tasks"][task][metric])


def curve(rows: Sequence[dict], key: str) -> tuple:
  """(steps, values) of metric `key` over a run's evaluations (eval.jsonl
  rows; the last row of a step wins, as after a resume)."""
  by_step = {int(r["step"]): value(r, key) for r in rows if resolve(key, r) == key}
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def _oriented(curves: Sequence[tuple], key: str) -> list:
  """Curves where lower is better (a higher-is-better metric negated), as
  `stats.speedup` reads them."""
  sign = -1.0 if higher_is_better(key) else 1.0
  return [(steps, [sign * v for v in vals]) for steps, vals in curves]


def analyse_metric(key: str, finals: dict, logs: dict, baseline: str, level: float,
                   comparisons: int) -> dict:
  """{arm: {summary, vs_baseline, speedup}} of metric `key`. `finals`:
  {arm: [final summary per seed]}; `logs`: {arm: [eval.jsonl rows per seed]}."""
  up = higher_is_better(key)
  values = {arm: [value(f, key) for f in fs] for arm, fs in finals.items()}
  curves = {arm: _oriented([curve(rows, key) for rows in seeds], key)
            for arm, seeds in logs.items()}
  out = {}
  for arm in finals:
    row = dict(stats.summarize(values[arm], level), higher_is_better=up, values=values[arm])
    if arm != baseline:
      row["vs_baseline"] = stats.paired_difference(values[arm], values[baseline], level,
                                                   comparisons, up)
      row["speedup"] = stats.speedup(curves[arm], curves[baseline], level, comparisons)
    out[arm] = row
  return out


def primary_curves(logs: dict) -> dict:
  """{"TASK/PRIMARY": {arm: [[steps, values] per seed]}} for every task of
  the first arm's first evaluation (what the study's task plot draws)."""
  first = next(iter(logs.values()))[0]
  keys = [f"{t}/{row['primary']}" for t, row in (first[-1] if first else {}).get("tasks",
                                                                                  {}).items()]
  return {k: {arm: [list(map(list, curve(rows, k))) for rows in seeds]
              for arm, seeds in logs.items()} for k in keys}


def analyse(finals: dict, logs: dict, baseline: str, level: float, comparisons: int) -> dict:
  """{key: analyse_metric(key)} for every task metric of the baseline's
  seed-0 evaluation (every arm evaluates the same tasks)."""
  keys = metric_keys(finals[baseline][0])
  return {k: analyse_metric(k, finals, logs, baseline, level, comparisons) for k in keys}
