r"""`python -m doremi_jax.report RUN_DIR`: report.md and plots for a DoReMi run.

RUN_DIR is a `pipeline` run directory (round_<r>/reference, round_<r>/proxy,
main_doremi, main_baseline) or the directory of a single stage. The report
shows what is there, says what is missing or unfinished, and never fails
because a stage has not run yet. Plots go to RUN_DIR/plots/.
"""

from __future__ import annotations

import io as pyio
import re
import time
from typing import Optional

from doremi_jax import evaluate
from doremi_jax import io
from doremi_jax import pipeline
from doremi_jax.config import ConfigError

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


# --------------------------------------------------------------------------
# Reading a run directory


def _read(path) -> Optional[dict]:
  return io.read_json(path) if io.exists(path) else None


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
    self.name, self.kind, self.path = name, kind, io.path(path)
    self.exists = io.exists(self.path)
    self.info = _read(self.path / "run_info.json") if self.exists else None
    self.complete = _read(self.path / "complete.json") if self.exists else None
    self.eval = _read(self.path / "eval.json") if self.complete else None
    self.metrics = _by_step(io.read_jsonl(self.path / "metrics.jsonl")) if self.exists else []
    self.weights_log = (_by_step(io.read_jsonl(self.path / "doremi_weights.jsonl"))
                        if self.exists and kind == "proxy" else [])

  @property
  def num_steps(self) -> Optional[int]:
    return (self.info or {}).get("num_steps")

  @property
  def last_step(self) -> Optional[int]:
    ckpts = self.path / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if io.exists(ckpts) else []
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
  root = io.path(run_dir)
  if not io.exists(root):
    raise ConfigError(f"run directory {run_dir!r} does not exist.")
  state = pipeline.load_state(root)
  rounds = {int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"round_(\d+)", p.name))}
  if state:
    rounds |= set(range(1, len(state["rounds"]) + 1))
    if state.get("status") != "complete" and state.get("converged_at_round") is None:
      rounds |= set(range(1, state.get("rounds_requested", 1) + 1))
  is_pipeline = bool(state or rounds or io.exists(root / pipeline.MAIN_DOREMI)
                     or io.exists(root / pipeline.MAIN_BASELINE))
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
      stages.append(Stage(f"round_{r}/{kind}", kind, pipeline.round_dir(root, r, kind)))
  for name, key in ((pipeline.MAIN_DOREMI, "run_main"), (pipeline.MAIN_BASELINE, "run_baseline")):
    if (state or {}).get(key, True) or io.exists(root / name):
      stages.append(Stage(name, "main", root / name))
  return stages, state


# --------------------------------------------------------------------------
# Plots


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _colors(domains):
  plt = _plt()
  cmap = plt.get_cmap("tab10" if len(domains) <= 10 else "tab20")
  return {d: cmap(i % cmap.N) for i, d in enumerate(domains)}


def _save(fig, path):
  buf = pyio.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  _plt().close(fig)
  io.path(path).parent.mkdir(parents=True, exist_ok=True)
  io.path(path).write_bytes(buf.getvalue())


def plot_proxy_weights(stage: Stage, path) -> bool:
  rows = stage.weights_log
  if not rows:
    return False
  plt = _plt()
  domains = rows[0]["domain_names"]
  colors = _colors(domains)
  steps = [r["step"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
  for ax, key, title in ((axes[0], "domain_weights", "current weights $\\alpha_t$"),
                         (axes[1], "average_weights", "running average (the DoReMi weights)")):
    for i, d in enumerate(domains):
      ax.plot(steps, [r[key][i] for r in rows], label=d, color=colors[d], marker=".")
    ax.set_title(title)
    ax.set_xlabel("proxy step")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("domain weight")
  axes[1].legend(title="domain", loc="center left", bbox_to_anchor=(1.01, 0.5))
  total = stage.num_steps
  note = "" if stage.complete else f" (unfinished: {steps[-1]} of {total or '?'} steps)"
  fig.suptitle(f"Step 2 domain weights over proxy steps, {stage.name}{note}")
  _save(fig, path)
  return True


def _grouped_bars(ax, domains, series: list, ylabel: str, fmt: str = "{:.3f}"):
  import numpy as np
  x = np.arange(len(domains))
  width = 0.8 / len(series)
  for j, (label, values, color) in enumerate(series):
    bars = ax.bar(x + (j - (len(series) - 1) / 2) * width, values, width, label=label,
                  color=color)
    for b, v in zip(bars, values):
      ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                  ha="center", va="bottom", fontsize=8)
  ax.set_xticks(x, domains, rotation=30 if len(domains) > 6 else 0, ha="right"
                if len(domains) > 6 else "center")
  ax.set_ylabel(ylabel)
  ax.grid(axis="y", alpha=0.3)
  ax.legend()


def plot_final_vs_reference(domains, reference: dict, final: dict, path, label: str) -> bool:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(domains)), 4.2))
  _grouped_bars(ax, domains, [("reference weights (round 1)", [reference[d] for d in domains],
                               "#9e9e9e"),
                              (label, [final[d] for d in domains], "#1f77b4")], "domain weight")
  ax.set_xlabel("domain")
  ax.set_title("DoReMi domain weights vs the reference weights")
  _save(fig, path)
  return True


