r"""`python -m doremi_jax.report RUN_DIR`: report.md and plots for a DoReMi run.

RUN_DIR is a `pipeline` run directory (round_<r>/reference, round_<r>/proxy,
main_doremi, main_baseline) or the directory of a single stage. The report
shows what is there, says what is missing or unfinished, and never fails
because a stage has not run yet. Plots go to RUN_DIR/plots/.
"""

from __future__ import annotations

import re
import time
from typing import Optional

from doremi_jax import evaluate
from doremi_jax import files
from doremi_jax import health
from doremi_jax import rundir
from doremi_jax.plots import (plot_final_vs_reference, plot_main_comparison,
                              plot_proxy_weights, plot_rounds, plot_training_curves)
from doremi_jax.config import ConfigError

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


# --------------------------------------------------------------------------
# Reading a run directory


def _read(path) -> Optional[dict]:
  return files.read_json(path) if files.exists(path) else None


def _by_step(rows: list) -> list:
  """Rows of a JSONL log, one per step (the last written wins: a resumed run
  may have logged a step twice)."""
  out = {}
  for r in rows:
    out[int(r["step"])] = r
  return [out[s] for s in sorted(out)]


class Stage:
  """What one stage directory holds."""

  def __init__(self, name: str, kind: str, path):
    self.name, self.kind, self.path = name, kind, files.path(path)
    self.exists = files.exists(self.path)
    self.info = _read(self.path / "run_info.json") if self.exists else None
    self.complete = _read(self.path / "complete.json") if self.exists else None
    self.eval = _read(self.path / "eval.json") if self.complete else None
    self.metrics = _by_step(files.read_jsonl(self.path / "metrics.jsonl")) if self.exists else []
    self.weights_log = (_by_step(files.read_jsonl(self.path / "doremi_weights.jsonl"))
                        if self.exists and kind == "proxy" else [])

  @property
  def num_steps(self) -> Optional[int]:
    return (self.info or {}).get("num_steps")

  @property
  def last_step(self) -> Optional[int]:
    ckpts = self.path / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if files.exists(ckpts) else []
    return max(steps) if steps else None

  def status(self) -> str:
    if self.complete:
      return f"complete ({self.complete['num_steps']} steps, {self.complete['seconds']:.0f} s)"
    if not self.exists:
      return "missing: not run yet"
    last = self.last_step
    if last is None:
      return "started, no checkpoint yet"
    return (f"unfinished: last checkpoint at step {last} of {self.num_steps or '?'} "
            "(re-run the same command to resume)")


def discover(run_dir) -> tuple[list, Optional[dict]]:
  """Returns (stages in pipeline order, pipeline.json or None)."""
  root = files.path(run_dir)
  if not files.exists(root):
    raise ConfigError(f"run directory {run_dir!r} does not exist.")
  state = rundir.load_pipeline_state(root)
  rounds = {int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"round_(\d+)", p.name))}
  if state:
    rounds |= set(range(1, len(state["rounds"]) + 1))
    if state.get("status") != "complete" and state.get("converged_at_round") is None:
      rounds |= set(range(1, state.get("rounds_requested", 1) + 1))
  is_pipeline = bool(state or rounds or files.exists(root / rundir.MAIN_MODEL_DOREMI)
                     or files.exists(root / rundir.MAIN_MODEL_BASELINE))
  if not is_pipeline:
    info = _read(root / "run_info.json")
    if info is None:
      raise ConfigError(f"{run_dir!r} holds no DoReMi run: neither a pipeline run "
                        "directory (round_<r>/, main_doremi/) nor a stage directory "
                        "(run_info.json).")
    return [Stage(info.get("stage", "stage"), info.get("stage", "reference"), root)], None
  stages = []
  for r in sorted(rounds) or [1]:
    for kind in ("reference", "proxy"):
      stages.append(Stage(f"round_{r}/{kind}", kind, rundir.round_dir(root, r, kind)))
  for name, key in ((rundir.MAIN_MODEL_DOREMI, "run_main"), (rundir.MAIN_MODEL_BASELINE, "run_baseline")):
    if (state or {}).get(key, True) or files.exists(root / name):
      stages.append(Stage(name, "main", root / name))
  return stages, state


