"""The reports' plots (matplotlib, Agg backend), one function per figure.
Each draws from a report's dict alone (a pipeline stage is a
`pipeline_report.read_stage` dict: `name`, `kind`, `info`, `complete`,
`metrics`, `weights_log`; the study's and the swarm's are study.json and
swarm.json), saves to a path and returns whether there was anything to
draw."""

from __future__ import annotations

import io

from doremi_jax import files


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
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  _plt().close(fig)
  files.path(path).parent.mkdir(parents=True, exist_ok=True)
  files.path(path).write_bytes(buf.getvalue())


def plot_proxy_weights(stage: dict, path) -> bool:
  """Step 2's current and averaged weights over the proxy's steps (every
  step its weight log holds)."""
  rows = stage["weights_log"]
  if not rows:
    return False
  plt = _plt()
  domains = rows[0]["domain_names"]
  colors = _colors(domains)
  steps = [r["step"] for r in rows]
  marker = "." if len(rows) <= 50 else None   # a log of every step: lines alone
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
  for ax, key, title in ((axes[0], "domain_weights", "current weights $\\alpha_t$"),
                         (axes[1], "average_weights", "running average (the DoReMi weights)")):
    for i, d in enumerate(domains):
      ax.plot(steps, [r[key][i] for r in rows], label=d, color=colors[d], marker=marker)
    ax.set_title(title)
    ax.set_xlabel("proxy step")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("domain weight")
  axes[1].legend(title="domain", loc="center left", bbox_to_anchor=(1.01, 0.5))
  total = (stage["info"] or {}).get("num_steps")
  note = "" if stage["complete"] else f" (unfinished: {steps[-1]} of {total or '?'} steps)"
  fig.suptitle(f"Step 2 domain weights over proxy steps, {stage['name']}{note}")
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
                "test loss (nats/token)", "{:.2f}")
  floors = [rows[d].get("entropy_floor") for d in domains]
  if all(f is not None for f in floors):
    ax.scatter(range(len(domains)), floors, marker="_", s=900, color="black", zorder=3,
               label="entropy floor")
    ax.legend()
  ax.set_xlabel("domain")
  ax.set_title(f"Per-domain test loss: DoReMi better on {cmp['domains_improved']} of "
               f"{cmp['num_domains']} domains")
  _save(fig, path)
  return True


def plot_training_curves(stages: list, domains, path) -> bool:
  """Every stage's per-domain and mean train loss over its steps, one panel
  per stage with metrics; `domains` in the order of the logged vectors."""
  stages = [s for s in stages if s["metrics"]]
  if not stages:
    return False
  plt = _plt()
  cols = 2 if len(stages) > 1 else 1
  rows_n = (len(stages) + cols - 1) // cols
  fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 3.6 * rows_n), squeeze=False)
  colors = _colors(domains or [])
  for ax, s in zip(axes.flat, stages):
    steps = [r["step"] for r in s["metrics"]]
    # Step 2's reweight step logs the proxy's loss as proxy_domain_loss; its
    # resample mode (online DoReMi's program) and every other stage as domain_loss.
    key = "proxy_domain_loss" if "proxy_domain_loss" in s["metrics"][0] else "domain_loss"
    if domains and key in s["metrics"][0]:
      for i, d in enumerate(domains):
        # A domain absent from a logged batch has no loss at that step.
        ys = [r[key][i] if r.get("domain_tokens", [1] * len(domains))[i] > 0 else float("nan")
              for r in s["metrics"]]
        ax.plot(steps, ys, label=d, color=colors[d], marker="." if len(steps) < 30 else None)
    ax.plot(steps, [r["loss"] for r in s["metrics"]], color="black", linestyle="--",
            label="DRO objective" if s["kind"] == "proxy" else "mean loss")
    ax.set_title(s["name"] + ("" if s["complete"] else " (unfinished)"))
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
# The study (study.json) and the swarm (swarm.json)


def plot_forest(study: dict, path) -> bool:
  """The paired differences (arm - baseline) with their adjusted intervals:
  the uniform average and every domain, one row per arm."""
  arms = [a for a in study["arms"] if "vs_baseline" in study["results"][a]]
  if not arms:
    return False
  plt = _plt()
  keys = ["uniform_avg"] + list(study["domains"])
  fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 0.5 * len(arms) + 1.6),
                           sharey=True, squeeze=False)
  for ax, key in zip(axes[0], keys):
    for i, arm in enumerate(arms):
      vs = study["results"][arm]["vs_baseline"]
      x = vs[key] if key == "uniform_avg" else vs["domains"][key]
      color = {"wins": "tab:green", "loses": "tab:red"}.get(x["verdict"], "tab:gray")
      ax.errorbar(x["diff"], i, xerr=[[x["diff"] - x["ci"][0]], [x["ci"][1] - x["diff"]]],
                  fmt="o", color=color, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_title("uniform avg" if key == "uniform_avg" else key, fontsize=9)
    ax.tick_params(labelsize=8)
  axes[0][0].set_yticks(range(len(arms)))
  axes[0][0].set_yticklabels(arms)
  fig.suptitle(f"loss difference vs {study['baseline']} (green wins, red loses)", fontsize=10)
  _save(fig, path)
  return True


def _seed_curves(ax, curves: dict, colors: dict, ylabel: str):
  """{arm: [[steps, values] per seed]}: each arm's mean over seeds and
  their range."""
  import numpy as np
  for arm, seeds in curves.items():
    steps = seeds[0][0]
    if not all(s[0] == steps for s in seeds):
      continue
    values = np.array([s[1] for s in seeds])
    ax.plot(steps, values.mean(0), color=colors[arm], label=arm)
    ax.fill_between(steps, values.min(0), values.max(0), color=colors[arm], alpha=0.2)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)


