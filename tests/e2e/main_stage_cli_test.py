"""Stage `main` through the CLI: a weights file, and bad weights refused."""

import json
import pytest
from helpers import run_cli, run_cli_many

from doremi_jax import files
from doremi_jax import rundir


SHORT = ["--gin_file=gin/main.gin", "--gin.TrainConfig.num_steps=20",
         "--gin.TrainConfig.global_batch_size=16", "--gin.TrainConfig.seq_len=64",
         "--gin.TrainConfig.eval_examples_per_domain=16"]


def test_main_stage_cli(tmp_path):
  weights = {"noise": 0.0, "repeat": 0.1, "markov": 0.3, "arithmetic": 0.3, "sort": 0.3}
  wfile = tmp_path / "w.json"
  wfile.write_text(json.dumps(weights))
  r = run_cli(SHORT + [f"--gin.train_main_model.weights='{wfile}'"], workdir=tmp_path / "main")
  assert r.returncode == 0, r.stderr[-3000:]
  used = json.loads((tmp_path / "main" / "main_weights.json").read_text())
  assert used == pytest.approx(weights)
  assert json.loads((tmp_path / "main" / "eval.json").read_text())["step"] == 20

  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({**weights, "wiki": 0.2}))
  # A Step 2 run whose averaged weights were edited after it completed.
  edited = tmp_path / "proxy"
  edited.mkdir()
  files.write_json(edited / rundir.AVERAGE_WEIGHTS, weights)
  rundir.mark_complete(str(edited), "proxy", 20, 1.0, "done")
  files.write_json(edited / rundir.AVERAGE_WEIGHTS, {**weights, "noise": 0.5})
  cases = ((bad, "unknown domains ['wiki']"), (tmp_path / "missing.json", "does not exist"),
           (edited, "average_domain_weights.json was changed after its stage completed"))
  results = run_cli_many([(SHORT + [f"--gin.train_main_model.weights='{spec}'"], tmp_path / f"bad{i}")
                          for i, (spec, _) in enumerate(cases)])
  for i, ((_, msg), r) in enumerate(zip(cases, results)):
    assert r.returncode == 2 and msg in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / f"bad{i}").exists()