def _table(header: list, rows: list) -> list:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return out


def _f(x, nd=4):
  return "—" if x is None else f"{x:.{nd}f}"


def write_report(run_dir, out_dir=None) -> str:
  """Writes RUN_DIR/report.md and RUN_DIR/plots/*.png; returns the report path."""
  stages, state = discover(run_dir)
  root = files.path(out_dir or run_dir)
  plots = root / PLOTS_DIR
  md = [f"# DoReMi report: `{run_dir}`", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        "`python -m doremi_jax.report`.", ""]
  missing, made = [], []

  # Stages
  md += ["## Stages", ""]
  md += _table(["stage", "directory", "status"],
               [[s.name, f"`{s.path}`", s.status()] for s in stages])
  md.append("")
  for s in stages:
    if not s.complete:
      missing.append(f"{s.name}: {s.status()}")
  if state:
    md.append(f"Pipeline status: **{state.get('status')}**"
              + (f", {state['seconds']:.0f} s in total" if "seconds" in state else "") + ".")
    md.append("")

  domains = next((s.info["domains"] for s in stages if s.info), None)
  proxies = [s for s in stages if s.kind == "proxy"]
  done_proxies = [s for s in proxies if s.complete]

  # Weights
  initial = (state or {}).get("initial_reference_weights")
  if initial is None and stages and stages[0].kind == "reference" and stages[0].exists:
    initial = _read(stages[0].path / "reference_weights.json")
  trajectory = [(0, initial)] if initial else []
  for s in done_proxies:
    r = int(s.name.split("/")[0].split("_")[1]) if s.name.startswith("round_") else 1
    trajectory.append((r, _read(s.path / "average_domain_weights.json")))
  md += ["## Domain weights", ""]
  if domains and len(trajectory) >= 2:
    final_r, final = trajectory[-1]
    header = ["domain"] + [("initial reference" if r == 0 else f"round {r}") for r, _ in
                           trajectory]
    md += _table(header, [[d] + [_f(w[d]) for _, w in trajectory] for d in domains])
    md.append("")
    if state and state.get("rounds"):
      md += _table(["round", "L1 change vs that round's reference weights"],
                   [[r["round"], _f(r["l1_change"])] for r in state["rounds"]])
      md.append("")
      conv = state.get("converged_at_round")
      md.append(f"Tolerance {state['tolerance']:g} (L1); "
                + (f"converged at round {conv}." if conv else
                   f"not converged within {len(state['rounds'])} round(s)."))
      md.append("")
    if plot_final_vs_reference(domains, initial, final, plots / "weights_final_vs_reference.png",
                               f"DoReMi weights (round {final_r})"):
      made.append("weights_final_vs_reference.png")
      md += ["![final weights vs reference](plots/weights_final_vs_reference.png)", ""]
    if plot_rounds(domains, trajectory, plots / "weights_across_rounds.png"):
      made.append("weights_across_rounds.png")
      md += ["![weights across rounds](plots/weights_across_rounds.png)", ""]
  else:
    md += ["No finished Step 2 (proxy) yet, so no DoReMi weights.", ""]

  for s in proxies:
    name = f"proxy_weights_{s.name.split('/')[0]}.png" if "/" in s.name else "proxy_weights.png"
    if plot_proxy_weights(s, plots / name):
      made.append(name)
      md += [f"### Weights during Step 2, {s.name}" + ("" if s.complete else " (unfinished)"),
             "", f"![proxy weights]({PLOTS_DIR}/{name})", ""]

  # Proxy vs reference
  for s in done_proxies:
    ref = _read(s.path / "reference_eval.json")
    if s.eval and ref:
      md += [f"## Proxy vs reference, {s.name} (validation)", ""]
      md += _table(["domain", "reference loss", "proxy loss", "proxy excess"],
                   [[d, _f(ref["per_domain"][d]["loss"]), _f(r["loss"]),
                     _f(r.get("excess_over_reference"))]
                    for d, r in s.eval["per_domain"].items()])
      md.append("")

  # Health checks
  mains = {s.name: s for s in stages if s.kind == "main"}
  md += ["## Health checks", ""]
  checks = []
  for s in done_proxies:
    label = f" ({s.name})" if len(done_proxies) > 1 else ""
    for line in (health.weight_collapse(s.weights_log) + health.proxy_below_reference(s.eval)):
      checks.append(dict(line, check=line["check"] + label))
  checks += health.rounds_converged(state)
  if domains and len(trajectory) >= 2:
    budget = next((s for s in (mains.get(rundir.MAIN_MODEL_DOREMI), stages[0]) if s and s.info),
                  None)
    if budget is not None:
      checks += health.weights_under_budget(domains, trajectory[-1][1], budget.info,
                                            f" (final weights, {budget.name}'s budget)")
  info = next((s.info for s in stages if s.info), None) or {}
  checks += health.tokenizer_line(info.get("tokenizer"), domains, info.get("bytes_per_token"))
  md += health.format_lines(checks) if checks else ["Nothing to check yet."]
  md.append("")
  if domains and len(trajectory) >= 2 and info.get("bytes_per_token") and all(
      r is not None for r in info["bytes_per_token"]):
    sh = health.shares(domains, trajectory[-1][1], info["bytes_per_token"])
    md += ["The final weights as shares of tokens and of UTF-8 bytes:", ""]
    md += _table(["domain", "tokens", "bytes"],
                 [[d, _f(sh["tokens"][d]), _f(sh["bytes"][d])] for d in domains])
    md.append("")

  # Main models
  md += ["## Main model: DoReMi vs baseline weights", ""]
  dm, bm = mains.get(rundir.MAIN_MODEL_DOREMI), mains.get(rundir.MAIN_MODEL_BASELINE)
  if dm and bm and dm.eval and bm.eval:
    cmp = evaluate.compare(dm.eval, bm.eval)
    md += ["Validation loss per domain (nats/token, lower is better; delta = DoReMi − "
           "baseline):", "", "```", evaluate.format_comparison(cmp), "```", ""]
    if plot_main_comparison(cmp, plots / "main_doremi_vs_baseline.png"):
      made.append("main_doremi_vs_baseline.png")
      md += ["![DoReMi vs baseline](plots/main_doremi_vs_baseline.png)", ""]
  else:
    have = [n for n, s in mains.items() if s.eval]
    md += ["Not available: needs finished `main_doremi` and `main_baseline` stages"
           + (f" (finished: {', '.join(have)})." if have else "."), ""]
    for n, s in mains.items():
      if s.eval:
        md += [f"`{n}`:", "", "```", evaluate.format_table(s.eval), "```", ""]

  # Training curves
  md += ["## Training curves", ""]
  if plot_training_curves(stages, plots / "training_curves.png"):
    made.append("training_curves.png")
    md += ["![training curves](plots/training_curves.png)", ""]
  else:
    md += ["No training metrics yet.", ""]

  md += ["## Missing or unfinished", ""]
  md += [f"- {m}" for m in missing] or ["Nothing: every stage finished."]
  md.append("")
  path = root / REPORT_FILE
  files.write_text(path, "\n".join(md))
  return str(path)


def main(argv):
  if len(argv) != 2:
    raise ConfigError("usage: python -m doremi_jax.report RUN_DIR")
  path = write_report(argv[1])
  stages, _ = discover(argv[1])
  unfinished = [s.name for s in stages if not s.complete]
  print(f"report: {path}")
  if unfinished:
    print("missing or unfinished: " + ", ".join(unfinished))


if __name__ == "__main__":
  from doremi_jax.cli import run_tool
  run_tool(main)
