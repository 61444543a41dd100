"""Stage `swarm`: many tiny proxies trained together on random mixtures, a
fitted mixing law per target, and the mixture it predicts (RegMix, Liu et
al. 2024; Olmix, Chen et al. 2026).

1. Draw `members` mixtures around the prior (`swarm.law.sample_mixtures`:
   RegMix's Dirichlet, cap and zeroing; the uniform mixture and the named
   corners first).
2. Train every member on its mixture together, in one jitted, sharded step
   over a leading member axis (`swarm.program`); each member's rows come
   from its own exact, resumable loader; every member is evaluated per
   domain on the `tune` rows (what the laws fit; the study grades the
   optimum on `test`).
3. Fit every law (`swarm.fit.LAWS`) to every target (each domain's loss, the
   uniform average, the worst case), cross-validate it over the members,
   and minimise the objective over the simplex (KL to the prior, optional
   repetition caps for the main run's token budget).

    WORKDIR/swarm_mixtures.json  the members' mixtures (written first)
    WORKDIR/swarm.json           mixtures, losses, fits, their cross-validated
                                 Spearman per target, each law's optimum and
                                 its predicted losses
    WORKDIR/swarm_weights.json   {domain: weight}: `law`'s optimum, read by
                                 Step 3 and the study like any weights file
    WORKDIR/swarm.md, plots/     the report
    + the runner's files (checkpoints/, metrics.jsonl, eval.jsonl, ...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any, Optional, Sequence

import gin
import numpy as np

from doremi_jax import context
from doremi_jax import files
from doremi_jax import lease
from doremi_jax import plan as plan_lib
from doremi_jax import rundir
from doremi_jax import runner
from doremi_jax.analysis import swarm_report
from doremi_jax.config import ConfigError, check_number
from doremi_jax.data import weights as weights_lib
from doremi_jax.data.registry import get_corpus
from doremi_jax.stages import registry
from doremi_jax.stages import study
from doremi_jax.state import TrainConfig, train_config
from doremi_jax.swarm import fit
from doremi_jax.swarm import law as law_lib
from doremi_jax.swarm import program as swarm_lib
from doremi_jax.swarm import results
from doremi_jax.swarm import table as table_lib
from doremi_jax.tasks import registry as task_registry

SEEDS = ("same", "distinct")


def main_tokens() -> int:
  """The main run's token budget (gin's `main/` TrainConfig)."""
  cfg = study.main_config()
  return cfg.num_steps * cfg.tokens_per_step


def repetition_caps(corpus, repetitions: Optional[float], tokens: Optional[int]):
  """Olmix's caps x_i <= R D_i / T (None without `repetitions`)."""
  if repetitions is None:
    return None
  check_number("train_swarm.repetitions", repetitions, low=0, low_open=True)
  tokens = main_tokens() if tokens is None else tokens
  check_number("train_swarm.main_tokens", tokens, integer=True, low=0, low_open=True)
  caps = repetitions * np.asarray(corpus.train_tokens, np.float64) / tokens
  return law_lib.check_caps(np.minimum(caps, 1.0), corpus.num_domains)


@dataclasses.dataclass(frozen=True)
class SwarmPlan:
  """Everything decided before training: checked settings and the mixtures."""
  mixtures: Optional[np.ndarray]   # [M, K] (None for a table's fit)
  prior: np.ndarray          # [K]
  member_seeds: tuple
  caps: Optional[np.ndarray]


