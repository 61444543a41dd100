"""Run-directory bookkeeping: what a stage writes besides checkpoints and
metrics, and the layout of a pipeline run.

    STAGE_DIR/config.gin          the operative gin config (config.resumed_at_<step>.gin
                                  beside it when a resume changed it)
    STAGE_DIR/run_info.json       corpus, domains, tokenizer, model, mesh, versions
    STAGE_DIR/complete.json       written last, after the final checkpoint

    RUN/round_<r>/reference, RUN/round_<r>/proxy, RUN/main_doremi,
    RUN/main_baseline, RUN/pipeline.json   (the `pipeline` stage)

Only process 0 writes; `is_writer()` says whether this process is it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Optional

import gin
import jax

from doremi_jax import distributed
from doremi_jax import files
from doremi_jax.config import ConfigError
from doremi_jax.model import EXECUTION_FIELDS, ModelConfig

# Every file and directory name a run writes or reads is spelled here and
# nowhere else (tests/unit/structure_test.py checks).
# Every training stage (the runner)
COMPLETE = "complete.json"                        # written last, after the final checkpoint
RUN_INFO = "run_info.json"
CONFIG = "config.gin"
CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
TENSORBOARD = "tensorboard"
EVAL = "eval.json"                                # the final evaluation
EVAL_LOG = "eval.jsonl"                           # every evaluation during training
LOCK = "lock.json"                                # the lease of the process writing the run
IDENTITY = "identity.json"                        # what decides the run's result
# Step 1 and Step 3: the rates a static run trains with (`weights_file`)
REFERENCE_WEIGHTS = "reference_weights.json"
MAIN_WEIGHTS = "main_weights.json"
# Step 2 (proxy)
AVERAGE_WEIGHTS = "average_domain_weights.json"   # Step 2's result, read by Step 3
REFERENCE_EVAL = "reference_eval.json"            # Step 2's reference, evaluated
DOREMI_WEIGHTS_LOG = "doremi_weights.jsonl"       # Step 2's weights over its steps
# A mixture that changes during training (online mixers, Step 2's resample mode)
MIXTURE_LOG = "mixture_weights.jsonl"             # the rates of every block of steps
AVERAGE_MIXTURE_WEIGHTS = "average_mixture_weights.json"
MIXER_COST = "mixer_cost.json"                    # an online mixer's own evaluations
# The pipeline
PIPELINE_STATE = "pipeline.json"
PIPELINE_CONFIG = "pipeline_config.gin"
COMPARISON = "comparison.json"
MAIN_MODEL_DOREMI = "main_doremi"                 # the pipeline's two Step 3 runs
MAIN_MODEL_BASELINE = "main_baseline"
REPORT_MD = "report.md"                           # the pipeline report
REPORT_JSON = "report.json"                       # what report.md shows, as data
PLOTS = "plots"                                   # every report's figures
# The study (its arms' runs: `arm_dir`)
STUDY_JSON = "study.json"
STUDY_MD = "study.md"
STUDY_DOREMI = "doremi"        # RUN/doremi: a study's DoReMi pipeline (reference + proxy)
STUDY_SWARM = "swarm"          # RUN/swarm: a study's swarm
STUDY_REFERENCE = "reference"  # RUN/reference: online DoReMi's reference without DoReMi arms
STUDY_RUNGS = "rungs"          # RUN/rungs/<rung>/: a ladder's arms at one model size
PLAN, TASK_DONE = "plan", "done.json"   # RUN/plan/<phase>.json, <phase>/<task>/ (plan.py)
# The swarm
SWARM_MIXTURES = "swarm_mixtures.json"
SWARM_JSON = "swarm.json"
SWARM_MD = "swarm.md"
SWARM_WEIGHTS = "swarm_weights.json"
SWARM_GROUP = "group_{}"   # WORKDIR/group_<g>: one group of a split swarm (train_swarm.groups)
# What a later stage reads from a finished one: complete.json records their
# SHA-256 and `read_result` refuses a file changed since.
CONSUMED = (REFERENCE_WEIGHTS, MAIN_WEIGHTS, AVERAGE_WEIGHTS, AVERAGE_MIXTURE_WEIGHTS,
            SWARM_WEIGHTS, SWARM_JSON)


def method_dir(root, name: str, seed=None, scale=None):
  """A study's method run `name` (STUDY_DOREMI, STUDY_SWARM, ...): RUN/<name>
  when shared by every seed (seed None), RUN/<name>/seed_<seed> when each
  seed runs the method itself (`train_study.method_seeds='per_seed'`);
  RUN/<name>_at_<scale> at a ladder rung's size ('doremi@small')."""
  base = files.path(root) / (name if scale is None else f"{name}_at_{scale}")
  return base if seed is None else base / f"seed_{seed}"


