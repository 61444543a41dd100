"""Stage `pipeline`: all of DoReMi from one command.

    RUN/round_1/reference   Step 1: reference model on the initial weights
    RUN/round_1/proxy       Step 2: Group-DRO proxy against it
    RUN/round_2/...         iterated DoReMi: round r's reference is trained
                            on round r-1's averaged weights
    RUN/main_doremi         Step 3: main model on the final DoReMi weights
    RUN/main_baseline       the same main model on the initial weights
    RUN/pipeline.json       rounds, weight trajectory, stage timings
    RUN/comparison.json     main(DoReMi) vs main(baseline), per domain
    RUN/report.json         what the report shows, as data (`analysis.pipeline_report`)
    RUN/report.md, plots/   the report (again: `python -m doremi_jax.report RUN`)

Each stage runs in its own sub-directory under the gin scope of its kind
(`reference/`, `proxy/`, `main/`), so `main/ModelConfig.d_model = 512` sizes
only the main models and `proxy/TrainConfig.num_steps = 500` only the proxy.
A stage that finished (it wrote `complete.json` after its last checkpoint)
is skipped when the command is re-run; an interrupted one resumes from its
checkpoint, so re-running after a kill ends where an uninterrupted run would.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import gin
import numpy as np

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import compare
from doremi_jax.analysis import pipeline_report
from doremi_jax.config import ConfigError
from doremi_jax.data.registry import get_corpus
from doremi_jax.data import weights as weights_lib
from doremi_jax.rundir import MAIN_MODEL_BASELINE, MAIN_MODEL_DOREMI, round_dir
from doremi_jax.stages import registry


def l1_change(a: dict, b: dict) -> float:
  return float(sum(abs(a[d] - b[d]) for d in a))


class _Log:
  """The pipeline's record of what ran, written after every stage."""

  def __init__(self, workdir, header: dict):
    self.path = files.path(workdir) / rundir.PIPELINE_STATE
    self.data = dict(header, status="running", rounds=[], stages={},
                     converged_at_round=None, final_weights=None)

  def stage(self, name: str, status: str, seconds: float, subdir):
    self.data["stages"][name] = {"status": status, "seconds": round(seconds, 2),
                                 "dir": str(subdir)}
    self.write()

  def write(self):
    if rundir.is_writer():
      files.write_json(self.path, self.data)


def _say(msg: str):
  rundir.announce("pipeline", msg)


def _run_stage(log: _Log, name: str, title: str, subdir, kind: str, **kwargs):
  """Runs the registered stage `kind` in `subdir` under the gin scope of its
  name, with `kwargs`, unless `subdir` is already complete."""
  if rundir.is_complete(subdir):
    _say(f"{title}: already complete in {subdir}, skipping")
    log.stage(name, "skipped", 0.0, subdir)
    return
  verb = "resuming" if files.exists(files.path(subdir) / rundir.CHECKPOINTS) else "starting"
  _say(f"{title}: {verb} in {subdir}")
  t0 = time.time()
  registry.get(kind)(str(subdir), **kwargs)
  log.stage(name, "ran", time.time() - t0, subdir)


def _check_reference_weights(subdir, expected: dict):
  """A finished or interrupted reference must have used the weights this run
  would give it; otherwise the run directory belongs to another config."""
  path = files.path(subdir) / rundir.REFERENCE_WEIGHTS
  if not files.exists(path):
    return
  recorded = files.read_json(path)
  if set(recorded) != set(expected) or l1_change(recorded, expected) > 1e-6:
    raise ConfigError(
        f"{subdir} was trained on reference weights {recorded}, but this configuration "
        f"gives it {expected}. The run directory was made with another configuration; "
        "use a new --workdir (or delete that round) to start afresh.")


def _rounds(log: _Log, workdir: str, w0: dict, rounds: int, tolerance: float,
            seed=None) -> dict:
  """Runs the reference -> proxy rounds (iterated DoReMi) until `rounds` or
  convergence, with `seed` (None: TrainConfig's); returns the final DoReMi
  weights."""
  current = w0
  seeded = {} if seed is None else {"seed": seed}
  for r in range(1, rounds + 1):
    ref_dir, proxy_dir = round_dir(workdir, r, "reference"), round_dir(workdir, r, "proxy")
    _check_reference_weights(ref_dir, current)
    _run_stage(log, f"round_{r}/reference", f"round {r}/{rounds}, Step 1: reference model",
               ref_dir, "reference", weights=dict(current), **seeded)
    _run_stage(log, f"round_{r}/proxy", f"round {r}/{rounds}, Step 2: Group-DRO proxy",
               proxy_dir, "proxy", reference_dir=str(ref_dir), **seeded)
    new = rundir.read_result(files.path(proxy_dir) / rundir.AVERAGE_WEIGHTS)
    change = l1_change(new, current)
    log.data["rounds"].append({"round": r, "reference_weights": current, "weights": new,
                               "l1_change": change,
                               "reference_dir": str(ref_dir), "proxy_dir": str(proxy_dir)})
    _say(f"round {r}: L1 change of the weights {change:.4f} (tolerance {tolerance:g})")
    current = new
    if change < tolerance:
      log.data["converged_at_round"] = r
      if r < rounds:
        _say(f"converged after round {r} of {rounds}; skipping the remaining rounds")
      break
  log.data["final_weights"] = current
  log.write()
  return current


