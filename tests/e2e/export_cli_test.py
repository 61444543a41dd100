"""`python -m doremi_jax.export_mixture` on the session's quickstart run, and
its bad input."""

import json
import os
import pytest
from helpers import run_tools_many


def test_export_of_the_quickstart_run(quickstart_run, tmp_path):
  wd, _, r = quickstart_run
  assert r.returncode == 0, r.stderr[-2000:]
  out = tmp_path / "mix.json"
  ok, bad, bad_dir = run_tools_many([
      ("export_mixture", [str(wd), "--format=json", f"--output={out}"]),
      ("export_mixture", [str(wd), "--format=yaml", f"--output={tmp_path / 'x'}"]),
      ("export_mixture", [str(tmp_path / "missing"), "--format=json"])])
  assert ok.returncode == 0, ok.stderr[-2000:]
  got = json.loads(out.read_text())
  # The rates the pipeline's Step 3 trained on, and its token budget.
  used = json.loads((wd / "main_doremi" / "main_weights.json").read_text())
  assert got["weights"] == pytest.approx(used)
  info = json.loads((wd / "main_doremi" / "run_info.json").read_text())
  budget = info["num_steps"] * info["tokens_per_step"]
  assert got["token_budget"] == budget
  for d, t in zip(info["domains"], info["train_tokens"]):
    assert got["expected_epochs"][d] == pytest.approx(budget * used[d] / t)
  for r in (bad, bad_dir):
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
  assert "--format='yaml' does not exist" in bad.stderr
  assert not os.path.exists(tmp_path / "x")