def rung_dir(root, rung: str):
  """A ladder study's rung `rung`: RUN/rungs/<rung> (its arms/, study.json, study.md)."""
  return files.path(root) / STUDY_RUNGS / rung


def arm_dir(root, arm: str, seed: int):
  """A study's run of `arm` with seed `seed`: RUN/arms/<arm>/seed_<seed>."""
  return files.path(root) / "arms" / arm / f"seed_{seed}"


def round_number(name: str) -> Optional[int]:
  """r for a pipeline's `round_<r>` directory name, else None."""
  digits = name[len("round_"):]
  return int(digits) if name.startswith("round_") and digits.isdigit() else None


def is_writer() -> bool:
  return jax.process_index() == 0


def announce(stage: str, msg: str):
  """`[stage] msg` on process 0's stdout."""
  if is_writer():
    print(f"[{stage}] {msg}", flush=True)


def round_dir(workdir, r: int, stage: str):
  return files.path(workdir) / f"round_{r}" / stage


def weights_file(stage: str) -> str:
  """The rates a static run (or a mixer's prior) trains with:
  REFERENCE_WEIGHTS or MAIN_WEIGHTS."""
  return {"reference": REFERENCE_WEIGHTS, "main": MAIN_WEIGHTS}[stage]


def load_pipeline_state(workdir) -> Optional[dict]:
  path = files.path(workdir) / PIPELINE_STATE
  return files.read_json(path) if files.exists(path) else None


def check_writable(workdir: str):
  """Refuses a run directory that is a file or cannot be written (local
  paths; gs:// is checked by its first write)."""
  if "://" in str(workdir):
    return
  path = os.path.abspath(str(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"the run directory {workdir} is a file, not a directory; choose "
                      "another --workdir (or run.workdir).")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"cannot create or write the run directory {workdir}: {existing} is "
                      "not a writable directory. Choose another --workdir.")


def check_resumable(workdir: str, stage: str, model_cfg, domains):
  """Before anything is written: a run directory that already holds a run
  must hold this stage's run, on the same domains, with the same model, or
  its checkpoints could not be resumed."""
  check_writable(workdir)
  path = files.path(workdir) / RUN_INFO
  if not files.exists(path):
    return
  try:
    info = files.read_json(path)
  except ValueError as e:
    raise ConfigError(f"{path} is not valid JSON ({e}); this run directory is damaged. "
                      "Use a new --workdir, or remove the file to start afresh.") from e
  redo = "Use a new --workdir for this configuration, or resume with the recorded one."
  if info.get("stage") != stage:
    raise ConfigError(f"{workdir} holds a {info.get('stage')!r} run, not a {stage!r} run. "
                      "Use another --workdir.")
  if info.get("domains") != list(domains):
    raise ConfigError(f"{workdir} was trained on domains {info.get('domains')}, but this "
                      f"configuration has {list(domains)}. {redo}")
  now = json.loads(json.dumps(dataclasses.asdict(model_cfg)))
  was = info.get("model", {})
  changed = {k: (was.get(k), v) for k, v in now.items()
             if was.get(k) != v and k not in EXECUTION_FIELDS}
  if changed:
    raise ConfigError(f"{workdir} was trained with another model: "
                      + ", ".join(f"ModelConfig.{k} {a!r} then, {b!r} now"
                                  for k, (a, b) in changed.items()) + f". {redo}")


# What decides a run's result, recorded in identity.json (see check_identity).
# TrainConfig fields that only say how often or how it computes are free.
FREE_TRAIN_FIELDS = ("grad_accum_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                     "async_checkpointing", "eval_every", "eval_batch_size", "eval_tasks_every",
                     "tensorboard")