def _main_models(log: _Log, workdir: str, weights: dict, w0: dict, run_baseline: bool):
  """Step 3 on the DoReMi weights and (with `run_baseline`) on the initial
  weights, then their comparison (comparison.json)."""
  root = files.path(workdir)
  _run_stage(log, MAIN_MODEL_DOREMI, "Step 3: main model on the DoReMi weights",
             root / MAIN_MODEL_DOREMI, "main", weights=dict(weights))
  if not run_baseline:
    return
  _run_stage(log, MAIN_MODEL_BASELINE, "baseline: main model on the reference weights",
             root / MAIN_MODEL_BASELINE, "main", weights=dict(w0))
  comparison = compare.compare(files.read_json(root / MAIN_MODEL_DOREMI / rundir.EVAL),
                               files.read_json(root / MAIN_MODEL_BASELINE / rundir.EVAL))
  if rundir.is_writer():
    files.write_json(root / rundir.COMPARISON, comparison)
    print("[pipeline] main model, per-domain test loss, DoReMi vs baseline:\n"
          + compare.format_comparison(comparison), flush=True)


def _check_settings(rounds, tolerance, run_main: bool, run_baseline: bool):
  if not isinstance(rounds, int) or rounds < 1:
    raise ConfigError(f"train_pipeline.rounds must be an integer >= 1, got {rounds!r}.")
  if not (isinstance(tolerance, (int, float)) and np.isfinite(tolerance) and tolerance >= 0):
    raise ConfigError(f"train_pipeline.tolerance must be a number >= 0 (the L1 change of the "
                      f"weights between rounds), got {tolerance!r}.")
  if run_baseline and not run_main:
    raise ConfigError("train_pipeline.run_baseline needs run_main = True (the baseline is "
                      "compared with the DoReMi main model).")


@gin.configurable
def train_pipeline(workdir: str, rounds: int = 1, tolerance: float = 1e-2,
                   reference_weights: Any = "uniform", run_main: bool = True,
                   run_baseline: bool = True, write_report: bool = True,
                   seed: Optional[int] = None) -> dict:
  """Runs DoReMi end to end in `workdir` (see the module docstring).

  rounds: reference->proxy rounds (iterated DoReMi); round r+1's reference
    weights are round r's averaged weights. Stops early once the L1 change
    between a round's reference weights and its averaged weights is below
    `tolerance`.
  reference_weights: round 1's reference weights and the baseline's: any
    Step 3 weights spec ('uniform', 'proportional', a mapping, a JSON file).
  run_main / run_baseline: train the main model on the DoReMi weights / on
    `reference_weights`. write_report: write report.json, report.md and
    plots at the end. seed: overrides TrainConfig.seed of the reference and
    proxy runs (a study's per-seed method runs). Returns the contents of
    pipeline.json.
  """
  _check_settings(rounds, tolerance, run_main, run_baseline)
  rundir.check_writable(workdir)
  corpus = get_corpus()
  domains = list(corpus.domains)
  w0 = weights_lib.as_dict(domains, weights_lib.resolve_weights(
      reference_weights, corpus, "train_pipeline.reference_weights"))
  workdir = str(workdir)
  log = _Log(workdir, {"domains": domains, "rounds_requested": rounds,
                       "tolerance": float(tolerance), "run_main": run_main,
                       "run_baseline": run_baseline, "initial_reference_weights": w0})
  if rundir.is_writer():
    files.path(workdir).mkdir(parents=True, exist_ok=True)
    files.write_text(files.path(workdir) / rundir.PIPELINE_CONFIG, gin.config_str())
  plan = 2 * rounds + int(run_main) + int(run_baseline)
  _say(f"DoReMi in {workdir}: {rounds} round(s) of reference + proxy"
       + (", then the main model on the DoReMi weights" if run_main else "")
       + (" and on the reference weights (baseline)" if run_baseline else "")
       + f"; up to {plan} trainings.")
  t_start = time.time()
  current = _rounds(log, workdir, w0, rounds, tolerance, seed)
  if run_main:
    _main_models(log, workdir, current, w0, run_baseline)
  log.data["status"] = "complete"
  log.data["seconds"] = round(time.time() - t_start, 2)
  log.write()
  _say("final DoReMi weights: " + ", ".join(f"{d} {w:.4f}" for d, w in current.items()))
  if write_report and rundir.is_writer():
    path = pipeline_report.write(workdir)
    _say(f"report: {path}")
  _say(f"done in {time.time() - t_start:.0f}s")
  return log.data


# What compile_check compiles for a pipeline: its three step programs (the
# proxy against gin's `reference/` model; weights do not change a program).
registry.register(registry.Stage("pipeline", train_pipeline, runs=(
    ("reference", {}), ("proxy", {"reference_dir": None}), ("main", {"weights": "uniform"}))))
