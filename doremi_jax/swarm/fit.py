"""Mixing laws fitted to a swarm, their held-out quality, and the mixture
each proposes. Pure NumPy/SciPy (and scikit-learn for the boosted law);
tested against independent implementations in tests/unit/swarm_law_test.py.

A law maps a mixture x (on the simplex, [K]) to one target's loss. Targets
are every domain's `tune` loss, their uniform average ('average') and
their maximum ('worst').

  'linear'     y = a . x (RegMix's linear baseline; a constant is absorbed,
               since sum x = 1), least squares.
  'loglinear'  y = exp(c) + exp(t . x) (Olmix's default law), fitted by a
               Huber loss (delta 0.02) with L-BFGS from several starts.
  'gbm'        gradient-boosted trees (scikit-learn's
               GradientBoostingRegressor, its defaults unless `gbm_settings`
               says otherwise; RegMix uses LightGBM, the same family).

Quality: k-fold cross-validation over the swarm's members; the Spearman
rank correlation of the out-of-fold predictions with the measured losses
(and their RMSE).

Proposal: minimise the objective (a weighted sum of targets' laws: the
domains' mean for 'average', one law for 'worst', the named domains' mean
for a list) plus `kl_weight` KL(x || prior), on the simplex with optional
caps x_i <= cap_i:
  loglinear   exactly (`law.olmix_propose`; SLSQP when kl_weight is 0),
  linear      exactly (the capped tilt of the prior; with kl_weight 0 the
              cheapest domains filled to their caps in order),
  gbm         by RegMix's search: score `candidates` random mixtures
              (Dirichlet around the prior, as the swarm's), drop those over
              a cap, and average the `top_k` best.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from scipy import optimize

from doremi_jax.analysis import ladder_stats
from doremi_jax.config import ConfigError
from doremi_jax.swarm import law as law_lib

LAWS = ("loglinear", "linear", "gbm")
HUBER_DELTA = 0.02


# --------------------------------------------------------------------------
# Targets and objectives


def targets(losses_NxK, domains: Sequence[str], tasks: Optional[dict] = None) -> dict:
  """{target: [N] values}: every domain's loss, 'average' and 'worst', and
  `tasks`' ({"TASK/bpb": [N]}: downstream tasks' gold-answer BPB, lower is
  better like a loss)."""
  y = np.asarray(losses_NxK, np.float64)
  out = {d: y[:, i] for i, d in enumerate(domains)}
  out["average"] = y.mean(axis=1)
  out["worst"] = y.max(axis=1)
  out.update({t: np.asarray(v, np.float64) for t, v in (tasks or {}).items()})
  return out


def objective_terms(objective: Any, domains: Sequence[str], tasks: Sequence[str] = ()) -> dict:
  """{target: weight} of an objective: 'average' (every domain, 1/K),
  'worst' (the worst-case law), or a list of domain names and task targets
  (`tasks`: "TASK/bpb", also named by "TASK" alone), their mean."""
  if isinstance(objective, str) and objective == "average":
    return {d: 1.0 / len(domains) for d in domains}
  if isinstance(objective, str) and objective == "worst":
    return {"worst": 1.0}
  names = [objective] if isinstance(objective, str) else objective
  if (not isinstance(names, (list, tuple)) or not names or
      not all(isinstance(d, str) for d in names)):
    raise ConfigError(f"train_swarm.objective must be 'average', 'worst' or a list of domain "
                      f"names and tasks, got {objective!r}.")
  names = [f"{n}/bpb" if f"{n}/bpb" in tasks and n not in domains else n for n in names]
  unknown = [d for d in names if d not in domains and d not in tasks]
  if unknown or len(set(names)) != len(names):
    raise ConfigError(f"train_swarm.objective names {list(names)}; each must be one of the "
                      f"corpus's domains {list(domains)} or a task of swarm/TrainConfig."
                      f"eval_tasks (its gold-answer BPB: {list(tasks) or 'none set'}), once.")
  return {d: 1.0 / len(names) for d in names}


# --------------------------------------------------------------------------
# Laws


def huber(r, delta: float = HUBER_DELTA):
  a = np.abs(r)
  return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def fit_linear(X, y) -> dict:
  a, *_ = np.linalg.lstsq(np.asarray(X, np.float64), np.asarray(y, np.float64), rcond=None)
  return {"a": a}


def fit_loglinear(X, y, delta: float = HUBER_DELTA,
                  floor_fractions: Sequence[float] = (0.0, 0.3, 0.6, 0.9)) -> dict:
  """argmin over (c, t) of mean Huber(exp(c) + exp(X t) - y), L-BFGS from
  one start per fraction f of min(y) taken as the floor exp(c) (t then
  from least squares of log(y - exp(c)) on X); the best fit is kept."""
  X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
  n, k = X.shape

  def value_and_grad(theta):
    ec, e = np.exp(np.clip(theta[0], -50, 50)), np.exp(np.clip(X @ theta[1:], -50, 50))
    r = ec + e - y
    g_r = np.clip(r, -delta, delta) / n
    return huber(r, delta).mean(), np.concatenate([[ec * g_r.sum()], X.T @ (g_r * e)])

  best = None
  low = max(float(y.min()), 1e-6)
  for f in floor_fractions:
    floor = f * low
    t0, *_ = np.linalg.lstsq(X, np.log(np.maximum(y - floor, 1e-6)), rcond=None)
    theta0 = np.concatenate([[np.log(max(floor, 1e-8))], t0])
    res = optimize.minimize(value_and_grad, theta0, jac=True, method="L-BFGS-B",
                            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    if best is None or res.fun < best.fun:
      best = res
  return {"c": float(best.x[0]), "t": best.x[1:], "huber": float(best.fun)}


def fit_gbm(X, y, seed: int, settings: Optional[dict] = None):
  from sklearn.ensemble import GradientBoostingRegressor  # pylint: disable=import-outside-toplevel
  try:
    model = GradientBoostingRegressor(random_state=seed, **(settings or {}))
  except TypeError as e:
    raise ConfigError(f"train_swarm.gbm_settings: {e}; give keyword arguments of "
                      "sklearn.ensemble.GradientBoostingRegressor.") from e
  try:
    return model.fit(np.asarray(X, np.float64), np.asarray(y, np.float64))
  except ValueError as e:
    raise ConfigError(f"train_swarm.gbm_settings: {e}") from e


class Fitted:
  """One law fitted to one target: `predict(X) -> [n]` and `to_json()`."""

  def __init__(self, law: str, X, y, seed: int = 0, gbm_settings: Optional[dict] = None):
    if law not in LAWS:
      raise ConfigError(f"train_swarm.law={law!r}; choose one of {LAWS}.")
    self.law = law
    if law == "linear":
      self.params = fit_linear(X, y)
    elif law == "loglinear":
      self.params = fit_loglinear(X, y)
    else:
      self.params = {"model": fit_gbm(X, y, seed, gbm_settings)}

  def predict(self, X) -> np.ndarray:
    X = np.atleast_2d(np.asarray(X, np.float64))
    if self.law == "linear":
      return X @ self.params["a"]
    if self.law == "loglinear":
      return (np.exp(np.clip(self.params["c"], -50, 50)) +
              np.exp(np.clip(X @ self.params["t"], -50, 50)))
    return self.params["model"].predict(X)

  def to_json(self) -> dict:
    if self.law == "gbm":
      m = self.params["model"]
      return {"n_estimators": int(m.n_estimators_),
              "feature_importances": m.feature_importances_.tolist()}
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.params.items()}


# Spearman's rank correlation (NaN when either side is constant): the one
# the study's ladder uses for rank agreement.
spearman = ladder_stats.spearman


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
  """Each member's fold: a seeded permutation dealt round-robin."""
  ids = np.empty(n, np.int64)
  ids[np.random.default_rng([seed, 0x6376]).permutation(n)] = np.arange(n) % folds
  return ids