def run_identity(stage: str, cfg, setup, corpus, method: dict) -> dict:
  """Everything that decides a stage's result: the stage; the TrainConfig
  fields that are not free (seed, batch, sequence length, steps, what is
  evaluated); the optimizer; the model (its execution fields aside); the
  data (corpus, domains, tokenizer, train tokens); the stage's mixture or
  method settings (`method`, the hooks' `identity()`)."""
  train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in FREE_TRAIN_FIELDS}
  return json.loads(json.dumps({
      "stage": stage, "train": train,
      "optimizer": None if setup.opt_cfg is None else dataclasses.asdict(setup.opt_cfg),
      "model": {k: v for k, v in dataclasses.asdict(setup.model_cfg).items()
                if k not in EXECUTION_FIELDS},
      "data": {"corpus": corpus.name, "domains": list(corpus.domains),
               "tokenizer": describe_vocabulary(corpus.vocabulary),
               "train_tokens": [int(t) for t in corpus.train_tokens]},
      "method": method}))


def _flat(obj, prefix=""):
  if isinstance(obj, dict) and obj:
    out = {}
    for k, v in obj.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: obj}


_SECTION = {"train": "TrainConfig", "optimizer": "OptimizerConfig", "model": "ModelConfig"}


def _spelled(key: str) -> str:
  section, _, rest = key.partition(".")
  return f"{_SECTION[section]}.{rest}" if section in _SECTION else key


def check_identity(workdir, identity: dict) -> Optional[dict]:
  """Before anything is written: the run recorded in `workdir` (identity.json)
  must be this run. Every difference is a ConfigError naming it, except a
  longer TrainConfig.num_steps, which is allowed (returned as
  {"from", "to"} so that it is recorded)."""
  path = files.path(workdir) / IDENTITY
  if not files.exists(path):
    return None
  was, now = _flat(files.read_json(path).get("run", {})), _flat(identity)
  extended = None
  steps_then, steps_now = was.get("train.num_steps"), now.get("train.num_steps")
  if isinstance(steps_then, int) and isinstance(steps_now, int) and steps_now > steps_then:
    extended = {"from": steps_then, "to": steps_now}
  changed = [k for k in sorted(set(was) | set(now))
             if was.get(k) != now.get(k) and not (k == "train.num_steps" and extended)]
  if changed:
    listed = "; ".join(f"{_spelled(k)} {was.get(k)!r} then, {now.get(k)!r} now"
                       for k in changed[:8])
    more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
    raise ConfigError(
        f"{workdir} holds another run: {listed}{more}. A resume must be the same run "
        "(only a longer TrainConfig.num_steps and settings of how it computes may change). "
        "Use a new --workdir for these settings, or resume with the recorded ones "
        f"({path}).")
  return extended


def write_identity(workdir, identity: dict, start_step: int, extended: Optional[dict]) -> None:
  """Records the run's identity (process 0): at its start, and again when a
  resume at `start_step` extends num_steps (listed under "extended")."""
  if not is_writer():
    return
  path = files.path(workdir) / IDENTITY
  if files.exists(path) and extended is None:
    return
  record = files.read_json(path) if files.exists(path) else {"extended": []}
  record["run"] = identity
  if extended is not None:
    record["extended"] = record.get("extended", []) + [dict(extended, at_step=start_step)]
  files.write_json(path, record)


def identity_digest(workdir) -> Optional[str]:
  """SHA-256 of the run in `workdir` as its identity.json records it (None
  when it records none): how a run names another run it reads, e.g. its
  reference, independent of where that directory now lies."""
  path = files.path(workdir) / IDENTITY
  if not files.exists(path):
    return None
  run = files.read_json(path).get("run")
  return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()


def trim_logs(workdir, start_step: int) -> None:
  """Before a run (re)starts at `start_step` (0: afresh), process 0 cuts
  the runner's logs (metrics.jsonl, eval.jsonl) back to the rows of steps
  <= start_step (none for a fresh start, which evaluates step 0 again):
  the rows a killed run wrote past its last checkpoint, and a line it cut
  short, go, so the resumed run's logs equal an uninterrupted run's
  (wall-clock `timestamp` fields aside)."""
  if not is_writer():
    return
  for name in (METRICS_LOG, EVAL_LOG):
    files.keep_jsonl_through(files.path(workdir) / name, start_step if start_step else -1)


