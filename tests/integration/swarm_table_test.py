"""`train_swarm.table`: a swarm table from elsewhere (a CSV with its own
domain names) is fitted and proposes exactly as the same numbers do in our
names, is reused on a re-run and refused for another table, and bad tables
are an error before anything is written."""

import csv
import json

import numpy as np
import pytest

from doremi_jax import rundir
from doremi_jax.config import ConfigError
from doremi_jax.data import synthetic
from doremi_jax.swarm import results
from helpers import run_stage

DOMAINS = list(synthetic.DOMAINS)
THEIRS = {d: f"src_{i}" for i, d in enumerate(DOMAINS)}   # their names for our domains
BASE = ["include 'gin/cpu.gin'", "train_swarm.candidates = 2000", "train_swarm.top_k = 16",
        "train_swarm.folds = 4"]


def _planted(rows=24, seed=0):
  """Mixtures and losses from a log-linear law: L_d = c_d + exp(a_d + t_d . x)."""
  rng = np.random.default_rng(seed)
  k = len(DOMAINS)
  X = rng.dirichlet(np.ones(k), rows)
  c, a = rng.uniform(1, 3, k), rng.uniform(-1, 0, k)
  t = -np.eye(k) * rng.uniform(1, 3, k)
  return X, c + np.exp(a + X @ t.T) + rng.normal(0, 1e-3, (rows, k))


def _write_csv(path, X, Y, extra=True):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([f"w_{THEIRS[d]}" for d in DOMAINS] + [f"loss_{THEIRS[d]}" for d in DOMAINS]
               + (["run_name"] if extra else []))
    for n, (x, y) in enumerate(zip(X, Y)):
      w.writerow([repr(float(v)) for v in x] + [repr(float(v)) for v in y]
                 + ([f"run{n}"] if extra else []))


def _maps():
  return [f"train_swarm.table_weights = {json.dumps({f'w_{THEIRS[d]}': d for d in DOMAINS})}",
          f"train_swarm.table_losses = {json.dumps({f'loss_{THEIRS[d]}': d for d in DOMAINS})}"]


def test_a_table_with_renamed_domains_fits_like_the_same_numbers_in_our_names(tmp_path):
  X, Y = _planted()
  _write_csv(tmp_path / "published.csv", X, Y)
  wd = tmp_path / "swarm"
  got = run_stage("swarm", wd, BASE + _maps() + [f"train_swarm.table = '{tmp_path}/published.csv'"])
  X = X / X.sum(1, keepdims=True)          # each row renormalised, as the reader does
  want = results.analyse(X, Y, DOMAINS, np.array([got["prior"][d] for d in DOMAINS]),
                         law="loglinear",
                         objective="average", kl_weight=0.05, caps=None, folds=4, seed=0,
                         gbm_settings=None, candidates=2000, top_k=16)
  for key in ("weights", "laws", "targets", "mixtures"):
    assert json.dumps(got[key], sort_keys=True) == json.dumps(want[key], sort_keys=True), key
  assert got["source"]["rows"] == 24 and got["split"] == "the table's own"
  # each domain's planted law is what the log-linear fit recovers out of fold
  cv = got["laws"]["loglinear"]["cross_validation"]
  assert min(cv[d]["spearman"] for d in DOMAINS) > 0.99
  assert rundir.is_complete(wd) and (wd / "swarm.md").exists()
  assert rundir.read_result(wd / rundir.SWARM_WEIGHTS) == got["weights"]
  again = run_stage("swarm", wd, BASE + _maps() + [f"train_swarm.table = '{tmp_path}/published.csv'"])
  assert again == json.loads((wd / rundir.SWARM_JSON).read_text())
  _write_csv(tmp_path / "other.csv", *_planted(seed=1))
  with pytest.raises(ConfigError, match="not fitted to"):
    run_stage("swarm", wd, BASE + _maps() + [f"train_swarm.table = '{tmp_path}/other.csv'"])


def test_bad_tables_are_refused_before_anything_is_written(tmp_path):
  X, Y = _planted()
  good = tmp_path / "t.csv"
  _write_csv(good, X, Y)
  bad_row = X.copy()
  bad_row[3] *= 1.2
  _write_csv(tmp_path / "not_a_distribution.csv", bad_row, Y)
  _write_csv(tmp_path / "few.csv", X[:5], Y[:5])
  (tmp_path / "latin1.csv").write_bytes(good.read_bytes() + "caf\xe9\n".encode("latin-1"))
  unknown = {f"w_{THEIRS[d]}": d for d in DOMAINS}
  unknown["w_src_0"] = "wikipedia"
  cases = [
      ([f"train_swarm.table = '{tmp_path}/not_a_distribution.csv'"] + _maps(),
       "row 4's weights are not a distribution"),
      ([f"train_swarm.table = '{tmp_path}/few.csv'"] + _maps(), "has 5 rows"),
      ([f"train_swarm.table = '{good}'", f"train_swarm.table_weights = {json.dumps(unknown)}",
        _maps()[1]], "domains this corpus does not have: ['wikipedia']"),
      ([f"train_swarm.table = '{good}'"], "has no column 'noise'"),
      ([f"train_swarm.table = '{tmp_path}/missing.csv'"], "does not exist"),
      ([f"train_swarm.table = '{tmp_path}/latin1.csv'"] + _maps(), "is not UTF-8 text"),
  ]
  for n, (bindings, message) in enumerate(cases):
    wd = tmp_path / f"wd{n}"
    with pytest.raises(ConfigError) as e:
      run_stage("swarm", wd, BASE + bindings)
    assert message in str(e.value), (message, str(e.value))
    assert not wd.exists() or not any(wd.iterdir())