def plot_rounds(domains, trajectory: list, path) -> bool:
  """trajectory: [(round, {domain: weight})], round 0 = initial weights."""
  if len(trajectory) < 2:
    return False
  plt = _plt()
  colors = _colors(domains)
  fig, ax = plt.subplots(figsize=(8, 4.2))
  xs = [r for r, _ in trajectory]
  for d in domains:
    ax.plot(xs, [w[d] for _, w in trajectory], marker="o", label=d, color=colors[d])
  ax.set_xticks(xs, ["initial" if r == 0 else f"round {r}" for r in xs])
  ax.set_xlabel("iterated DoReMi round (averaged weights at the end of each round)")
  ax.set_ylabel("domain weight")
  ax.set_title("Domain weights across rounds")
  ax.grid(alpha=0.3)
  ax.legend(title="domain", loc="center left", bbox_to_anchor=(1.01, 0.5))
  _save(fig, path)
  return True


def plot_main_comparison(cmp: dict, path) -> bool:
  plt = _plt()
  domains = list(cmp["per_domain"])
  fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(domains)), 4.4))
  rows = cmp["per_domain"]
  _grouped_bars(ax, domains, [("main model, DoReMi weights", [rows[d]["doremi"] for d in domains],
                               "#1f77b4"),
                              ("main model, baseline weights",
                               [rows[d]["baseline"] for d in domains], "#ff7f0e")],
                "validation loss (nats/token)", "{:.2f}")
  floors = [rows[d].get("entropy_floor") for d in domains]
  if all(f is not None for f in floors):
    ax.scatter(range(len(domains)), floors, marker="_", s=900, color="black", zorder=3,
               label="entropy floor")
    ax.legend()
  ax.set_xlabel("domain")
  ax.set_title(f"Per-domain validation loss: DoReMi better on {cmp['domains_improved']} of "
               f"{cmp['num_domains']} domains")
  _save(fig, path)
  return True


def plot_training_curves(stages: list, path) -> bool:
  stages = [s for s in stages if s.metrics]
  if not stages:
    return False
  plt = _plt()
  cols = 2 if len(stages) > 1 else 1
  rows_n = (len(stages) + cols - 1) // cols
  fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 3.6 * rows_n), squeeze=False)
  domains = (stages[0].info or {}).get("domains")
  colors = _colors(domains or [])
  for ax, s in zip(axes.flat, stages):
    steps = [r["step"] for r in s.metrics]
    key = "proxy_domain_loss" if s.kind == "proxy" else "domain_loss"
    if domains and key in s.metrics[0]:
      for i, d in enumerate(domains):
        # A domain absent from a logged batch has no loss at that step.
        ys = [r[key][i] if r.get("domain_tokens", [1] * len(domains))[i] > 0 else float("nan")
              for r in s.metrics]
        ax.plot(steps, ys, label=d, color=colors[d], marker="." if len(steps) < 30 else None)
    ax.plot(steps, [r["loss"] for r in s.metrics], color="black", linestyle="--",
            label="DRO objective" if s.kind == "proxy" else "mean loss")
    ax.set_title(s.name + ("" if s.complete else " (unfinished)"))
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(stages):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.suptitle("Training curves (per-domain train loss)")
  fig.tight_layout()
  _save(fig, path)
  return True


# --------------------------------------------------------------------------
# The report


def _table(header: list, rows: list) -> list:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return out


def _f(x, nd=4):
  return "—" if x is None else f"{x:.{nd}f}"


def write_report(run_dir, out_dir=None) -> str:
  """Writes RUN_DIR/report.md and RUN_DIR/plots/*.png; returns the report path."""
  stages, state = discover(run_dir)
  root = io.path(out_dir or run_dir)
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

  # Main models
  mains = {s.name: s for s in stages if s.kind == "main"}
  md += ["## Main model: DoReMi vs baseline weights", ""]
  dm, bm = mains.get(pipeline.MAIN_DOREMI), mains.get(pipeline.MAIN_BASELINE)
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
  io.write_text(path, "\n".join(md))
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
  from doremi_jax import config as _config
  _config.run_tool(main)