def logged_eval(workdir, step: int) -> bool:
  """Whether eval.jsonl holds the evaluation of `step` (process 0 reads it
  and every process gets its answer, so all evaluate or none does)."""
  logged = is_writer() and any(
      row.get("step") == step for row in files.read_jsonl(files.path(workdir) / EVAL_LOG))
  return bool(distributed.from_process_0(logged))


def recorded_model(info: dict):
  """The ModelConfig a run recorded in its run_info."""
  return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in info["model"].items()})


def write_config(workdir: str, text: str, start_step: int) -> str:
  """Writes the resolved gin config into the run directory.

  The first run writes `config.gin`. A resumed run never overwrites it: when
  the config changed it is written next to it as
  `config.resumed_at_<step>.gin` so that nothing already written is lost.
  """
  path = files.path(workdir) / CONFIG
  if files.exists(path):
    if files.read_text(path) == text:
      return str(path)
    path = files.path(workdir) / f"config.resumed_at_{start_step}.gin"
  files.write_text(path, text)
  return str(path)


def describe_vocabulary(vocab) -> dict:
  d = {"class": type(vocab).__name__, "vocab_size": int(vocab.vocab_size)}
  path = getattr(vocab, "sentencepiece_model_file", None)
  if path:
    d["sentencepiece_model_file"] = str(path)
    # Identity by content: the same model copied elsewhere is the same tokenizer.
    d["sentencepiece_sha256"] = _sha256(path)
  return d


def write_run_info(workdir: str, stage: str, start_step: int, corpus, setup,
                   extra: Optional[dict] = None):
  """config.gin and run_info.json (or `run_info.resumed_at_<step>.json` when
  a resumed run would overwrite the first)."""
  if not is_writer():
    return
  write_config(workdir, gin.operative_config_str(), start_step)
  info = {
      "stage": stage,
      "corpus": corpus.name,
      "domains": list(corpus.domains),
      "tokenizer": describe_vocabulary(corpus.vocabulary),
      "train_tokens": [int(t) for t in corpus.train_tokens],
      "bytes_per_token": (None if corpus.bytes_per_token is None else
                          [None if r is None else float(r) for r in corpus.bytes_per_token]),
      "model": dataclasses.asdict(setup.model_cfg),
      "num_params": setup.model_cfg.num_params(),
      "mesh": dict(setup.mesh.shape),
      "num_devices": setup.mesh.size,
      "process_count": jax.process_count(),
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
  }
  info.update(extra or {})
  name = RUN_INFO
  if start_step and files.exists(files.path(workdir) / name):
    name = f"run_info.resumed_at_{start_step}.json"
  files.write_json(files.path(workdir) / name, info)


def mark_complete(workdir: str, stage: str, num_steps: int, seconds: float, summary: str,
                  timing: Optional[dict] = None):
  """Written last, once the final checkpoint is on disk: the stage is done.
  The pipeline skips stages that have it. `timing` (this invocation's first
  step and later steps) is recorded with it."""
  if is_writer():
    root = files.path(workdir)
    files.write_json(root / COMPLETE, {
        "stage": stage, "num_steps": int(num_steps), "seconds": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "timing": timing or {},
        "sha256": {n: _sha256(root / n) for n in CONSUMED if files.exists(root / n)}})
    print(f"[{stage}] done in {seconds:.0f}s: {summary}", flush=True)


def is_complete(workdir: str) -> bool:
  return files.exists(files.path(workdir) / COMPLETE)


def _sha256(p) -> str:
  return hashlib.sha256(files.path(p).read_bytes()).hexdigest()


def read_result(p):
  """A file a later stage consumes (CONSUMED), read and checked against the
  SHA-256 its stage recorded in complete.json: ConfigError when it was
  changed after the stage completed. A file outside a completed run (a
  user's weights file) is only read."""
  p = files.path(p)
  obj = files.read_json(p)
  done = p.parent / COMPLETE
  recorded = files.read_json(done).get("sha256", {}) if files.exists(done) else {}
  want = recorded.get(p.name) if isinstance(recorded, dict) else None
  if want is not None and _sha256(p) != want:
    raise ConfigError(
        f"{p} was changed after its stage completed: its SHA-256 is not the one recorded in "
        f"{done}. Restore the file (or re-run the stage in a new --workdir); to train on "
        "edited weights, copy them to a file outside the run directory and name that file.")
  return obj
