"""The swarm's report: swarm.md and its plots, from swarm.json (the `swarm`
stage's fits and optima, see `swarm.results`). `collect` reads the run
directory into a dict; `render` lays it out and draws the plots from the
dict alone."""

from __future__ import annotations

import math
from typing import Optional

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import plots


def collect(workdir, compare: Optional[dict] = None) -> dict:
  """swarm.json, with `compare` ({label: {domain: weight}}, e.g. DoReMi's
  weights from `train_swarm.compare_with`; None for none) to show beside
  the optimum."""
  result = files.read_json(files.path(workdir) / rundir.SWARM_JSON)
  return dict(result, compare=compare)


def _f(x, nd=3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def render_quality(result: dict) -> list:
  """Each law's cross-validated Spearman and RMSE per target and for the
  objective."""
  laws = list(result["laws"])
  lines = [f"# Swarm: {result['members']} members, law `{result['law']}`", ""]
  lines += ["Cross-validated quality of each law ({}-fold over members): Spearman rank "
            "correlation of out-of-fold predictions with measured loss (RMSE in "
            "nats).".format(result["folds"]), "",
            "| target | " + " | ".join(laws) + " |",
            "|---|" + "---|" * len(laws)]
  for t in result["targets"]:
    cells = [f"{_f(result['laws'][n]['cross_validation'][t]['spearman'])} "
             f"({_f(result['laws'][n]['cross_validation'][t]['rmse'], 4)})" for n in laws]
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  cells = [f"{_f(result['laws'][n]['objective_cross_validation']['spearman'])} "
           f"({_f(result['laws'][n]['objective_cross_validation']['rmse'], 4)})"
           for n in laws]
  lines.append("| **objective** (the terms' laws combined, what the optimum minimises) | "
               + " | ".join(cells) + " |")
  return lines + ["", "A log-linear law extrapolates exponentially: a held-out member far "
                  "from the others (a corner) can get a huge prediction, which the RMSE shows "
                  "and the rank correlation does not."]


def render_optima(result: dict) -> list:
  """The objective, and every law's optimum beside the prior, the best
  member and the compared weights."""
  domains, laws, compare = result["domains"], list(result["laws"]), result.get("compare")
  lines = ["", f"Objective: `{result['objective']}`; KL weight to the prior "
           f"{result['kl_weight']}; "
           + ("repetition caps " + ", ".join(f"{d} {c:.3f}" for d, c in result["caps"].items())
              if result["caps"] else "no repetition caps") + ".", "",
           "| domain | prior | " + " | ".join(f"{n} optimum" for n in laws)
           + " | best member | " + "".join(f"{c} | " for c in compare or {}),
           "|---|---|" + "---|" * (len(laws) + 1 + len(compare or {}))]
  best = result["best_member"]["mixture"]
  for d in domains:
    cells = [_f(result["prior"][d])] + [_f(result["laws"][n]["optimum"][d]) for n in laws]
    cells += [_f(best[d])] + [_f(w.get(d)) for w in (compare or {}).values()]
    lines.append(f"| {d} | " + " | ".join(cells) + " |")
  lines += ["", "Predicted objective at each law's optimum: " + ", ".join(
      f"{n} {_f(result['laws'][n]['predicted_objective'], 4)}" for n in laws)
            + f"; best member (measured): {_f(result['best_member']['objective'], 4)} "
            f"(member {result['best_member']['index']}).", ""]
  return lines + [f"`{rundir.SWARM_WEIGHTS}` holds the `{result['law']}` optimum; Step 3 and "
                  "the study read it like any weights file.", ""]


def render(result: dict, out_dir) -> str:
  """swarm.md's text for a `collect` dict; draws the plots into
  OUT_DIR/plots/ (the Markdown links them relative to OUT_DIR)."""
  plot_dir = files.path(out_dir) / rundir.PLOTS
  lines = render_quality(result) + render_optima(result)
  if plots.plot_swarm_fits(result, plot_dir / "swarm_fits.png"):
    lines += [f"![predicted vs measured]({rundir.PLOTS}/swarm_fits.png)", ""]
  if plots.plot_swarm_weights(result, result.get("compare"), plot_dir / "swarm_weights.png"):
    lines += [f"![weights]({rundir.PLOTS}/swarm_weights.png)", ""]
  return "\n".join(lines)


def write(workdir, compare: Optional[dict] = None) -> str:
  """swarm.md and its plots in `workdir` from its swarm.json (`compare` as
  in `collect`); returns the report's path."""
  path = files.path(workdir) / rundir.SWARM_MD
  files.write_text(path, render(collect(workdir, compare), workdir))
  return str(path)
