"""The swarm's analysis (swarm.json): every law fitted to every target, its
cross-validated quality, and the mixture each law proposes for the
objective. The stage writes it; `analysis.swarm_report` lays it out."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from doremi_jax.data import weights as weights_lib
from doremi_jax.swarm import fit


def analyse(mixtures, losses, domains: Sequence[str], prior, *, law: str, objective,
            kl_weight: float, caps, folds: int, seed: int, gbm_settings: Optional[dict],
            candidates: int, top_k: int, tasks: Optional[dict] = None) -> dict:
  """swarm.json's content from the members' mixtures [M, K] and final
  `tune` losses [M, K] (nats/token), and `tasks`' targets ({"TASK/bpb":
  [M]}, the members' downstream-task BPB on `tune`)."""
  X = np.asarray(mixtures, np.float64)
  ys = fit.targets(losses, domains, tasks)
  terms = fit.objective_terms(objective, domains, tuple(tasks or ()))
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
      "split": "tune",   # the members' losses (what the laws fit)
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