def plot_study_curves(study: dict, path) -> bool:
  """Each arm's uniform-average eval loss over steps: mean and the range over
  seeds."""
  curves = study.get("curves", {})
  if not curves:
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  _seed_curves(ax, curves, _colors(list(curves)), "uniform-average test loss (nats)")
  ax.legend(fontsize=8)
  _save(fig, path)
  return True


def plot_task_curves(study: dict, path) -> bool:
  """One panel per task: each arm's primary metric of the task over steps
  (study.json's `task_curves`), mean and range over seeds."""
  panels = study.get("task_curves") or {}
  if not panels:
    return False
  plt = _plt()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
  for ax, (key, curves) in zip(axes.flat, panels.items()):
    _seed_curves(ax, curves, _colors(list(curves)), key)
    ax.set_title(key, fontsize=9)
  axes.flat[0].legend(fontsize=8)
  _save(fig, path)
  return True


def plot_mixer_rates(schedules: dict, path) -> bool:
  """schedules: {arm: rows of a mixture_weights.jsonl} (one seed each): the
  sampling rates an online mixer used at every step, one panel per arm."""
  schedules = {a: rows for a, rows in schedules.items() if rows}
  if not schedules:
    return False
  plt = _plt()
  domains = next(iter(schedules.values()))[0]["domain_names"]
  colors = _colors(domains)
  fig, axes = plt.subplots(1, len(schedules), figsize=(4.6 * len(schedules), 3.8),
                           sharey=True, squeeze=False)
  for ax, (arm, rows) in zip(axes.flat, schedules.items()):
    steps = [r["step"] for r in rows]
    for i, d in enumerate(domains):
      ax.step(steps, [r["domain_weights"][i] for r in rows], where="post", label=d,
              color=colors[d])
    method = rows[0]["method"]
    ax.set_title(arm if arm == method else f"{arm} ({method})")
    ax.set_xlabel("main-model step")
    ax.grid(alpha=0.3)
  axes.flat[0].set_ylabel("sampling rate")
  axes.flat[-1].legend(title="domain", loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.suptitle("Online mixers' sampling rates over training (seed 0)")
  _save(fig, path)
  return True


def plot_swarm_fits(result: dict, path) -> bool:
  """Out-of-fold predicted vs measured loss of every swarm member, one panel
  per target, one colour per law."""
  plt = _plt()
  targets = list(result["targets"])
  laws = list(result["laws"])
  cols = min(4, len(targets))
  rows = -(-len(targets) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
  colors = dict(zip(laws, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")))
  for ax, t in zip(axes.flat, targets):
    y = result["targets"][t]
    lo, hi = min(y), max(y)
    for law in laws:
      cv = result["laws"][law]["cross_validation"][t]
      rho = cv["spearman"]
      ax.scatter(y, cv["predicted"], s=12, color=colors[law], alpha=0.75,
                 label=f"{law} (rho {rho:.2f})" if rho == rho else f"{law} (rho n/a)")
      lo, hi = min(lo, min(cv["predicted"])), max(hi, max(cv["predicted"]))
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    ax.set_title(t)
    ax.set_xlabel("measured loss")
    ax.set_ylabel("predicted (out of fold)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(targets):]:
    ax.axis("off")
  fig.suptitle(f"Swarm of {result['members']}: cross-validated law predictions")
  fig.tight_layout()
  _save(fig, path)
  return True


def plot_swarm_weights(result: dict, compare, path) -> bool:
  """The laws' optima beside the prior (and `compare`'s weights, e.g.
  DoReMi's)."""
  domains = result["domains"]
  series = [("prior", [result["prior"][d] for d in domains], "#9e9e9e")]
  palette = iter(("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"))
  for law, r in result["laws"].items():
    series.append((f"{law} optimum", [r["optimum"][d] for d in domains], next(palette)))
  for label, w in (compare or {}).items():
    series.append((label, [w.get(d, 0.0) for d in domains], next(palette)))
  plt = _plt()
  fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(domains)), 4.4))
  _grouped_bars(ax, domains, series, "domain weight", "{:.2f}")
  ax.set_title(f"Mixtures proposed by the swarm's laws (objective {result['objective']})")
  _save(fig, path)
  return True


def _human(n: float) -> str:
  for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
    if n >= div:
      return f"{n / div:.3g}{unit}"
  return f"{n:g}"


def plot_ladder(ladder: dict, path) -> bool:
  """Each arm's primary metric (mean and its interval over seeds) against
  the main model's size, one line per arm over the rungs it reached."""
  rungs = [r for r in ladder["rungs"] if r.get("num_params")]
  if len(rungs) < 2:
    return False
  plt = _plt()
  arms = list(dict.fromkeys(a for r in rungs for a in ladder["metrics"][r["name"]]))
  colors = _colors(arms)
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for arm in arms:
    pts = [(r["num_params"], ladder["metrics"][r["name"]][arm]) for r in rungs
           if arm in ladder["metrics"][r["name"]]]
    xs = [p for p, _ in pts]
    ys = [m["mean"] for _, m in pts]
    err = [[m["mean"] - m["ci"][0] for _, m in pts], [m["ci"][1] - m["mean"] for _, m in pts]]
    ax.errorbar(xs, ys, yerr=err, color=colors[arm], label=arm, marker="o", capsize=3)
  ax.set_xscale("log")
  ticks = [r["num_params"] for r in rungs]
  ax.xaxis.set_minor_locator(plt.NullLocator())
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{r['name']}\n{_human(r['num_params'])}" for r in rungs], fontsize=8)
  ax.set_xlabel("main model parameters")
  ax.set_ylabel(ladder["primary"])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f"{ladder['primary']} against model size (interval at level {ladder['level']})",
               fontsize=10)
  _save(fig, path)
  return True
