"""A ladder study's report: RUN/study.md and its plot, from RUN/study.json
(`ladder_stats.summarise`); each rung's own study.md (RUN/rungs/<rung>/)
holds that rung's full tables."""

from __future__ import annotations

import time

from doremi_jax import files
from doremi_jax import rundir
from doremi_jax.analysis import plots


def _ci(m: dict, nd: int = 4) -> str:
  return f"{m['mean']:.{nd}f} [{m['ci'][0]:.{nd}f}, {m['ci'][1]:.{nd}f}]"


def _stat(x: dict) -> str:
  lo, hi = x["ci"]
  if x["value"] != x["value"]:     # NaN: a constant side
    return "n/a (a rung's arms tie)"
  return f"{x['value']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else "")


def format_summary(ladder: dict) -> str:
  """The console lines: the choice at the largest rung and each rung's agreement with it."""
  c = ladder["choice"]
  sch = ladder.get("schedule") or {}
  lines = [f"ladder ({sch.get('name', 'grid')}): best mean at {ladder['target']} by {ladder['primary']}: {c['arm']} "
           f"({c['verdict'] or 'the baseline'}); at the smallest rung: "
           f"{c['at_smallest_rung']}"]
  for rung, a in ladder["agreement"].items():
    lines.append(f"  {rung} vs {ladder['target']}: Spearman {_stat(a['spearman'])}, "
                 f"decision accuracy {_stat(a['decision_accuracy'])}")
  if sch.get("name") == "halving":
    lines.append(f"  main-run compute: {sch['compute']['fraction_of_grid']:.1%} of the full "
                 "grid's")
  return "\n".join(lines)


def _rungs_table(ladder: dict) -> list:
  md = ["| rung | parameters | train tokens | arms | settings | its report |",
        "|---|---|---|---|---|---|"]
  for r in ladder["rungs"]:
    settings = ", ".join(f"`{k} = {v}`" for k, v in r["settings"].items()) or "(main/ settings)"
    params = f"{r['num_params']:,}" if r.get("num_params") else "?"
    link = f"{r['dir']}/{rundir.STUDY_MD}"
    md.append(f"| {r['name']} | {params} | {r.get('train_tokens', 0):,} | "
              f"{len(r['arms'])} | {settings} | [{link}]({link}) |")
  return md


