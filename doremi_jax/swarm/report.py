"""The swarm's analysis (swarm.json) and report (swarm.md + plots): every
law fitted to every target, its cross-validated quality, and the mixture
each law proposes for the objective."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from doremi_jax import files
from doremi_jax import plots
from doremi_jax.data import weights as weights_lib
from doremi_jax.swarm import fit

REPORT_FILE = "swarm.md"


def analyse(mixtures, losses, domains: Sequence[str], prior, *, law: str, objective,
            kl_weight: float, caps, folds: int, seed: int, gbm_settings: Optional[dict],
            candidates: int, top_k: int) -> dict:
  """swarm.json's content from the members' mixtures [M, K] and final
  validation losses [M, K] (nats/token)."""
  X = np.asarray(mixtures, np.float64)
  ys = fit.targets(losses, domains)
  terms = fit.objective_terms(objective, domains)
  measured = sum(w * ys[t] for t, w in terms.items())
  laws = {}
  for name in fit.LAWS:
    fits = {t: fit.Fitted(name, X, y, seed, gbm_settings) for t, y in ys.items()}
    x = fit.propose(name, fits, terms, prior, kl_weight, caps, candidates, top_k, seed)
    cv = {t: fit.cross_validate(name, X, y, folds, seed, gbm_settings) for t, y in ys.items()}
    # the objective as the optimiser sees it: the terms' laws combined, out of fold
    pred = sum(w * np.asarray(cv[t]["predicted"]) for t, w in terms.items())
    laws[name] = {
        "fits": {t: f.to_json() for t, f in fits.items()},
        "cross_validation": cv,
        "objective_cross_validation": {
            "predicted": pred.tolist(), "spearman": fit.spearman(pred, measured),
            "rmse": float(np.sqrt(np.mean((pred - measured) ** 2)))},
        "optimum": weights_lib.as_dict(domains, x),
        "predicted": {t: float(f.predict(x)[0]) for t, f in fits.items()},
        "predicted_objective": float(sum(w * fits[t].predict(x)[0] for t, w in terms.items())),
    }
  best = int(np.argmin(measured))
  q = np.asarray(prior, np.float64)
  return {
      "domains": list(domains),
      "members": len(X),
      "mixtures": X.tolist(),
      "losses": np.asarray(losses, np.float64).tolist(),
      "targets": {t: y.tolist() for t, y in ys.items()},
      "prior": weights_lib.as_dict(domains, q),
      "objective": objective,
      "objective_terms": terms,
      "kl_weight": kl_weight,
      "caps": None if caps is None else weights_lib.as_dict(domains, caps),
      "folds": folds,
      "law": law,
      "laws": laws,
      "weights": laws[law]["optimum"],
      "best_member": {"index": best, "objective": float(measured[best]),
                      "mixture": weights_lib.as_dict(domains, X[best])},
  }


def _f(x, nd=3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def write(workdir, result: dict, compare: Optional[dict] = None) -> str:
  """swarm.md and its plots in `workdir`; `compare` ({label: {domain:
  weight}}) adds columns beside the optimum's weights (e.g. DoReMi's)."""
  root = files.path(workdir)
  domains, law = result["domains"], result["law"]
  targets = list(result["targets"])
  lines = [f"# Swarm: {result['members']} members, law `{law}`", ""]
  lines += ["Cross-validated quality of each law ({}-fold over members): Spearman rank "
            "correlation of out-of-fold predictions with measured loss (RMSE in "
            "nats).".format(result["folds"]), "",
            "| target | " + " | ".join(fit.LAWS) + " |",
            "|---|" + "---|" * len(fit.LAWS)]
  for t in targets:
    cells = [f"{_f(result['laws'][n]['cross_validation'][t]['spearman'])} "
             f"({_f(result['laws'][n]['cross_validation'][t]['rmse'], 4)})" for n in fit.LAWS]
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  cells = [f"{_f(result['laws'][n]['objective_cross_validation']['spearman'])} "
           f"({_f(result['laws'][n]['objective_cross_validation']['rmse'], 4)})"
           for n in fit.LAWS]
  lines.append("| **objective** (the terms' laws combined, what the optimum minimises) | "
               + " | ".join(cells) + " |")
  lines += ["", "A log-linear law extrapolates exponentially: a held-out member far from "
            "the others (a corner) can get a huge prediction, which the RMSE shows and the "
            "rank correlation does not."]
  objective = result["objective"]
  lines += ["", f"Objective: `{objective}`; KL weight to the prior {result['kl_weight']}; "
            + ("repetition caps " + ", ".join(f"{d} {c:.3f}" for d, c in result["caps"].items())
               if result["caps"] else "no repetition caps") + ".", "",
            "| domain | prior | " + " | ".join(f"{n} optimum" for n in fit.LAWS)
            + " | best member | " + "".join(f"{c} | " for c in compare or {}),
            "|---|---|" + "---|" * (len(fit.LAWS) + 1 + len(compare or {}))]
  best = result["best_member"]["mixture"]
  for d in domains:
    cells = [_f(result["prior"][d])] + [_f(result["laws"][n]["optimum"][d]) for n in fit.LAWS]
    cells += [_f(best[d])] + [_f(w.get(d)) for w in (compare or {}).values()]
    lines.append(f"| {d} | " + " | ".join(cells) + " |")
  lines += ["", "Predicted objective at each law's optimum: " + ", ".join(
      f"{n} {_f(result['laws'][n]['predicted_objective'], 4)}" for n in fit.LAWS)
            + f"; best member (measured): {_f(result['best_member']['objective'], 4)} "
            f"(member {result['best_member']['index']}).", ""]
  lines += ["`swarm_weights.json` holds the `{}` optimum; Step 3 and the study read it "
            "like any weights file.".format(law), ""]
  if plots.plot_swarm_fits(result, root / "plots" / "swarm_fits.png"):
    lines += ["![predicted vs measured](plots/swarm_fits.png)", ""]
  if plots.plot_swarm_weights(result, compare, root / "plots" / "swarm_weights.png"):
    lines += ["![weights](plots/swarm_weights.png)", ""]
  path = root / REPORT_FILE
  files.write_text(path, "\n".join(lines))
  return str(path)
