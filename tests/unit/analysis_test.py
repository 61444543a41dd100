"""The reports from their dicts alone (no run directory, no training): the
pipeline's report.json -> report.md, study.json -> study.md, swarm.json ->
swarm.md, each with its plots; and the pipeline's collect on a hand-written
run directory, whose report.json re-renders to the same report.md."""

import json
import math

from doremi_jax import rundir
from doremi_jax.analysis import compare
from doremi_jax.analysis import health
from doremi_jax.analysis import pipeline_report
from doremi_jax.analysis import stats
from doremi_jax.analysis import study_report
from doremi_jax.analysis import swarm_report
from doremi_jax.analysis import task_stats

DOMAINS = ["a", "b"]
INFO = {"stage": "main", "domains": DOMAINS, "num_steps": 10, "tokens_per_step": 64,
        "seq_len": 8, "train_tokens": [1000, 1000], "bytes_per_token": [1.0, 2.0],
        "tokenizer": {"class": "ByteVocabulary", "vocab_size": 259}}


def _json(x):
  """What a dict is after being written as JSON and read back."""
  return json.loads(json.dumps(x))


def _eval(la: float, lb: float, excess=None) -> dict:
  """An eval.json summary with losses la, lb (nats/token)."""
  per = {d: {"loss": x, "perplexity": math.exp(x), "tokens": 64}
         for d, x in zip(DOMAINS, (la, lb))}
  for d, e in zip(DOMAINS, excess or ()):
    per[d]["excess_over_reference"] = e
  worst = max(zip((la, lb), DOMAINS))
  return {"step": 10, "per_domain": per, "uniform_average": (la + lb) / 2,
          "worst_case": {"domain": worst[1], "loss": worst[0]}}


def _stage(name: str, kind: str, final=None, weights_log=()) -> dict:
  """A finished stage as `pipeline_report.read_stage` returns it."""
  key = "proxy_domain_loss" if kind == "proxy" else "domain_loss"
  return {"name": name, "kind": kind, "dir": f"/nowhere/{name}", "exists": True,
          "info": dict(INFO, stage=kind), "complete": {"num_steps": 10, "seconds": 3.2},
          "eval": final, "last_checkpoint": 10, "weights_log": list(weights_log),
          "metrics": [{"step": s, "loss": 3.0 - 0.1 * s, key: [3.0 - 0.1 * s, 2.9 - 0.1 * s],
                       "domain_tokens": [32, 32]} for s in (0, 5, 9)]}


WEIGHTS_LOG = [{"step": s, "domain_names": DOMAINS, "domain_weights": [0.5 + 0.02 * s,
                                                                      0.5 - 0.02 * s],
                "average_weights": [0.5 + 0.01 * s, 0.5 - 0.01 * s]} for s in range(1, 11)]
FINAL = {"a": 0.6, "b": 0.4}


def pipeline_dict() -> dict:
  """A finished one-round pipeline's report.json."""
  doremi, base = _eval(2.0, 3.0), _eval(2.1, 2.9)
  stages = [_stage("round_1/reference", "reference"),
            _stage("round_1/proxy", "proxy", _eval(2.2, 3.1, (0.1, -0.05)), WEIGHTS_LOG),
            _stage(rundir.MAIN_MODEL_DOREMI, "main", doremi),
            _stage(rundir.MAIN_MODEL_BASELINE, "main", base)]
  return {
      "run_dir": "/nowhere", "written_at": "2026-01-01 00:00 UTC",
      "pipeline": {"status": "complete", "seconds": 12.0, "tolerance": 0.01,
                   "rounds": [{"round": 1, "l1_change": 0.2}], "converged_at_round": None,
                   "rounds_requested": 1},
      "domains": DOMAINS, "stages": stages,
      "weight_trajectory": [[0, {"a": 0.5, "b": 0.5}], [1, FINAL]],
      "proxy_vs_reference": [{"stage": "round_1/proxy", "per_domain": {
          "a": {"reference_loss": 2.1, "proxy_loss": 2.2, "proxy_excess": 0.1},
          "b": {"reference_loss": 3.15, "proxy_loss": 3.1, "proxy_excess": None}}}],
      "health": health.weight_collapse(WEIGHTS_LOG),
      "final_weight_shares": health.shares(DOMAINS, FINAL, [1.0, 2.0]),
      "comparison": compare.compare(doremi, base),
  }