def _arms_by_rung(ladder: dict, section: str, cell) -> list:
  """A table of arms x rungs: `cell(entry)` of ladder[section][rung][arm],
  or `cell(None)` where the arm has none at that rung."""
  names = [r["name"] for r in ladder["rungs"]]
  arms = list(dict.fromkeys(a for n in names for a in ladder[section][n]))
  md = ["| arm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for arm in arms:
    md.append(f"| {arm} | " + " | ".join(cell(ladder[section][n].get(arm)) for n in names)
              + " |")
  return md


def _metric_cell(m) -> str:
  if m is None:
    return "(stopped below)"
  return _ci(m) + (f" **{m['verdict']}**" if m["verdict"] else " (baseline)")


def _power_cell(p) -> str:
  if p is None:
    return ""
  return (f"{p['seeds_needed'] or '-'} ({p['seeds_needed_for_observed'] or '-'}; sd "
          f"{p['sd_of_paired_difference']:.4f})")


def _agreement_table(ladder: dict) -> list:
  md = [f"| rung vs {ladder['target']} | arms | Spearman | Kendall tau-b | decision accuracy |",
        "|---|---|---|---|---|"]
  for rung, a in ladder["agreement"].items():
    md.append(f"| {rung} | {a['arms']} | {_stat(a['spearman'])} | {_stat(a['kendall'])} | "
              f"{_stat(a['decision_accuracy'])} |")
  return md


def _power_table(ladder: dict) -> list:
  found = [p for r in ladder["rungs"] for p in ladder["power"][r["name"]].values()]
  if not found:
    return []
  first = found[0]
  return ["", "## Seeds needed", "",
          f"From each rung's measured seed-to-seed spread of the paired difference from "
          f"{ladder['baseline']}: the seeds that would tell a difference of "
          f"{first['difference']:g} ({ladder['primary']}) from zero at confidence "
          f"{first['level']:.4f} with power {first['power']:g}, and (in brackets) the seeds "
          "that would resolve the difference measured. '-' : more than 10000.", ""] + \
      _arms_by_rung(ladder, "power", _power_cell)


def _schedule_section(ladder: dict) -> list:
  sch = ladder.get("schedule")
  if not sch:
    return []
  c = sch["compute"]
  if sch["name"] == "grid":
    return ["", "## Schedule: grid", "", "Every arm trained at every rung "
            f"({c['main_run_flops']:.3g} FLOPs of main runs)."]
  md = ["", "## Schedule: successive halving", "",
        f"After each rung, an arm goes up if the rung's best does not beat it (the paired "
        f"interval of arm - best in {ladder['primary']}, Bonferroni-adjusted over the "
        f"rung's other arms) or if it is among the rung's best fraction {sch['keep']:g} by "
        "mean, whichever keeps more; the baseline always goes up (every verdict is "
        "against it).", "", "| rung | trained | best | up | stopped, and why |",
        "|---|---|---|---|---|"]
  for d in sch["decisions"]:
    trained = len(d["survivors"]) + len(d["stopped"])
    why = "; ".join(f"**{a}**: {w}" for a, w in d["stopped"].items()) or "(none)"
    up = ", ".join(f"{a} ({d['kept_by'][a]})" for a in d["survivors"])
    md.append(f"| {d['rung']} | {trained} | {d['best']} | {up} | {why} |")
  frac = c["fraction_of_grid"]
  md += ["", f"Main runs cost {c['main_run_flops']:.3g} FLOPs against the full grid's "
         f"{c['grid_main_run_flops']:.3g}"
         + (f" ({frac:.1%} of it)." if frac is not None else ".")
         + " An arm a rung did not train is charged the rung's baseline cost in the grid's "
         "figure; the methods' own runs are the same under both and not counted."]
  return md


def _choice_line(ladder: dict) -> str:
  c, target = ladder["choice"], ladder["target"]
  if c["verdict"] is None:
    head = (f"**Best at {target}: {c['arm']}, the baseline**: no arm's mean is better than "
            "its own there.")
  else:
    head = (f"**Best at {target}: {c['arm']}** (the best mean; it {c['verdict']} against "
            f"{ladder['baseline']} by the paired interval).")
  return head + f" The smallest rung's best mean was {c['at_smallest_rung']}."


def render(ladder: dict, root) -> str:
  root = files.path(root)
  md = ["# Mixture study: a ladder of model sizes", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Every arm trained at "
        f"every rung it reached with the same {ladder['seeds']} paired seeds; every number is "
        f"on the `{ladder['rungs'][-1]['split']}` split (rows no method tuned on). Primary "
        f"metric: **{ladder['primary']}** ({'higher' if ladder['higher_is_better'] else 'lower'}"
        f" is better); intervals at level {ladder['level']} (Bonferroni-adjusted for the "
        "verdicts).", "",
        _choice_line(ladder), "", "## Rungs", ""]
  md += _rungs_table(ladder)
  md += ["", f"## {ladder['primary']} per rung", ""] + _arms_by_rung(ladder, "metrics",
                                                                      _metric_cell)
  if plots.plot_ladder(ladder, root / rundir.PLOTS / "ladder.png"):
    md += ["", f"![{ladder['primary']} against model size]({rundir.PLOTS}/ladder.png)"]
  md += ["", "## Does the ranking transfer?", "",
         f"Rank agreement of the arms' mean {ladder['primary']} between each rung and "
         f"{ladder['target']}, over the arms both trained; decision accuracy is the share of "
         "arm pairs a rung orders as the largest does (DataDecide's measure; a tie counts "
         "one half). Intervals by resampling each rung's seeds (the same draw for every arm "
         "of a rung); a resampling of a few seeds cannot vary more than those seeds do, so "
         "with fewer than about 5 seeds these intervals are too narrow.", ""] + _agreement_table(ladder)
  md += _schedule_section(ladder) + _power_table(ladder)
  return "\n".join(md) + "\n"


def write(root) -> str:
  """Writes RUN/study.md from RUN/study.json; returns its path."""
  root = files.path(root)
  ladder = files.read_json(root / rundir.STUDY_JSON)
  path = root / rundir.STUDY_MD
  files.write_text(path, render(ladder, root))
  return str(path)
