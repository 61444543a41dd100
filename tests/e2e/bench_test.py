"""The benchmark scripts run and print their tables (smoke runs with tiny
settings; the figures themselves are in docs/, never asserted on)."""

import json
import os
import subprocess
import sys


from helpers import REPO



def _run(args, timeout=900):
  env = dict(os.environ, XLA_FLAGS="")
  r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def test_throughput_bench_prints_its_table(tmp_path):
  out = _run(["bench/throughput.py", "--d_model", "64", "--num_layers", "1", "--num_heads", "2",
              "--head_dim", "32", "--mlp_dim", "128", "--seq_len", "32", "--batch", "5",
              "--steps", "2", "--matmul_n", "256", "--loader_batches", "20",
              "--json_out", str(tmp_path / "t.json")])
  res = json.loads((tmp_path / "t.json").read_text())
  assert 0 < res["lm_step"]["mfu"] and res["dro_overhead"] > 0
  assert res["input_pipeline"]["headroom"] > 0
  assert "| DRO overhead (DRO step / LM step) |" in out
