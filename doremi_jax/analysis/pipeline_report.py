r"""The pipeline report: report.json, report.md and plots for a DoReMi run.

RUN_DIR is a `pipeline` run directory (round_<r>/reference, round_<r>/proxy,
main_doremi, main_baseline) or the directory of a single stage. The report
shows what is there, says what is missing or unfinished, and never fails
because a stage has not run yet. `collect` reads the run directory into a
JSON-ready dict (report.json); `render` lays that dict out as Markdown
(report.md) and draws its plots (plots/) from it alone.
"""

from __future__ import annotations

import time
from typing import Optional

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import compare as compare_lib
from doremi_jax.analysis import health
from doremi_jax.analysis import plots as plots_lib
from doremi_jax.config import ConfigError

# The per-step training metrics the curves draw (metrics.jsonl has more).
CURVE_KEYS = ("step", "loss", "domain_loss", "proxy_domain_loss", "domain_tokens")


# --------------------------------------------------------------------------
# Reading a run directory


def read_optional(path) -> Optional[dict]:
  return files.read_json(path) if files.exists(path) else None


def by_step(rows: list) -> list:
  """Rows of a JSONL log, one per step (the last written wins: a resumed run
  may have logged a step twice)."""
  out = {}
  for r in rows:
    out[int(r["step"])] = r
  return [out[s] for s in sorted(out)]


def last_checkpoint(path) -> Optional[int]:
  ckpts = files.path(path) / rundir.CHECKPOINTS
  steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if files.exists(ckpts) else []
  return max(steps) if steps else None


def read_stage(name: str, kind: str, path) -> dict:
  """What one stage directory holds: its run_info, complete.json, final
  evaluation, last checkpoint, training curves and (a proxy) Step 2's
  weight log."""
  path = files.path(path)
  exists = files.exists(path)
  complete = read_optional(path / rundir.COMPLETE) if exists else None
  metrics = by_step(files.read_jsonl(path / rundir.METRICS_LOG)) if exists else []
  return {
      "name": name, "kind": kind, "dir": str(path), "exists": exists,
      "info": read_optional(path / rundir.RUN_INFO) if exists else None,
      "complete": complete,
      "eval": read_optional(path / rundir.EVAL) if complete else None,
      "last_checkpoint": last_checkpoint(path) if exists else None,
      "metrics": [{k: r[k] for k in CURVE_KEYS if k in r} for r in metrics],
      "weights_log": (by_step(files.read_jsonl(path / rundir.DOREMI_WEIGHTS_LOG))
                      if exists and kind == "proxy" else []),
  }


def discover(run_dir) -> tuple[list, Optional[dict]]:
  """Returns (stages in pipeline order as `read_stage` dicts, pipeline.json
  or None)."""
  root = files.path(run_dir)
  if not files.exists(root):
    raise ConfigError(f"run directory {run_dir!r} does not exist.")
  state = rundir.load_pipeline_state(root)
  rounds = {r for p in root.iterdir() if (r := rundir.round_number(p.name)) is not None}
  if state:
    rounds |= set(range(1, len(state["rounds"]) + 1))
    if state.get("status") != "complete" and state.get("converged_at_round") is None:
      rounds |= set(range(1, state.get("rounds_requested", 1) + 1))
  is_pipeline = bool(state or rounds or files.exists(root / rundir.MAIN_MODEL_DOREMI)
                     or files.exists(root / rundir.MAIN_MODEL_BASELINE))
  if not is_pipeline:
    info = read_optional(root / rundir.RUN_INFO)
    if info is None:
      raise ConfigError(f"{run_dir!r} holds no DoReMi run: neither a pipeline run "
                        "directory (round_<r>/, main_doremi/) nor a stage directory "
                        f"({rundir.RUN_INFO}).")
    return [read_stage(info.get("stage", "stage"), info.get("stage", "reference"), root)], None
  stages = []
  for r in sorted(rounds) or [1]:
    for kind in ("reference", "proxy"):
      stages.append(read_stage(f"round_{r}/{kind}", kind, rundir.round_dir(root, r, kind)))
  for name, key in ((rundir.MAIN_MODEL_DOREMI, "run_main"),
                    (rundir.MAIN_MODEL_BASELINE, "run_baseline")):
    if (state or {}).get(key, True) or files.exists(root / name):
      stages.append(read_stage(name, "main", root / name))
  return stages, state


