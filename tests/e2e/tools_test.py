"""Every tool's bad input ends with `error: ...`, exit status 2, no traceback,
and nothing already written lost; start-up prints no TensorFlow/CUDA/libtpu
chatter."""

import dataclasses
import json
import os
import socket
import time


from doremi_jax.model import ModelConfig

from helpers import run_tools_many


REF = ["--gin_file=gin/reference.gin", "--gin.STEPS=4", "--gin.SEQ_LEN=32", "--gin.BATCH=8"]
CHATTER = ("cuInit", "cudart", "TPU_ACCELERATOR_TYPE", "libtpu", "absl::InitializeLog")


def _cases(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  other_stage = tmp_path / "other_stage"
  other_stage.mkdir()
  (other_stage / "run_info.json").write_text(json.dumps({"stage": "proxy"}))
  other_model = tmp_path / "other_model"
  other_model.mkdir()
  (other_model / "run_info.json").write_text(json.dumps({
      "stage": "reference", "domains": ["noise", "repeat", "markov", "arithmetic", "sort"],
      # gin/models/tiny.gin's model on the 128-id vocabulary, but wider
      "model": dataclasses.asdict(ModelConfig(
          vocab_size=128, d_model=128, num_layers=2, num_heads=4, head_dim=16, mlp_dim=256,
          max_len=1024))}))
  damaged = tmp_path / "damaged_run"          # a run whose run_info.json was cut short
  damaged.mkdir()
  (damaged / "run_info.json").write_text('{"stage": "refer')
  held = tmp_path / "held"                  # a run another live process writes
  held.mkdir()
  now = time.time()
  (held / "lock.json").write_text(json.dumps({
      "host": socket.gethostname(), "pid": os.getpid(), "token": "t", "started_at": now,
      "heartbeat": now}))
  edited = tmp_path / "edited_proxy"        # Step 2's weights edited after it completed
  edited.mkdir()
  domains = ["noise", "repeat", "markov", "arithmetic", "sort"]
  (edited / "average_domain_weights.json").write_text(json.dumps(dict.fromkeys(domains, 0.2)))
  (edited / "complete.json").write_text(json.dumps(
      {"stage": "proxy", "sha256": {"average_domain_weights.json": "0" * 64}}))
  cut_log = tmp_path / "cut_log"            # metrics.jsonl damaged before its last line
  cut_log.mkdir()
  (cut_log / "run_info.json").write_text(json.dumps({"stage": "reference", "domains": domains}))
  (cut_log / "metrics.jsonl").write_text('{"step": 1, "lo\n{"step": 2, "loss": 1.0}\n')
  wd = lambda name: f"--workdir={tmp_path / name}"
  return [
      ("main", REF + ["--bogus_flag=1", wd("m1")], "Unknown command line flag 'bogus_flag'"),
      ("main", REF + ["--gin.ModelConfig.d_model=0", wd("m2")],
       "ModelConfig.d_model must be a positive integer, got 0"),
      ("main", REF + ["--gin.TrainConfig.log_every=0", wd("m3")],
       "TrainConfig.log_every must be a positive integer, got 0"),
      ("main", REF + ["--gin.run.stage='nope'", wd("m5")], "run.stage='nope' is not a stage"),
      ("main", REF + ["--gin.MeshConfig.rules=(('act_batch', 'rows'),)", wd("m6")],
       "'rows'"),
      ("main", REF + [f"--workdir={a_file}"], "is a file, not a directory"),
      ("main", REF + [f"--workdir={other_stage}"], "holds a 'proxy' run, not a 'reference' run"),
      ("main", REF + [f"--workdir={other_model}"],
       "was trained with another model: ModelConfig.d_model 128 then, 64 now"),
      ("main", ["--gin_file=gin/proxy.gin", "--gin.train_proxy.smoothing=2.0", wd("m7")],
       "train_proxy.smoothing must be in [0, 1]"),
      ("main", REF + [f"--workdir={held}"], "is in use by"),
      ("main", ["--gin_file=gin/main.gin", "--gin.STEPS=4", f"--gin.train_main_model.weights="
                f"'{edited}'", wd("m8")], "was changed after its stage completed"),
      ("prepare", ["--domain=x=/nonexistent/*.txt", f"--data_dir={tmp_path / 'd'}"],
       "no files match"),
      ("prepare", ["--domain=x=/etc/hostname", "--validation_fraction=1.5",
                   f"--data_dir={tmp_path / 'd'}"], "--validation_fraction must be in (0, 1)"),
      ("prepare", ["--domain=../x=/etc/hostname", f"--data_dir={tmp_path / 'd'}"],
       "the domain name '../x' is not a safe name"),
      ("prepare", ["--domain=x=/etc/hostname", "--corpus=a/b", f"--data_dir={tmp_path / 'd'}"],
       "--corpus 'a/b' is not a safe name"),
      ("report", [str(damaged)], "run_info.json is damaged (not valid JSON"),
      ("report", [str(cut_log)], "metrics.jsonl is damaged (line 1 is not valid JSON"),
      ("tokenizer", ["--corpus=c", f"--data_dir={tmp_path}"], "--output is required"),
      ("tokenizer", ["--vocab_size=0", f"--output={tmp_path / 'spm'}"], "--vocab_size must be"),
      ("report", [str(tmp_path / "nope")], "does not exist"),
      ("compile_check", ["--gin_file=gin/reference.gin", "--topology=v9-8"],
       "unknown TPU slice 'v9-8'"),
  ]


def test_every_tool_fails_clearly_on_bad_input(tmp_path):
  cases = _cases(tmp_path)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  results = run_tools_many([(tool, args) for tool, args, _ in cases])
  for (tool, args, message), r in zip(cases, results):
    what = f"{tool} {args[-2:]}"
    assert r.returncode == 2, (what, r.returncode, r.stderr[-2000:])
    assert r.stderr.lstrip().startswith("error: "), (what, r.stderr[-2000:])
    assert message in r.stderr, (what, message, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, (what, r.stderr[-3000:])
    for word in CHATTER:
      assert word not in r.stderr, (what, word, r.stderr[-2000:])
  after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  assert after == before     # nothing written, nothing lost
  assert not any((tmp_path / f"m{i}").exists() for i in range(1, 9))