def cross_validate(law: str, X, y, folds: int, seed: int = 0,
                   gbm_settings: Optional[dict] = None) -> dict:
  """Out-of-fold predictions of `law` (fitted on the other folds), their
  Spearman correlation with `y` and their RMSE."""
  X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
  ids = fold_ids(len(y), folds, seed)
  pred = np.empty(len(y))
  for f in range(folds):
    held = ids == f
    pred[held] = Fitted(law, X[~held], y[~held], seed, gbm_settings).predict(X[held])
  return {"predicted": pred.tolist(), "spearman": spearman(pred, y),
          "rmse": float(np.sqrt(np.mean((pred - y) ** 2)))}


# --------------------------------------------------------------------------
# Proposals


def kl(x, q) -> float:
  x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
  pos = x > 0
  return float(np.sum(x[pos] * np.log(x[pos] / np.maximum(q[pos], 1e-300))))


def fill_cheapest(g, caps) -> np.ndarray:
  """argmin of g . x over the simplex with x <= caps: the cheapest domains
  filled to their caps in order (all mass on the cheapest without caps)."""
  g = np.asarray(g, np.float64)
  caps = np.ones_like(g) if caps is None else caps
  x, left = np.zeros_like(g), 1.0
  for i in np.argsort(g, kind="stable"):
    x[i] = min(caps[i], left)
    left -= x[i]
  return x