def stage_round(name: str) -> int:
  """The round of a `round_<r>/<kind>` stage name (1 for a lone stage)."""
  return rundir.round_number(name.split("/")[0]) or 1


def unfinished(report: dict) -> list:
  """The names of the stages that have not finished."""
  return [s["name"] for s in report["stages"] if not s["complete"]]


# --------------------------------------------------------------------------
# collect: everything report.md shows, as data


def weight_trajectory(stages: list, state: Optional[dict]) -> list:
  """[[round, {domain: weight}]]: round 0 the initial reference weights,
  then every finished proxy's averaged weights."""
  initial = (state or {}).get("initial_reference_weights")
  if initial is None and stages and stages[0]["kind"] == "reference" and stages[0]["exists"]:
    initial = read_optional(files.path(stages[0]["dir"]) / rundir.REFERENCE_WEIGHTS)
  trajectory = [[0, initial]] if initial else []
  for s in stages:
    if s["kind"] == "proxy" and s["complete"]:
      trajectory.append([stage_round(s["name"]),
                         read_optional(files.path(s["dir"]) / rundir.AVERAGE_WEIGHTS)])
  return trajectory


def proxy_vs_reference(stages: list) -> list:
  """Per finished proxy: each domain's reference loss, proxy loss and the
  proxy's excess over the reference (validation, nats/token)."""
  out = []
  for s in stages:
    if s["kind"] != "proxy" or not s["complete"]:
      continue
    ref = read_optional(files.path(s["dir"]) / rundir.REFERENCE_EVAL)
    if s["eval"] and ref:
      out.append({"stage": s["name"], "per_domain": {
          d: {"reference_loss": ref["per_domain"][d]["loss"], "proxy_loss": r["loss"],
              "proxy_excess": r.get("excess_over_reference")}
          for d, r in s["eval"]["per_domain"].items()}})
  return out


def health_checks(stages: list, state: Optional[dict], domains, trajectory: list) -> list:
  """Step 2's collapse and proxy-vs-reference per finished proxy, the rounds,
  the final weights under the DoReMi main model's budget, the tokenizer."""
  done = [s for s in stages if s["kind"] == "proxy" and s["complete"]]
  checks = []
  for s in done:
    label = f" ({s['name']})" if len(done) > 1 else ""
    for line in (health.weight_collapse(s["weights_log"])
                 + health.proxy_below_reference(s["eval"])):
      checks.append(dict(line, check=line["check"] + label))
  checks += health.rounds_converged(state)
  if domains and len(trajectory) >= 2:
    mains = {s["name"]: s for s in stages if s["kind"] == "main"}
    budget = next((s for s in (mains.get(rundir.MAIN_MODEL_DOREMI), stages[0])
                   if s and s["info"]), None)
    if budget is not None:
      checks += health.weights_under_budget(domains, trajectory[-1][1], budget["info"],
                                            f" (final weights, {budget['name']}'s budget)")
  info = next((s["info"] for s in stages if s["info"]), None) or {}
  return checks + health.tokenizer_line(info.get("tokenizer"), domains,
                                        info.get("bytes_per_token"))


def collect(run_dir) -> dict:
  """report.json: the run's stages (status, curves, Step 2's weight log), the
  weights across rounds, proxy vs reference, health checks, the final
  weights' token and byte shares, and DoReMi vs baseline."""
  stages, state = discover(run_dir)
  info = next((s["info"] for s in stages if s["info"]), None)
  domains = info["domains"] if info else None
  trajectory = weight_trajectory(stages, state)
  bpt = (info or {}).get("bytes_per_token")
  shares = None
  if domains and len(trajectory) >= 2 and bpt and all(r is not None for r in bpt):
    shares = health.shares(domains, trajectory[-1][1], bpt, info.get("tokens_per_row"))
  mains = {s["name"]: s for s in stages if s["kind"] == "main"}
  dm, bm = mains.get(rundir.MAIN_MODEL_DOREMI), mains.get(rundir.MAIN_MODEL_BASELINE)
  comparison = (compare_lib.compare(dm["eval"], bm["eval"])
                if dm and bm and dm["eval"] and bm["eval"] else None)
  return {
      "run_dir": str(run_dir),
      "written_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "pipeline": state,
      "domains": domains,
      "stages": stages,
      "weight_trajectory": trajectory,
      "proxy_vs_reference": proxy_vs_reference(stages),
      "health": health_checks(stages, state, domains, trajectory),
      "final_weight_shares": shares,
      "comparison": comparison,
  }