def test_pipeline_report_renders_from_its_dict_alone(tmp_path):
  report = pipeline_dict()
  text = pipeline_report.render(report, tmp_path)
  assert text.startswith("# DoReMi report: `/nowhere`\n\nWritten 2026-01-01 00:00 UTC")
  assert "| round_1/proxy | `/nowhere/round_1/proxy` | complete (10 steps, 3 s) |" in text
  assert "Pipeline status: **complete**, 12 s in total." in text
  assert "| a | 0.5000 | 0.6000 |" in text and "not converged within 1 round(s)." in text
  assert "| b | 3.1500 | 3.1000 | — |" in text          # no excess: a dash
  assert "| Step 2 weight collapse | 0 of 10 steps (0%) with a weight > 0.9" in text
  assert "| b | 0.4000 | 0.5714 |" in text               # 0.4 x 2 bytes / (0.6 + 0.8)
  assert "```\n" + compare.format_comparison(report["comparison"]) + "\n```" in text
  assert "DoReMi is better on 1 of 2 domains (" in text
  assert text.endswith("## Missing or unfinished\n\nNothing: every stage finished.\n")
  for name in ("weights_final_vs_reference.png", "weights_across_rounds.png",
               "proxy_weights_round_1.png", "main_doremi_vs_baseline.png",
               "training_curves.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 10_000, name
    assert f"(plots/{name})" in text
  # the same Markdown from the dict written as JSON and read back
  assert pipeline_report.render(_json(report), tmp_path / "again") == text


def test_pipeline_report_of_a_run_with_only_step1(tmp_path):
  ref = _stage("round_1/reference", "reference")
  missing = {"name": "round_1/proxy", "kind": "proxy", "dir": "/nowhere/round_1/proxy",
             "exists": False, "info": None, "complete": None, "eval": None,
             "last_checkpoint": None, "metrics": [], "weights_log": []}
  report = {"run_dir": "/nowhere", "written_at": "2026-01-01 00:00 UTC", "pipeline": None,
            "domains": DOMAINS, "stages": [ref, missing], "weight_trajectory": [],
            "proxy_vs_reference": [], "health": [], "final_weight_shares": None,
            "comparison": None}
  text = pipeline_report.render(report, tmp_path)
  assert "No finished Step 2 (proxy) yet, so no DoReMi weights." in text
  assert "Nothing to check yet." in text
  assert "Not available: needs finished `main_doremi` and `main_baseline` stages." in text
  assert "- round_1/proxy: missing: not run yet" in text
  assert pipeline_report.unfinished(report) == ["round_1/proxy"]
  assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["training_curves.png"]


def _write_run(root, report: dict):
  """The files of a pipeline run directory that would give `report`."""
  for s in report["stages"]:
    d = root / s["name"]
    (d / rundir.CHECKPOINTS / "10").mkdir(parents=True)
    (d / rundir.RUN_INFO).write_text(json.dumps(s["info"]))
    (d / rundir.COMPLETE).write_text(json.dumps(s["complete"]))
    (d / rundir.METRICS_LOG).write_text("".join(json.dumps(r) + "\n" for r in s["metrics"]))
    if s["eval"]:
      (d / rundir.EVAL).write_text(json.dumps(s["eval"]))
    if s["kind"] == "proxy":
      (d / rundir.DOREMI_WEIGHTS_LOG).write_text(
          "".join(json.dumps(r) + "\n" for r in s["weights_log"]))
      (d / rundir.AVERAGE_WEIGHTS).write_text(json.dumps(FINAL))
      (d / rundir.REFERENCE_EVAL).write_text(json.dumps(_eval(2.1, 3.15)))
  (root / rundir.PIPELINE_STATE).write_text(json.dumps(
      dict(report["pipeline"], initial_reference_weights={"a": 0.5, "b": 0.5})))


def test_collect_writes_report_json_that_renders_to_report_md(tmp_path):
  run = tmp_path / "run"
  _write_run(run, pipeline_dict())
  path = pipeline_report.write(str(run))
  assert path == str(run / rundir.REPORT_MD)
  on_disk = json.loads((run / rundir.REPORT_JSON).read_text())
  assert on_disk == _json(dict(pipeline_report.collect(str(run)),
                               written_at=on_disk["written_at"]))
  assert [s["name"] for s in on_disk["stages"]] == [s["name"] for s in pipeline_dict()["stages"]]
  assert on_disk["weight_trajectory"] == [[0, {"a": 0.5, "b": 0.5}], [1, FINAL]]
  assert on_disk["comparison"] == pipeline_dict()["comparison"]
  text = (run / rundir.REPORT_MD).read_text()
  assert pipeline_report.render(on_disk, tmp_path / "elsewhere") == text
  assert "| round_1/proxy | `" + str(run / "round_1" / "proxy") + "` | complete" in text
  assert "| proxy below reference | b -0.050 | WARN |" in text


def study_dict() -> dict:
  """study.json of two arms x 3 seeds in which 'x' loses on domain b, plus
  what `study_report.collect` adds (an online mixer's rates for 'x')."""
  arms, seeds, m = ["stratified", "x"], 3, 1
  losses = {"stratified": {"a": [2.0, 2.1, 2.05], "b": [3.0, 3.1, 3.05]},
            "x": {"a": [2.0, 2.08, 2.06], "b": [3.5, 3.55, 3.6]}}
  curves = {arm: [[[0, 5, 10], [4.0, 3.0, sum(losses[arm][d][s] for d in DOMAINS) / 2]]
                  for s in range(seeds)] for arm in arms}
  results = {}
  for arm in arms:
    per = losses[arm]
    uniform = [(per["a"][s] + per["b"][s]) / 2 for s in range(seeds)]
    worst = [max(per["a"][s], per["b"][s]) for s in range(seeds)]
    w = {"a": 0.5, "b": 0.5} if arm == "stratified" else {"a": 0.9, "b": 0.1}
    r = {"uniform_avg": stats.summarize(uniform), "worst_case": stats.summarize(worst),
         "domains": {d: stats.summarize(per[d]) for d in DOMAINS}, "weights": w,
         "shares": health.shares(DOMAINS, w, [1.0, 2.0]),
         "cost": {"fraction_of_one_main_run": 1.0 if arm == "stratified" else 1.25}}
    r["spread"] = {"uniform_avg_std": r["uniform_avg"]["std"],
                   "worst_case_std": r["worst_case"]["std"]}
    if arm == "stratified":
      r["speedup"] = {"mean": 1.0, "ci": [1.0, 1.0], "reached": seeds}
    else:
      b = losses["stratified"]
      base_uniform = [(b["a"][s] + b["b"][s]) / 2 for s in range(seeds)]
      base_worst = [max(b["a"][s], b["b"][s]) for s in range(seeds)]
      r["vs_baseline"] = {
          "uniform_avg": stats.paired_difference(uniform, base_uniform, 0.95, m),
          "worst_case": stats.paired_difference(worst, base_worst, 0.95, m),
          "domains": {d: stats.paired_difference(per[d], b[d], 0.95, m) for d in DOMAINS}}
      r["speedup"] = stats.speedup([tuple(c) for c in curves[arm]],
                                   [tuple(c) for c in curves["stratified"]], 0.95, m)
    results[arm] = r
  rows = [{"block": i, "step": 5 * i, "method": "odm", "domain_names": DOMAINS,
           "domain_weights": [0.5 + 0.2 * i, 0.5 - 0.2 * i]} for i in range(3)]
  return {"baseline": "stratified", "arms": arms, "seeds": seeds, "domains": DOMAINS,
          "level": 0.95, "comparisons": m,
          "adjustment": f"Bonferroni over the {m} arm(s) compared with the baseline: each "
                        f"interval at confidence {stats.adjusted_level(0.95, m):.4f}",
          "curves": curves, "results": results,
          "health": [health.starved_domains(DOMAINS, {"a": 0.9, "b": 0.1}, 10, 2, " (x)")],
          "root": "/nowhere", "written_at": "2026-01-01 00:00 UTC",
          "schedules": {"stratified": [], "x": rows}}


def test_study_report_renders_from_its_dict_alone(tmp_path):
  study = study_dict()
  text = study_report.render(study, tmp_path)
  assert text.startswith("# Mixture study: 2 arms x 3 seeds\n\nWritten 2026-01-01 00:00 UTC "
                         "from `/nowhere`.")
  vs = study["results"]["x"]["vs_baseline"]
  assert vs["domains"]["b"]["verdict"] == "loses"
  assert "## Verdicts" in text and "Bonferroni over the 1 arm(s)" in text
  assert f"| x | {study['results']['x']['uniform_avg']['mean']:.4f} [" in text
  assert f"{vs['domains']['b']['diff']:+.3f} [" in text and "**loses**" in text
  assert "| x | 0.900 | 0.100 |" in text                           # token weights
  assert "| x | 0.818 | 0.182 |" in text                           # byte shares
  assert "| domains starved (x) | b 2.0 | WARN |" in text
  for name in ("study_forest.png", "study_curves.png", "study_mixer_rates.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 10_000, name
    assert f"(plots/{name})" in text
  assert study_report.render(_json(study), tmp_path / "again") == text
  assert study_report.format_verdicts(study).splitlines()[1].endswith("baseline")


def test_study_report_says_at_target_from_the_start(tmp_path):
  """An arm whose step-0 evaluation already reaches the baseline's final
  loss (a planted history): study.json holds a null speed-up with the
  reason, study.md says "at target from the start"."""
  study = study_dict()
  at_start = [(c[0], [2.0] + c[1][1:]) for c in study["curves"]["x"]]
  study["results"]["x"]["speedup"] = stats.speedup(
      at_start, [tuple(c) for c in study["curves"]["stratified"]])
  sp = _json(study)["results"]["x"]["speedup"]
  assert sp["mean"] is None and sp["reason"] == "at target from the start"
  text = study_report.render(_json(study), tmp_path)
  assert "| at target from the start on 3 of 3 seeds | 1.25 |" in text


def test_study_md_from_study_json(tmp_path):
  study = {k: v for k, v in study_dict().items()
           if k not in ("root", "written_at", "schedules")}
  (tmp_path / rundir.STUDY_JSON).write_text(json.dumps(study))
  path = study_report.write(tmp_path)
  text = (tmp_path / rundir.STUDY_MD).read_text()
  assert path == str(tmp_path / rundir.STUDY_MD)
  assert f"from `{tmp_path}`." in text and "## Health checks" in text
  assert "Online mixers' rates" not in text       # no arm's rate log in this directory
  assert (tmp_path / "plots" / "study_forest.png").exists()


def swarm_dict() -> dict:
  """swarm.json of 4 members on 2 domains with two laws (one with an
  undefined rank correlation)."""
  mixtures = [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.3, 0.7]]
  losses = [[2.0, 3.0], [1.8, 4.0], [2.6, 2.7], [2.2, 2.8]]
  targets = {"a": [r[0] for r in losses], "b": [r[1] for r in losses],
             "average": [sum(r) / 2 for r in losses], "worst": [max(r) for r in losses]}
  laws = {}
  for law, rho, shift in (("linear", 0.8, 0.01), ("loglinear", float("nan"), -0.02)):
    cv = {t: {"spearman": rho, "rmse": abs(shift), "predicted": [x + shift for x in y]}
          for t, y in targets.items()}
    laws[law] = {"cross_validation": cv, "objective_cross_validation": cv["average"],
                 "optimum": {"a": 0.45, "b": 0.55} if law == "linear" else {"a": 0.4, "b": 0.6},
                 "predicted_objective": 2.4 + shift}
  return {"domains": DOMAINS, "members": 4, "mixtures": mixtures, "losses": losses,
          "targets": targets, "prior": {"a": 0.5, "b": 0.5}, "objective": "average",
          "objective_terms": {"average": 1.0}, "kl_weight": 0.05,
          "caps": {"a": 0.9, "b": 1.0}, "folds": 2, "law": "loglinear", "laws": laws,
          "weights": laws["loglinear"]["optimum"],
          "best_member": {"index": 3, "objective": 2.5, "mixture": {"a": 0.3, "b": 0.7}}}


def test_swarm_md_from_swarm_json(tmp_path):
  (tmp_path / rundir.SWARM_JSON).write_text(json.dumps(swarm_dict()))
  path = swarm_report.write(tmp_path, compare={"doremi": {"a": 0.7, "b": 0.3}})
  text = (tmp_path / rundir.SWARM_MD).read_text()
  assert path == str(tmp_path / rundir.SWARM_MD)
  assert text.startswith("# Swarm: 4 members, law `loglinear`")
  assert "Cross-validated quality of each law (2-fold over members)" in text
  assert "| target | linear | loglinear |" in text                    # the file's law order
  assert "| average | 0.800 (0.0100) | n/a (0.0200) |" in text
  assert "repetition caps a 0.900, b 1.000." in text
  assert "| domain | prior | linear optimum | loglinear optimum | best member | doremi | " in text
  assert "| a | 0.500 | 0.450 | 0.400 | 0.300 | 0.700 |" in text
  assert "best member (measured): 2.5000 (member 3)." in text
  assert "`swarm_weights.json` holds the `loglinear` optimum" in text
  for name in ("swarm_fits.png", "swarm_weights.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 10_000, name
  report = swarm_report.collect(tmp_path, {"doremi": {"a": 0.7, "b": 0.3}})
  assert swarm_report.render(_json(report), tmp_path / "again") == text


def test_run_directory_names():
  assert str(rundir.arm_dir("/r", "doremi", 2)) == "/r/arms/doremi/seed_2"
  assert [rundir.round_number(n) for n in ("round_3", "round_", "round_x", "main_doremi")] == \
      [3, None, None, None]
  assert rundir.round_dir("/r", 2, "proxy").parent.name == "round_2"


def test_a_comparison_names_its_split_and_refuses_two():
  from doremi_jax.evaluate import summarize
  a = summarize(["x", "y"], [2.0, 3.0], [1, 1], 10)
  b = summarize(["x", "y"], [2.5, 2.0], [1, 1], 10)
  assert a["split"] == "test"
  assert compare.compare(a, b)["split"] == "test"
  tuned = summarize(["x", "y"], [2.5, 2.0], [1, 1], 10, split="tune")
  try:
    compare.compare(a, tuned)
  except ValueError as e:
    assert "different splits" in str(e)
  else:
    raise AssertionError("a test and a tune evaluation were compared")


def test_pipeline_report_shows_doremi_against_the_baseline_per_task(tmp_path):
  report = pipeline_dict()
  doremi, base = _eval(2.0, 3.0), _eval(2.1, 2.9)
  doremi["tasks"] = {"qa": {"kind": "choice", "primary": "bpb", "bpb": 1.25, "acc": 0.5}}
  base["tasks"] = {"qa": {"kind": "choice", "primary": "bpb", "bpb": 1.5, "acc": 0.25}}
  report["comparison"] = compare.compare(doremi, base)
  text = pipeline_report.render(_json(report), tmp_path)
  assert "| qa | bpb (primary) | 1.2500 | 1.5000 | -0.2500 |" in text
  assert "| qa | acc | 0.5000 | 0.2500 | +0.2500 |" in text
  assert "task qa (bpb): DoReMi 1.2500, baseline 1.5000, delta -0.2500" in text


def test_study_report_leads_with_the_primary_metric_and_lists_every_task(tmp_path):
  study = study_dict()
  finals, logs = {}, {}
  for arm, accs in (("stratified", [0.30, 0.32, 0.31]), ("x", [0.50, 0.52, 0.55])):
    finals[arm] = [{"uniform_average": 1.0, "worst_case": {"loss": 1.0}, "tasks": {"qa": {
        "kind": "choice", "primary": "bpb", "acc": a, "bpb": 2.0 - a}}} for a in accs]
    logs[arm] = [[dict(f, step=s) for s in (0, 10)] for f in finals[arm]]
  study["tasks"] = task_stats.analyse(finals, logs, "stratified", 0.95, 1)
  study["task_curves"] = task_stats.primary_curves(logs)
  assert study["task_curves"]["qa/bpb"]["x"][0] == [[0, 10], [1.5, 1.5]]
  study["primary"] = "qa/acc"
  head = task_stats.analyse_metric("qa/acc", finals, logs, "stratified", 0.95, 1)
  for arm in study["results"]:
    study["results"][arm]["primary"] = head[arm]
  text = study_report.render(_json(study), tmp_path)
  assert "## Primary metric: qa/acc" in text and "(higher is better)" in text
  assert head["x"]["vs_baseline"]["verdict"] == "wins"
  assert f"| x | {head['x']['mean']:.4f} [" in text and "**wins**" in text
  assert "## Downstream tasks" in text and "| qa/bpb |" in text and "| qa/acc |" in text
  assert (tmp_path / "plots" / "study_task_curves.png").stat().st_size > 10_000
  console = study_report.format_verdicts(_json(study))
  assert "qa/acc" in console.splitlines()[0] and "wins" in console
