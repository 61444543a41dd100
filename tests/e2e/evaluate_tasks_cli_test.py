"""`python -m doremi_jax.evaluate_tasks` on the session's quickstart run (its
DoReMi main model, through the pipeline's directory), and its bad input."""

import json

from helpers import run_tools_many


def test_evaluate_tasks_after_training(quickstart_run, tmp_path):
  wd, _, r = quickstart_run
  assert r.returncode == 0, r.stderr[-2000:]
  out = tmp_path / "tasks.json"
  ok, unknown, limit, missing = run_tools_many([
      ("evaluate_tasks", [str(wd), "--tasks=markov_next,repeat_cycle", "--limit=12",
                          f"--output={out}"]),
      ("evaluate_tasks", [str(wd), "--tasks=markov_nxt"]),
      ("evaluate_tasks", [str(wd), "--tasks=markov_next", "--limit=0"]),
      ("evaluate_tasks", [str(tmp_path / "none"), "--tasks=markov_next"])])
  assert ok.returncode == 0, ok.stderr[-2000:]
  got = json.loads(out.read_text())
  info = json.loads((wd / "main_doremi" / "run_info.json").read_text())
  assert got["run_dir"].endswith("main_doremi") and got["step"] == info["num_steps"]
  assert got["split"] == "test"
  markov, repeat = got["tasks"]["markov_next"], got["tasks"]["repeat_cycle"]
  assert markov["questions"] == 12 and 0 <= markov["acc"] <= 1 and markov["bpb"] > 0
  assert 0.25 < markov["prob_correct"] <= 1
  assert repeat["kind"] == "generate" and 0 <= repeat["exact_match"] <= 1
  for r, msg in ((unknown, "unknown task 'markov_nxt'"), (limit, "--limit must be positive"),
                 (missing, "is not a run directory")):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "error: " in r.stderr and msg in r.stderr, r.stderr[-2000:]