# --------------------------------------------------------------------------
# render: report.md and plots/ from the dict alone


def table(header: list, rows: list) -> list:
  """Markdown rows of a table."""
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def fmt(x, nd=4) -> str:
  return "—" if x is None else f"{x:.{nd}f}"


def stage_status(s: dict) -> str:
  """One stage's status line: complete, missing, started or where it stopped."""
  if s["complete"]:
    return f"complete ({s['complete']['num_steps']} steps, {s['complete']['seconds']:.0f} s)"
  if not s["exists"]:
    return "missing: not run yet"
  if s["last_checkpoint"] is None:
    return "started, no checkpoint yet"
  return (f"unfinished: last checkpoint at step {s['last_checkpoint']} of "
          f"{(s['info'] or {}).get('num_steps') or '?'} (re-run the same command to resume)")


def render_stages(report: dict) -> list:
  md = ["## Stages", ""]
  md += table(["stage", "directory", "status"],
              [[s["name"], f"`{s['dir']}`", stage_status(s)] for s in report["stages"]])
  md.append("")
  state = report["pipeline"]
  if state:
    md.append(f"Pipeline status: **{state.get('status')}**"
              + (f", {state['seconds']:.0f} s in total" if "seconds" in state else "") + ".")
    md.append("")
  return md


def render_weights(report: dict, plots) -> list:
  """The weights per round, the rounds' L1 changes and convergence, their
  plots, and every proxy's weights over its steps."""
  domains, trajectory, state = report["domains"], report["weight_trajectory"], report["pipeline"]
  md = ["## Domain weights", ""]
  if domains and len(trajectory) >= 2:
    final_r, final = trajectory[-1]
    initial = trajectory[0][1] if trajectory[0][0] == 0 else None
    header = ["domain"] + [("initial reference" if r == 0 else f"round {r}")
                           for r, _ in trajectory]
    md += table(header, [[d] + [fmt(w[d]) for _, w in trajectory] for d in domains])
    md.append("")
    if state and state.get("rounds"):
      md += table(["round", "L1 change vs that round's reference weights"],
                  [[r["round"], fmt(r["l1_change"])] for r in state["rounds"]])
      md.append("")
      conv = state.get("converged_at_round")
      md.append(f"Tolerance {state['tolerance']:g} (L1); "
                + (f"converged at round {conv}." if conv else
                   f"not converged within {len(state['rounds'])} round(s)."))
      md.append("")
    if plots_lib.plot_final_vs_reference(domains, initial, final,
                                         plots / "weights_final_vs_reference.png",
                                         f"DoReMi weights (round {final_r})"):
      md += [f"![final weights vs reference]({rundir.PLOTS}/weights_final_vs_reference.png)", ""]
    if plots_lib.plot_rounds(domains, trajectory, plots / "weights_across_rounds.png"):
      md += [f"![weights across rounds]({rundir.PLOTS}/weights_across_rounds.png)", ""]
  else:
    md += ["No finished Step 2 (proxy) yet, so no DoReMi weights.", ""]
  for s in report["stages"]:
    if s["kind"] != "proxy":
      continue
    name = (f"proxy_weights_{s['name'].split('/')[0]}.png" if "/" in s["name"]
            else "proxy_weights.png")
    if plots_lib.plot_proxy_weights(s, plots / name):
      md += [f"### Weights during Step 2, {s['name']}" + ("" if s["complete"] else
                                                          " (unfinished)"),
             "", f"![proxy weights]({rundir.PLOTS}/{name})", ""]
  return md