def plan(corpus, cfg: TrainConfig, members, prior, concentration, corners, cap_factor,
         min_weight, seeds, law, objective, kl_weight, folds, repetitions, tokens,
         draw: bool = True) -> SwarmPlan:
  """Checks every setting (ConfigError naming the fix) and draws the
  mixtures (unless not `draw`: a table brings its own), before anything is
  trained or written."""
  k = corpus.num_domains
  check_number("train_swarm.members", members, integer=True, low=0, low_open=True)
  if members < k + 1:
    raise ConfigError(f"train_swarm.members={members} is too few for {k} domains: a law with "
                      f"one weight per domain needs at least {k + 1} members (RegMix trains "
                      f"hundreds). Set train_swarm.members >= {k + 1}.")
  if law not in fit.LAWS:
    raise ConfigError(f"train_swarm.law={law!r}; choose one of {fit.LAWS}.")
  if seeds not in SEEDS:
    raise ConfigError(f"train_swarm.seeds={seeds!r}; choose 'same' (every member starts from "
                      "the same initialisation and draws its rows with the same seed) or "
                      "'distinct' (member m uses seed TrainConfig.seed + m).")
  check_number("train_swarm.folds", folds, integer=True, low=2)
  if folds > members:
    raise ConfigError(f"train_swarm.folds={folds} exceeds the {members} members; choose "
                      f"2..{members}.")
  check_number("train_swarm.kl_weight", kl_weight, low=0)
  check_number("train_swarm.cap_factor", cap_factor, low=0, low_open=True)
  check_number("train_swarm.min_weight", min_weight, low=0)
  fit.objective_terms(objective, corpus.domains,
                      [task_registry.swarm_target(e) for e in cfg.eval_tasks])
  q = law_lib.check_distribution(
      weights_lib.resolve_weights(prior, corpus, "train_swarm.prior"), "train_swarm.prior")
  if concentration is None:
    concentration = law_lib.REGMIX_CONCENTRATIONS
  concentration = (concentration,) if isinstance(concentration, (int, float)) else \
      tuple(concentration)
  for c in concentration:
    check_number("train_swarm.concentration", c, low=0, low_open=True)
  unknown = [c for c in corners if c not in corpus.domains]
  if isinstance(corners, str) or unknown:
    raise ConfigError(f"train_swarm.corners must list domain names of {list(corpus.domains)}; "
                      f"got {corners!r}.")
  caps = repetition_caps(corpus, repetitions, tokens)
  mixtures = law_lib.sample_mixtures(
      q, members, cfg.seed, concentration, cap_factor, min_weight,
      corners=[corpus.domain_index(c) for c in corners]) if draw else None
  member_seeds = tuple(cfg.seed + (m if seeds == "distinct" else 0) for m in range(members))
  return SwarmPlan(mixtures, q, member_seeds, caps)


@gin.configurable
def train_swarm(workdir: str, members: int = 16, prior: Any = "proportional",
                concentration: Any = None, corners: Sequence[str] = (),
                cap_factor: float = 15.0, min_weight: float = 2e-4, seeds: str = "same",
                law: str = "loglinear", objective: Any = "average", kl_weight: float = 0.05,
                repetitions: Optional[float] = None, main_tokens: Optional[int] = None,
                folds: int = 5, gbm_settings: Optional[dict] = None,
                candidates: int = 100_000, top_k: int = 128,
                compare_with: Any = None, seed: Optional[int] = None,
                table: Optional[str] = None, table_weights: Optional[dict] = None,
                table_losses: Optional[dict] = None, groups: int = 1,
                group: Optional[int] = None) -> Optional[dict]:
  """Trains a swarm of `members` small models (gin's model, `swarm/`
  TrainConfig) on mixtures drawn around `prior` (a weights spec;
  RegMix's Dirichlet with `concentration`, default RegMix's 15 values
  log-spaced over [0.1, 5]; draws with a weight over `cap_factor` x the
  prior's rejected; weights below `min_weight` zeroed; the uniform mixture
  and one-hot `corners` first), fits the laws, and writes swarm.json,
  swarm_weights.json (`law`'s optimum of `objective`: 'average', 'worst' or
  a list of domains, plus `kl_weight` KL to the prior, within the
  `repetitions` caps of a run of `main_tokens`, default the `main/` run's)
  and swarm.md (with `compare_with`'s weights beside, e.g. a DoReMi run).
  `seeds='same'`: every member has the same initialisation and the same
  row-draw seed (only its mixture differs); 'distinct': member m uses
  seed + m for both. `seed` overrides TrainConfig.seed (a study's per-seed
  method runs). `table`: a swarm table from elsewhere (`swarm.table`: a
  CSV or JSON file of mixtures and per-domain losses, its columns mapped
  to our domains by `table_weights` and `table_losses`): the laws are
  fitted to it and nothing is trained. `groups`: the members are split into
  that many equal groups, each trained as its own run in
  WORKDIR/group_<g> (`train_groups`: workers started with the same command
  share them), and the laws are fitted over all; `group`: train only that
  group and return its final evaluation. Returns swarm.json."""
  cfg = train_config(seed)
  corpus = get_corpus()
  tbl = None
  if table is not None:
    tbl = table_lib.read(table, corpus.domains, table_weights, table_losses)
    members = tbl["rows"]
  p = plan(corpus, cfg, members, prior, concentration, tuple(corners), cap_factor, min_weight,
           seeds, law, objective, kl_weight, folds, repetitions, main_tokens,
           draw=tbl is None)
  compare = _compare(corpus, compare_with, candidates, top_k)
  fit_settings = dict(law=law, objective=objective, kl_weight=kl_weight, caps=p.caps,
                      folds=folds, seed=cfg.seed, gbm_settings=gbm_settings,
                      candidates=candidates, top_k=top_k)
  check_groups(members, groups, group)
  if tbl is not None:
    with _held(workdir):
      return fit_table(workdir, corpus, p, tbl, table, fit_settings, compare)
  if groups > 1:
    return train_groups(workdir, corpus, cfg, p, groups, group, fit_settings, compare)
  with _held(workdir):
    return _train_whole(workdir, corpus, cfg, p, fit_settings, compare)