def minimise_loglinear(t_MxK, w_M, prior, kl_weight: float, caps) -> np.ndarray:
  """argmin sum_m w_m exp(t_m . x) + kl_weight KL(x || prior) on the capped
  simplex: `law.olmix_propose` (Newton on its dual, with an optimality
  check) when kl_weight > 0, SLSQP when it is 0."""
  if kl_weight > 0:
    return law_lib.olmix_propose(t_MxK, w_M, prior, kl_weight, caps)
  t, w = np.asarray(t_MxK, np.float64), np.asarray(w_M, np.float64)
  k = t.shape[1]
  upper = np.ones(k) if caps is None else np.minimum(caps, 1.0)
  f = lambda x: (float(w @ np.exp(t @ x)), t.T @ (w * np.exp(t @ x)))
  x0 = law_lib.capped_tilt(np.zeros(k), caps)
  res = optimize.minimize(f, x0, jac=True, method="SLSQP", bounds=[(0.0, u) for u in upper],
                          constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0,
                                        "jac": lambda x: np.ones_like(x)}],
                          options={"maxiter": 1000, "ftol": 1e-14})
  x = np.clip(res.x, 0.0, upper)
  return x / x.sum()


def search(score, prior, caps, candidates: int, top_k: int, seed: int) -> np.ndarray:
  """RegMix's proposal: `candidates` mixtures drawn as the swarm's are
  (Dirichlet around the prior; no rejection), those over a cap dropped,
  `score` ([n, K] -> [n], lower is better) on each, and the mean of the
  `top_k` best."""
  q = np.asarray(prior, np.float64)
  rng = np.random.default_rng([seed, 0x736561])
  base = np.sqrt(q) / np.sqrt(q).sum()
  conc = np.asarray(law_lib.REGMIX_CONCENTRATIONS)[rng.integers(
      len(law_lib.REGMIX_CONCENTRATIONS), size=candidates)]
  alpha = np.maximum(conc[:, None] * base[None], 1e-12)
  g = rng.standard_gamma(alpha)
  X = g / np.maximum(g.sum(axis=1, keepdims=True), 1e-300)
  X = X[np.all(np.isfinite(X), axis=1) & (X.sum(axis=1) > 0.5)]
  if caps is not None:
    X = X[np.all(X <= caps + 1e-12, axis=1)]
  if len(X) < top_k:
    raise ConfigError(f"only {len(X)} of {candidates} candidate mixtures are within the "
                      f"repetition caps, fewer than the {top_k} RegMix averages; allow more "
                      "repetitions or raise train_swarm.candidates.")
  best = np.argsort(score(X), kind="stable")[:top_k]
  x = X[best].mean(axis=0)
  return x / x.sum()


def propose(law: str, fits: dict, terms: dict, prior, kl_weight: float = 0.0,
            caps=None, candidates: int = 100_000, top_k: int = 128,
            seed: int = 0) -> np.ndarray:
  """The mixture minimising sum_target terms[target] * fits[target](x) +
  kl_weight KL(x || prior) on the simplex with x <= caps (module
  docstring: exact for 'linear' and 'loglinear', RegMix's search for
  'gbm')."""
  q = law_lib.check_distribution(prior, "the swarm's prior")
  caps = law_lib.check_caps(caps, len(q))
  if not (kl_weight >= 0 and np.isfinite(kl_weight)):
    raise ConfigError(f"train_swarm.kl_weight must be >= 0, got {kl_weight!r}.")
  names = list(terms)
  w = np.array([terms[n] for n in names], np.float64)
  if law == "loglinear":
    t = np.stack([fits[n].params["t"] for n in names])
    return minimise_loglinear(t, w, q, kl_weight, caps)
  if law == "linear":
    g = sum(wi * fits[n].params["a"] for wi, n in zip(w, names))
    if kl_weight > 0:
      return law_lib.capped_tilt(np.log(np.maximum(q, 1e-300)) - g / kl_weight, caps)
    return fill_cheapest(g, caps)

  def score(X):
    s = sum(wi * fits[n].predict(X) for wi, n in zip(w, names))
    if kl_weight > 0:
      logs = np.where(X > 0, np.log(np.maximum(X, 1e-300) / np.maximum(q, 1e-300)), 0.0)
      s = s + kl_weight * np.sum(X * logs, axis=1)
    return s
  return search(score, q, caps, candidates, top_k, seed)