def render_checks(report: dict) -> list:
  """Proxy vs reference, the health checks and the final weights' shares."""
  md = []
  for p in report["proxy_vs_reference"]:
    md += [f"## Proxy vs reference, {p['stage']} (test split)", ""]
    md += table(["domain", "reference loss", "proxy loss", "proxy excess"],
                [[d, fmt(r["reference_loss"]), fmt(r["proxy_loss"]), fmt(r["proxy_excess"])]
                 for d, r in p["per_domain"].items()])
    md.append("")
  md += ["## Health checks", ""]
  md += health.format_lines(report["health"]) if report["health"] else ["Nothing to check yet."]
  md.append("")
  sh = report["final_weight_shares"]
  if sh:
    rows = "rows" in sh
    md += ["The final weights as shares of real tokens" + (", of packed rows (drawn so that "
           "the token shares are the weights, by each domain's measured tokens per row)"
           if rows else "") + " and of UTF-8 bytes:", ""]
    md += table(["domain", "tokens"] + (["rows"] if rows else []) + ["bytes"],
                [[d, fmt(sh["tokens"][d])] + ([fmt(sh["rows"][d])] if rows else [])
                 + [fmt(sh["bytes"][d])] for d in report["domains"]])
    md.append("")
  return md


def render_main(report: dict, plots) -> list:
  """DoReMi vs baseline, or what there is of the main models."""
  md = ["## Main model: DoReMi vs baseline weights", ""]
  cmp = report["comparison"]
  if cmp:
    md += [f"Loss per domain on the {cmp.get('split', 'test')} split (nats/token, lower is "
           "better; delta = DoReMi − baseline):", "", "```", compare_lib.format_comparison(cmp),
           "```", ""]
    if plots_lib.plot_main_comparison(cmp, plots / "main_doremi_vs_baseline.png"):
      md += [f"![DoReMi vs baseline]({rundir.PLOTS}/main_doremi_vs_baseline.png)", ""]
    return md + render_tasks(cmp)
  mains = [s for s in report["stages"] if s["kind"] == "main"]
  have = [s["name"] for s in mains if s["eval"]]
  md += ["Not available: needs finished `main_doremi` and `main_baseline` stages"
         + (f" (finished: {', '.join(have)})." if have else "."), ""]
  for s in mains:
    if s["eval"]:
      md += [f"`{s['name']}`:", "", "```", compare_lib.format_table(s["eval"]), "```", ""]
  return md


def render_tasks(cmp: dict) -> list:
  """DoReMi vs baseline on every downstream task (`TrainConfig.eval_tasks`)."""
  if not cmp.get("tasks"):
    return []
  md = [f"Downstream tasks ({cmp.get('split', 'test')} half of each task's items; BPB lower "
        "is better, the others higher; one seed, so no intervals: the `study` stage gives "
        "them):", "", "| task | metric | DoReMi | baseline | delta |", "|---|---|---|---|---|"]
  for task, row in cmp["tasks"].items():
    for metric, r in row.items():
      if metric != "primary":
        mark = " (primary)" if metric == row["primary"] else ""
        md.append(f"| {task} | {metric}{mark} | {r['doremi']:.4f} | {r['baseline']:.4f} | "
                  f"{r['delta']:+.4f} |")
  return md + [""]


def render(report: dict, out_dir) -> str:
  """report.md's text for a `collect` dict; draws the plots into
  OUT_DIR/plots/ (the Markdown links them relative to OUT_DIR)."""
  plots = files.path(out_dir) / rundir.PLOTS
  md = [f"# DoReMi report: `{report['run_dir']}`", "",
        f"Written {report['written_at']} by `python -m doremi_jax.report`.", ""]
  md += render_stages(report) + render_weights(report, plots) + render_checks(report)
  md += render_main(report, plots)
  md += ["## Training curves", ""]
  if plots_lib.plot_training_curves(report["stages"], report["domains"],
                                    plots / "training_curves.png"):
    md += [f"![training curves]({rundir.PLOTS}/training_curves.png)", ""]
  else:
    md += ["No training metrics yet.", ""]
  md += ["## Missing or unfinished", ""]
  md += [f"- {s['name']}: {stage_status(s)}" for s in report["stages"] if not s["complete"]] \
      or ["Nothing: every stage finished."]
  md.append("")
  return "\n".join(md)


def write(run_dir, out_dir=None) -> str:
  """Writes report.json, report.md and plots/*.png into `out_dir` (default
  RUN_DIR); returns report.md's path."""
  report = collect(run_dir)
  root = files.path(out_dir or run_dir)
  files.write_json(root / rundir.REPORT_JSON, report)
  path = root / rundir.REPORT_MD
  files.write_text(path, render(report, root))
  return str(path)