def _held(workdir):
  """The swarm's lease on `workdir` (the stage is `shared`: a split
  swarm's groups hold their own)."""
  if context.current().build_only:
    return contextlib.nullcontext()
  return lease.hold(workdir, rundir.LOCK)


def _train_whole(workdir, corpus, cfg, p: SwarmPlan, fit_settings, compare) -> dict:
  """Every member in one program in `workdir`, then the fits."""
  hook = SwarmHook(workdir, corpus, p, fit_settings, compare)
  _train_members(workdir, corpus, cfg, p, range(len(p.mixtures)), [hook],
                 law=fit_settings["law"])
  return hook.result


def _train_members(workdir, corpus, cfg, p: SwarmPlan, members, hooks, **info) -> dict:
  """Trains the swarm's `members` (indices) in one program in `workdir`
  (each on the rows it draws in the whole swarm); returns the final
  evaluation."""
  idx = list(members)
  seeds = tuple(p.member_seeds[m] for m in idx)
  mixtures_json = _check_mixtures(workdir, corpus, p, idx)
  setup = swarm_lib.swarm_setup(corpus.vocab_size, cfg, len(idx))
  program = swarm_lib.swarm_program(setup, corpus.num_domains, cfg.grad_accum_steps,
                                    cfg.seq_len, seeds)
  whole = len(idx) == len(p.mixtures)

  def make_loader(start_step, data_state):
    return swarm_lib.SwarmLoader(corpus, p.mixtures, p.member_seeds, cfg, start_step,
                                 data_state, members=None if whole else idx)

  info = {"sampling": "swarm", "members": len(idx), **info,
          "tokens_per_step": len(idx) * cfg.tokens_per_step,
          "eval_tokens": len(idx) * cfg.eval_examples_per_domain * corpus.num_domains
          * cfg.seq_len}
  return runner.run_stage(workdir=workdir, stage="swarm", corpus=corpus, cfg=cfg,
                          program=program, loader=make_loader,
                          hooks=[runner.Record(info, {rundir.SWARM_MIXTURES: mixtures_json}),
                                 *hooks])


def check_groups(members: int, groups, group) -> None:
  check_number("train_swarm.groups", groups, integer=True, low=1)
  if members % groups:
    raise ConfigError(f"train_swarm.groups={groups} does not divide the {members} members into "
                      f"equal groups; choose a divisor of {members}.")
  if group is not None and not (isinstance(group, int) and 0 <= group < groups):
    raise ConfigError(f"train_swarm.group={group!r}: name a group 0..{groups - 1} (or leave it "
                      "None to train them all and fit).")


