"""The comparison of two main models, DoReMi's weights against the
baseline's, from their final evaluations (eval.json summaries, see
`evaluate.summarize`), and its console tables."""

from __future__ import annotations

from doremi_jax.analysis import task_stats


def compare(doremi_summary: dict, baseline_summary: dict) -> dict:
  """Per-domain test loss of two main models (DoReMi vs baseline);
  `delta` < 0 means DoReMi is better. Both must be on the same split,
  which the comparison names."""
  split = doremi_summary.get("split", "validation")
  if baseline_summary.get("split", "validation") != split:
    raise ValueError(f"the two evaluations are on different splits: {split} and "
                     f"{baseline_summary.get('split', 'validation')}")
  rows = {}
  for d, r in doremi_summary["per_domain"].items():
    b = baseline_summary["per_domain"][d]["loss"]
    rows[d] = {"doremi": r["loss"], "baseline": b, "delta": r["loss"] - b,
               "doremi_perplexity": r["perplexity"],
               "baseline_perplexity": baseline_summary["per_domain"][d]["perplexity"]}
    if "entropy_floor" in r:
      rows[d]["entropy_floor"] = r["entropy_floor"]
  du, bu = doremi_summary["uniform_average"], baseline_summary["uniform_average"]
  agg = {"uniform_average": {"doremi": du, "baseline": bu, "delta": du - bu}}
  dw, bw = doremi_summary["worst_case"], baseline_summary["worst_case"]
  agg["worst_case"] = {"doremi": dw["loss"], "baseline": bw["loss"],
                       "delta": dw["loss"] - bw["loss"],
                       "doremi_domain": dw["domain"], "baseline_domain": bw["domain"]}
  out = {"split": split, "per_domain": rows, **agg,
         "domains_improved": sum(1 for r in rows.values() if r["delta"] < 0),
         "num_domains": len(rows)}
  tasks = compare_tasks(doremi_summary.get("tasks", {}), baseline_summary.get("tasks", {}))
  if tasks:
    out["tasks"] = tasks
  return out


def compare_tasks(doremi_tasks: dict, baseline_tasks: dict) -> dict:
  """{task: {metric: {doremi, baseline, delta}}} over the tasks both
  evaluated (`delta` is DoReMi minus baseline; the metric's direction is
  `analysis.task_stats.HIGHER_IS_BETTER`), with each task's primary metric."""
  out = {}
  for task, d in doremi_tasks.items():
    b = baseline_tasks.get(task)
    if b is None:
      continue
    row = {m: {"doremi": d[m], "baseline": b[m], "delta": d[m] - b[m]}
           for m in METRICS if m in d and m in b}
    out[task] = dict(row, primary=d.get("primary", "bpb"))
  return out


# The task metrics an evaluation summary can carry (evaluate.Evaluator,
# tasks.suite), BPB first.
METRICS = ("bpb", *[m for m in task_stats.HIGHER_IS_BETTER if m != "bpb"])


def format_tasks(tasks: dict) -> list:
  """Console lines of one model's task metrics ({task: metrics})."""
  lines = []
  for task, r in tasks.items():
    shown = "  ".join(f"{m} {r[m]:.4f}" for m in METRICS if m in r)
    lines.append(f"{task:<22}{shown}")
  return lines


def format_comparison(cmp: dict) -> str:
  lines = [f"{'domain':<14}{'DoReMi':>9}{'baseline':>10}{'delta':>9}"]
  for d, r in cmp["per_domain"].items():
    lines.append(f"{d:<14}{r['doremi']:9.4f}{r['baseline']:10.4f}{r['delta']:+9.4f}")
  for key, label in (("uniform_average", "uniform avg"), ("worst_case", "worst case")):
    r = cmp[key]
    lines.append(f"{label:<14}{r['doremi']:9.4f}{r['baseline']:10.4f}{r['delta']:+9.4f}")
  lines.append(f"DoReMi is better on {cmp['domains_improved']} of {cmp['num_domains']} domains "
               f"({cmp.get('split', 'validation')} split).")
  for task, row in cmp.get("tasks", {}).items():
    r = row[row["primary"]]
    lines.append(f"task {task} ({row['primary']}): DoReMi {r['doremi']:.4f}, baseline "
                 f"{r['baseline']:.4f}, delta {r['delta']:+.4f}")
  return "\n".join(lines)


def format_table(summary: dict) -> str:
  """One model's evaluation: loss, perplexity and entropy floor per domain,
  the uniform average and the worst case."""
  lines = [f"{'domain':<14}{'loss':>9}{'ppl':>10}{'floor':>9}"]
  for d, r in summary["per_domain"].items():
    floor = f"{r['entropy_floor']:9.3f}" if "entropy_floor" in r else f"{'-':>9}"
    lines.append(f"{d:<14}{r['loss']:9.4f}{r['perplexity']:10.2f}{floor}")
  lines.append(f"{'uniform avg':<14}{summary['uniform_average']:9.4f}")
  lines.append(f"{'worst case':<14}{summary['worst_case']['loss']:9.4f}  "
               f"({summary['worst_case']['domain']})")
  return "\n".join(lines + format_tasks(summary.get("tasks", {})))
