"""The mixture study's report: study.md and its plots, from study.json (the
`study` stage's statistics, see `study_stats`) and the online mixers' rate
logs. `collect` reads the run directory into a dict; `render` lays it out
and draws the plots from the dict alone."""

from __future__ import annotations

import time
from typing import Optional

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import health
from doremi_jax.analysis import plots
from doremi_jax.analysis import stats
from doremi_jax.data import scheduled


def collect(root) -> dict:
  """study.json, plus where and when the report is written and each arm's
  seed-0 rates over training (`schedules`: {arm: mixture_weights.jsonl rows},
  [] for an arm with fixed weights)."""
  root = files.path(root)
  study = files.read_json(root / rundir.STUDY_JSON)
  schedules = {arm: scheduled.read_log(rundir.arm_dir(root, arm, 0) / rundir.MIXTURE_LOG)
               for arm in study["results"]}
  return dict(study, root=str(root), schedules=schedules,
              written_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def _ci(x: dict, nd: int = 4) -> str:
  return f"{x['mean']:.{nd}f} [{x['ci'][0]:.{nd}f}, {x['ci'][1]:.{nd}f}]"


def _diff(x: Optional[dict], nd: int = 4) -> str:
  if x is None:
    return "(baseline)"
  return f"{x['diff']:+.{nd}f} [{x['ci'][0]:+.{nd}f}, {x['ci'][1]:+.{nd}f}] **{x['verdict']}**"


def _speedup(sp: dict, seeds: int) -> str:
  """A speed-up cell; where some seeds never reached the target the figure
  is an upper bound (their ratio counts as last step / baseline steps);
  where some were at the target from step 0 there is no figure."""
  if sp["mean"] is None:
    return f"{stats.AT_START} on {sp['at_start']} of {seeds} seeds"
  text = f"{sp['mean']:.2f} [{sp['ci'][0]:.2f}, {sp['ci'][1]:.2f}]"
  if sp["reached"] < seeds:
    text = f"at most {text}: target not reached on {seeds - sp['reached']} of {seeds} seeds"
  return text


def _method_seeds_line(study: dict) -> str:
  if study.get("method_seeds", "shared") == "per_seed":
    return ("Method seeds: **per seed**. Seed s runs every method's own runs (DoReMi's "
            "reference and proxy, the swarm, online DoReMi's reference) with seed s, so the "
            "intervals include the whole method's randomness; the cost counts one seed's "
            "method runs.")
  return ("Method seeds: **shared**. Each method's own runs ran once, shared by every seed: "
          "the intervals cover only the main model's seed, not the method's randomness "
          "(cheaper; `train_study.method_seeds = 'per_seed'` includes it).")


def format_verdicts(study: dict) -> str:
  """The console table: each arm's primary metric (the uniform average
  unless `train_study.primary` names another) and its verdict."""
  key = study.get("primary", "uniform_avg")
  name = "uniform avg" if key == "uniform_avg" else key
  lines = [f"{'arm':<16}{name:>12}{'vs ' + study['baseline']:>14}  verdict"]
  for arm, r in study["results"].items():
    head = r.get("primary", r["uniform_avg"])
    vs = head.get("vs_baseline", r.get("vs_baseline", {}).get("uniform_avg"))
    lines.append(f"{arm:<16}{head['mean']:12.4f}"
                 + (f"{vs['diff']:+14.4f}  {vs['verdict']}" if vs else f"{'':>14}  baseline"))
  return "\n".join(lines)


def render_primary(study: dict) -> list:
  """The headline: the metric `train_study.primary` names, per arm, with
  its verdict and the speed-up to the baseline's final value."""
  key = study.get("primary", "uniform_avg")
  if key == "uniform_avg":
    return []
  res = study["results"]
  better = "higher" if res[study["baseline"]]["primary"].get("higher_is_better") else "lower"
  md = ["", f"## Primary metric: {key}", "",
        f"`train_study.primary` names **{key}** ({better} is better); its verdict is the "
        "study's headline. The speed-up is to the baseline's final value of it.", "",
        f"| arm | {key} | vs baseline | speed-up |", "|---|---|---|---|"]
  for arm, r in res.items():
    p = r["primary"]
    sp = p.get("speedup")
    md.append(f"| {arm} | {_ci(p)} | {_diff(p.get('vs_baseline'))} | "
              f"{_speedup(sp, study['seeds']) if sp else '(baseline)'} |")
  return md


def render_power(study: dict) -> list:
  """How many seeds each arm's difference from the baseline would need
  (`study_stats.power_of`), from the measured seed spread."""
  rows = {arm: r["power"] for arm, r in study["results"].items() if "power" in r}
  if not rows:
    return []
  p = next(iter(rows.values()))
  key = study.get("primary", "uniform_avg")
  md = ["", "## Seeds needed", "",
        f"From the measured seed-to-seed spread of each arm's paired difference from the "
        f"baseline in **{key}**: the seeds that would tell a difference of "
        f"{p['difference']:g} from zero at confidence {p['level']:.4f} (the verdicts' "
        f"adjusted level) with power {p['power']:g} (`train_study.power_difference`, "
        "`train_study.power`), and those that would resolve the difference measured. '-': "
        "more than 10000.", "",
        f"| arm | sd of the paired difference | seeds for {p['difference']:g} | difference "
        "measured | seeds for it |", "|---|---|---|---|---|"]
  for arm, q in rows.items():
    md.append(f"| {arm} | {q['sd_of_paired_difference']:.4f} | {q['seeds_needed'] or '-'} | "
              f"{q['observed_difference']:+.4f} | {q['seeds_needed_for_observed'] or '-'} |")
  return md


def render_tasks(study: dict) -> list:
  """Every downstream-task metric: each arm's mean, and its difference
  from the baseline with the verdict."""
  tasks = study.get("tasks") or {}
  if not tasks:
    return []
  md = ["", "## Downstream tasks", "",
        f"Each task's items of the **{study.get('split', 'test')}** half "
        "(docs/downstream.md). BPB: bits per byte of the gold answer, lower is better; "
        "acc, prob_correct (normalised probability of the correct choice) and exact_match: "
        "higher is better. At small scale accuracy sits near chance; BPB and prob_correct "
        "resolve differences first.", "",
        "| metric | " + " | ".join(study["results"]) + " |",
        "|---|" + "---|" * len(study["results"])]
  for key, per_arm in tasks.items():
    cells = [_ci(r, 3) + ("" if "vs_baseline" not in r else "<br>" + _diff(r["vs_baseline"], 3))
             for r in per_arm.values()]
    md.append(f"| {key} | " + " | ".join(cells) + " |")
  return md


def render_verdicts(study: dict) -> list:
  """The heading, how to read the intervals, and each arm's verdicts."""
  base, res = study["baseline"], study["results"]
  md = [f"# Mixture study: {len(study['arms'])} arms x {study['seeds']} seeds", "",
        f"Written {study['written_at']} from `{study['root']}`.", "",
        f"Baseline: **{base}**. Lower loss is better; a difference is arm minus baseline, "
        f"paired by seed (same initialisation and data-order seed in every arm). "
        f"Intervals are {study['level']:.0%} t intervals over seeds; the differences' "
        f"intervals are adjusted for several arms ({study['adjustment']}). **wins**: the "
        "whole interval is below zero; **loses**: above; **ties**: it contains zero.", "",
        f"Every loss here is on the **{study.get('split', 'validation')}** split"
        + (": held-out rows no method adapted to (Aioli's evaluations and the swarm's law "
           "fits read `tune`)." if study.get("split") == "test" else "."), "",
        _method_seeds_line(study), "",
        "## Verdicts", "",
        "| arm | uniform avg | vs baseline | worst case vs baseline | speed-up to baseline's "
        "final loss | cost (x one main run) |", "|---|---|---|---|---|---|"]
  for arm, r in res.items():
    vs = r.get("vs_baseline", {})
    sp = r["speedup"]
    md.append(f"| {arm} | {_ci(r['uniform_avg'])} | {_diff(vs.get('uniform_avg'))} | "
              f"{_diff(vs.get('worst_case'))} | {_speedup(sp, study['seeds'])} | "
              f"{r['cost']['fraction_of_one_main_run']:.2f} |")
  return md


def render_tables(study: dict) -> list:
  """Per domain, the weights (as tokens and bytes), the spread and the
  health checks."""
  domains, res = study["domains"], study["results"]
  md = ["", "## Per domain: arm minus baseline", "",
        "| arm | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
  for arm, r in res.items():
    if "vs_baseline" in r:
      md.append(f"| {arm} | " + " | ".join(_diff(r["vs_baseline"]["domains"][d], 3)
                                           for d in domains) + " |")
  md += ["", "## Every arm's shares of training tokens", "",
         "| arm | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
  for arm, r in res.items():
    md.append(f"| {arm} | " + " | ".join(f"{r['shares']['tokens'][d]:.3f}" for d in domains)
              + " |")
  if all("bytes" in r.get("shares", {}) for r in res.values()):
    md += ["", "The same weights as shares of UTF-8 bytes (the tokenizer's bytes per token "
           "differ by domain; weights found with another tokenizer would mean other byte "
           "shares):", "", "| arm | " + " | ".join(domains) + " |",
           "|---|" + "---|" * len(domains)]
    for arm, r in res.items():
      md.append(f"| {arm} | " + " | ".join(f"{r['shares']['bytes'][d]:.3f}" for d in domains)
                + " |")
  laws = {arm: r["law_prediction"] for arm, r in res.items() if "law_prediction" in r}
  if laws:
    md += ["", "## Swarm arms: the law's prediction against the measured loss", "",
           "Predicted by the law at its optimum, fitted to the swarm members' `tune` losses "
           "(for a swarm member's run); measured by the arm's main runs on `test` (means "
           "over seeds). *objective*: what the optimum minimises (the swarm's objective, "
           "its terms' laws combined); *average*: the separately fitted law of the uniform "
           "average.", "", "| arm | " + " | ".join(domains) + " | objective | average |",
           "|---|" + "---|" * (len(domains) + 2)]
    for arm, law in laws.items():
      measured = law["measured"]
      cells = [f"{law['predicted'][t]:.3f} / " + ("-" if measured.get(t) is None
                                                  else f"{measured[t]:.3f}")
               for t in [*domains, "objective", "average"]]
      md.append(f"| {arm} (predicted / measured) | " + " | ".join(cells) + " |")
  md += ["", "## Seed-to-seed spread (standard deviation over seeds)", "",
         "| arm | uniform avg | worst case |", "|---|---|---|"]
  for arm, r in res.items():
    md.append(f"| {arm} | {r['spread']['uniform_avg_std']:.4f} | "
              f"{r['spread']['worst_case_std']:.4f} |")
  md += ["", "## Health checks", "",
         "Weights are shares of real (non-padding) tokens: the loader draws packed rows "
         "with rates divided by each domain's measured tokens per row, so the token "
         "shares are the weights (a stratified arm draws equal rows; its token shares "
         "above are computed from the rows' fill). A local corpus's train sizes (for "
         "repetition) are its packed train tokens.", ""]
  return md + health.format_lines(study.get("health", []))


def render(study: dict, out_dir) -> str:
  """study.md's text for a `collect` dict; draws the plots into
  OUT_DIR/plots/ (the Markdown links them relative to OUT_DIR)."""
  plot_dir = files.path(out_dir) / rundir.PLOTS
  md = render_verdicts(study) + render_primary(study) + render_power(study) + \
      render_tasks(study) + render_tables(study)
  figs = []
  if plots.plot_forest(study, plot_dir / "study_forest.png"):
    figs.append(("Paired differences against the baseline", "study_forest.png"))
  if plots.plot_study_curves(study, plot_dir / "study_curves.png"):
    figs.append(("Uniform-average test loss, mean and range over seeds",
                 "study_curves.png"))
  if plots.plot_task_curves(study, plot_dir / "study_task_curves.png"):
    figs.append(("Downstream tasks' primary metric (test half), mean and range over seeds",
                 "study_task_curves.png"))
  if plots.plot_mixer_rates(study.get("schedules", {}), plot_dir / "study_mixer_rates.png"):
    figs.append(("Online mixers' rates over training (the weights above are their time "
                 "averages, mean over seeds)", "study_mixer_rates.png"))
  for title, name in figs:
    md += ["", f"## {title}", "", f"![{title}]({rundir.PLOTS}/{name})"]
  return "\n".join(md) + "\n"


def write(root) -> str:
  """study.md and its plots (RUN/plots/) from RUN/study.json; returns the
  report's path."""
  path = files.path(root) / rundir.STUDY_MD
  files.write_text(path, render(collect(root), root))
  return str(path)