def train_groups(workdir, corpus, cfg, p: SwarmPlan, groups: int, group, fit_settings: dict,
                 compare) -> Optional[dict]:
  """A swarm split into `groups` runs, WORKDIR/group_<g> with members
  g*M/G..(g+1)*M/G-1 (`doremi_jax.plan` phase 'swarm': any number of
  workers started with the same command claim the groups, a preempted
  one's is taken over and resumed); then the laws are fitted over every
  member's `tune` losses, in the members' order, exactly as for one
  program, and one worker writes swarm.json, swarm_weights.json and
  swarm.md in WORKDIR. Its run_info records no FLOPs: the groups' runs hold
  them. `group`: train that group only; returns its final evaluation."""
  root, size = files.path(workdir), len(p.mixtures) // groups
  dirs = [root / rundir.SWARM_GROUP.format(g) for g in range(groups)]

  def train(g):
    with _held(dirs[g]):
      if not rundir.is_complete(dirs[g]):
        _train_members(str(dirs[g]), corpus, cfg, p, range(g * size, (g + 1) * size), [],
                       group=g, groups=groups)
    return files.read_json(dirs[g] / rundir.EVAL)

  if group is not None or context.current().build_only:
    return train(group or 0)
  mixtures_json = _check_mixtures(workdir, corpus, p)
  if rundir.is_complete(root):
    return rundir.read_result(root / rundir.SWARM_JSON)
  if rundir.is_writer() and not files.exists(root / rundir.SWARM_MIXTURES):
    files.write_json(root / rundir.SWARM_MIXTURES, mixtures_json)
  tasks = [plan_lib.Task(d.name, functools.partial(train, g), complete=functools.partial(
      rundir.is_complete, d), what=f"members {g * size}..{(g + 1) * size - 1} in {d}")
           for g, d in enumerate(dirs)]
  plan_lib.execute(root, "swarm", tasks, lambda m: rundir.announce("swarm", m))
  t0, finals = time.time(), [files.read_json(d / rundir.EVAL) for d in dirs]
  final = {"members": [m for f in finals for m in f["members"]],
           "member_tasks": [m for f in finals for m in f.get("member_tasks") or []]}
  hook = SwarmHook(workdir, corpus, p, fit_settings, compare)
  with plan_lib.writer(root, "swarm") as mine:
    summary = hook.fit(final, write=mine, groups=[d.name for d in dirs])
    if mine:
      files.write_json(root / rundir.RUN_INFO, {
          "stage": "swarm", "sampling": "groups", "domains": list(corpus.domains),
          "members": len(p.mixtures), "groups": groups, "law": fit_settings["law"],
          "num_steps": 0, "flops_per_token": 0.0, "tokens_per_step": 0, "eval_tokens": 0})
      rundir.mark_complete(workdir, "swarm", 0, time.time() - t0,
                           f"{groups} groups; {summary}")
  return hook.result


def _compare(corpus, compare_with, candidates, top_k) -> Optional[dict]:
  """Checks the optimiser's settings; `compare_with`'s weights for the
  report (None without)."""
  for name, value in (("candidates", candidates), ("top_k", top_k)):
    check_number(f"train_swarm.{name}", value, integer=True, low=0, low_open=True)
  if compare_with is None:
    return None
  return {"compared": weights_lib.as_dict(corpus.domains, weights_lib.resolve_weights(
      compare_with, corpus, "train_swarm.compare_with"))}


def fit_table(workdir, corpus, p: SwarmPlan, tbl: dict, path, fit_settings: dict,
              compare) -> dict:
  """The swarm stage on a table from elsewhere: the laws fitted to its rows,
  swarm.json (with the table's path and SHA-256), swarm_weights.json and
  swarm.md, and the run marked complete (it trained nothing: no FLOPs). A
  completed directory is reused for the same table and refused for another."""
  root = files.path(workdir)
  if rundir.is_complete(root):
    done = rundir.read_result(root / rundir.SWARM_JSON)
    if (done.get("source") or {}).get("sha256") == tbl["sha256"]:
      rundir.announce("swarm", f"{workdir} already holds this table's fit; skipping")
      return done
    raise ConfigError(f"{workdir} holds a swarm that was not fitted to {path} (trained, or "
                      "fitted to another table); use a new --workdir.")
  t0 = time.time()
  result = results.analyse(tbl["mixtures"], tbl["losses"], corpus.domains, p.prior,
                           **fit_settings)
  result["split"] = "the table's own"
  result["source"] = table_lib.source(path, tbl)
  if rundir.is_writer():
    files.write_json(root / rundir.RUN_INFO, {
        "stage": "swarm", "sampling": "table", "domains": list(corpus.domains),
        "members": tbl["rows"], "law": fit_settings["law"], "num_steps": 0,
        "flops_per_token": 0.0, "tokens_per_step": 0, "eval_tokens": 0})
    files.write_json(root / rundir.SWARM_JSON, result)
    files.write_json(root / rundir.SWARM_WEIGHTS, result["weights"])
    rundir.announce("swarm", f"report: {swarm_report.write(workdir, compare)}")
  top = sorted(result["weights"].items(), key=lambda kv: -kv[1])
  rundir.mark_complete(workdir, "swarm", 0, time.time() - t0,
                       f"{tbl['rows']} rows of {path}; {fit_settings['law']} optimum " +
                       ", ".join(f"{d} {w:.3f}" for d, w in top))
  return result


def _check_mixtures(workdir, corpus, p: SwarmPlan, members=None) -> dict:
  """swarm_mixtures.json's contents (of the `members`, indices, where
  given); ConfigError when `workdir` holds a swarm with other mixtures or
  seeds."""
  path = files.path(workdir) / rundir.SWARM_MIXTURES
  idx = range(len(p.mixtures)) if members is None else list(members)
  mixtures = {"domains": list(corpus.domains), "mixtures": p.mixtures[list(idx)].tolist(),
              "member_seeds": [p.member_seeds[m] for m in idx]}
  if members is not None and len(idx) < len(p.mixtures):
    mixtures["members"] = list(idx)
  if files.exists(path) and files.read_json(path) != mixtures:
    raise ConfigError(f"{workdir} holds a swarm with other mixtures or seeds ({path}); "
                      "resume it with its own settings, or use a new run directory.")
  return mixtures


class SwarmHook(runner.Hook):
  """At the end: fit every law to the members' losses, write swarm.json,
  swarm_weights.json and the report."""

  def __init__(self, workdir, corpus, p: SwarmPlan, fit_settings: dict, compare):
    self.workdir, self.corpus, self.plan = workdir, corpus, p
    self.fit_settings, self.compare, self.result = fit_settings, compare, None

  def on_finish(self, state, final, reference):
    return self.fit(final, write=rundir.is_writer())

  def fit(self, final: dict, write: bool, **extra) -> str:
    """Fits every law to `final`'s member losses (and tasks); writes the
    files (swarm.json with `extra`'s entries) where `write`; returns the
    run's summary line."""
    law, p = self.fit_settings["law"], self.plan
    tasks = {f"{t}/bpb": [m[t]["bpb"] for m in final["member_tasks"]]
             for t in (final.get("member_tasks") or [{}])[0]}
    result = self.result = results.analyse(p.mixtures, final["members"], self.corpus.domains,
                                           p.prior, **self.fit_settings, tasks=tasks)
    result.update(extra)
    if write:
      files.write_json(files.path(self.workdir) / rundir.SWARM_JSON, result)
      files.write_json(files.path(self.workdir) / rundir.SWARM_WEIGHTS, result["weights"])
      rundir.announce("swarm", f"report: {swarm_report.write(self.workdir, self.compare)}")
    cv = result["laws"][law]["cross_validation"]["average"]["spearman"]
    cv_obj = result["laws"][law]["objective_cross_validation"]["spearman"]
    top = sorted(result["weights"].items(), key=lambda kv: -kv[1])
    return (f"{len(p.mixtures)} members; {law} law, cross-validated Spearman: average-loss "
            f"law {cv:.3f}, objective {cv_obj:.3f}; optimum " +
            ", ".join(f"{d} {w:.3f}" for d, w in top))


registry.register(registry.Stage("swarm", train_swarm, shared=True))
