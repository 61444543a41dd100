r"""Export a run's final domain weights in the form another stack reads.

  python -m doremi_jax.export_mixture RUN_DIR --format FORMAT \
      [--token_budget TOKENS] [--paths DOMAIN=GLOB ...] [--output FILE]

RUN_DIR is a pipeline or Step 3 run (the rates Step 3 trained on,
`main_weights.json`; a pipeline without Step 3: its last round's average),
a Step 2 run (`average_domain_weights.json`), a swarm
(`swarm_weights.json`), or a `{domain: weight}` JSON file. FORMAT:

  json      {weights, expected_epochs, token_budget, source}
  seqio     a Python module registering a seqio Mixture over the domains'
            Tasks (ours by default; `register(tasks=...)` takes yours)
  grain     a Python module mixing one Grain dataset per domain with the
            weights (`grain.MapDataset.mix`), over this corpus's packed
            ArrayRecord shards with a decoder of their rows (or `--paths`)
  maxtext   a MaxText config block: `dataset_type: grain` and the
            `grain_train_files` mixture string "GLOB,WEIGHT;..." (`--paths`:
            your ArrayRecord files per domain, in MaxText's record format)
  levanter  a Levanter data config: one component per domain (`--paths`:
            your train files per domain) and `train_weights`

Every format carries each domain's expected epochs under the token budget
(`--token_budget`, default the Step 3 run's tokens when RUN_DIR has one):
budget * weight / the domain's training tokens. Grain and MaxText refuse a
zero weight, so domains whose weight rounds to 0 are left out of those two
(named in the output).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pprint
import re
import sys
from typing import Any

from absl import flags

from doremi_jax import rundir
from doremi_jax.cli import run_tool
from doremi_jax.config import ConfigError

FORMATS = ("seqio", "grain", "maxtext", "levanter", "json")
# Where a run keeps its final weights, in order of preference: the rates a
# pipeline's or a stage's Step 3 trained on, a Step 2 run's average (the
# last round of a pipeline without Step 3), a swarm's optimum.
WEIGHT_FILES = (f"{rundir.MAIN_MODEL_DOREMI}/{rundir.MAIN_WEIGHTS}", rundir.MAIN_WEIGHTS,
                rundir.AVERAGE_WEIGHTS, f"round_*/proxy/{rundir.AVERAGE_WEIGHTS}",
                rundir.SWARM_WEIGHTS, f"{rundir.STUDY_SWARM}/{rundir.SWARM_WEIGHTS}")
INFO_FILES = (f"{rundir.MAIN_MODEL_DOREMI}/{rundir.RUN_INFO}", rundir.RUN_INFO,
              f"round_1/reference/{rundir.RUN_INFO}", f"{rundir.STUDY_SWARM}/{rundir.RUN_INFO}")


def _last(pattern: str):
  """The path matching `pattern` with the highest round number, or None."""
  found = glob.glob(pattern)
  key = lambda p: [int(n) for n in re.findall(r"round_(\d+)", p)]
  return max(found, key=key) if found else None

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so importing this module for its
  functions leaves the other tools' flags alone)."""
  flags.DEFINE_string("format", "json", f"One of {', '.join(FORMATS)}.")
  flags.DEFINE_float("token_budget", None, "Training tokens of the model the weights are for "
                     "(default: the Step 3 run's, when RUN_DIR holds one).")
  flags.DEFINE_multi_string("paths", [], "DOMAIN=GLOB: that domain's files in the target "
                            "stack.")
  flags.DEFINE_string("output", None, "Write here instead of standard output.")
  flags.DEFINE_string("name", "doremi_mixture", "Name of the mixture (seqio, Levanter).")


def find_weights(run_dir: str) -> tuple:
  """(path, {domain: weight}) of the run's final weights."""
  if os.path.isfile(run_dir):
    candidates = [run_dir]
  elif os.path.isdir(run_dir):
    candidates = [_last(os.path.join(run_dir, f)) for f in WEIGHT_FILES]
  else:
    raise ConfigError(f"{run_dir!r} does not exist; give a run directory or a weights file.")
  for path in candidates:
    if path and os.path.isfile(path):
      weights = rundir.read_result(path)
      weights = weights.get("weights", weights) if isinstance(weights, dict) else weights
      ok = (isinstance(weights, dict) and weights and
            all(isinstance(v, (int, float)) and v >= 0 for v in weights.values()) and
            sum(weights.values()) > 0)
      if not ok:
        raise ConfigError(f"{path} is not a {{domain: weight}} mapping of non-negative "
                          "numbers with a positive sum.")
      total = float(sum(weights.values()))
      return path, {d: float(w) / total for d, w in weights.items()}
  raise ConfigError(f"no weights in {run_dir!r}: expected one of {', '.join(WEIGHT_FILES)} "
                    "(a pipeline, Step 3, Step 2 or swarm run) or a JSON weights file.")


def find_info(run_dir: str):
  """The run_info.json of the run (None for a bare weights file)."""
  base = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
  for name in INFO_FILES:
    path = os.path.join(base, name)
    if os.path.isfile(path):
      with open(path) as f:
        return json.load(f), os.path.dirname(path)
  return None, None


def gin_value(run_path: str, binding: str):
  """A string binding's value in the run's config.gin (in any scope), or None."""
  path = os.path.join(run_path, rundir.CONFIG)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    text = re.sub(r"\\\n\s*", "", f.read())   # gin wraps long bindings with '\'
  # (a stage's bindings carry its gin scope: 'main/LocalCorpusConfig.name')
  m = re.search(rf"^(?:[\w/]+/)?{re.escape(binding)}\s*=\s*['\"](.*)['\"]\s*$", text, re.M)
  return m.group(1) if m else None


def packed_files(info: dict, run_path: str) -> dict:
  """{domain: (train glob, validation glob, meta)} of a local corpus's packed
  shards for the run's vocabulary and length; {} when there are none."""
  from doremi_jax.data import local_prepare, packing
  data_dir = gin_value(run_path, "LocalCorpusConfig.data_dir")
  name = gin_value(run_path, "LocalCorpusConfig.name") or "local"
  if not (info and data_dir and info.get("corpus", "").startswith("local")):
    return {}
  mpath = local_prepare.manifest_path(data_dir, name)
  if not os.path.isfile(mpath):
    return {}
  with open(mpath) as f:
    entries = {d["domain"]: d for d in json.load(f)["domains"]}
  out = {}
  for domain in info["domains"]:
    if domain not in entries:
      return {}
    root = os.path.join(local_prepare.domain_dir(data_dir, entries[domain]), "packed")
    for cand in sorted(glob.glob(os.path.join(root, f"*_L{info['seq_len']}", packing.META))):
      with open(cand) as f:
        meta = json.load(f)
      if meta["vocabulary"]["size"] == info["tokenizer"]["vocab_size"] and (
          meta["vocabulary"]["sha256"] == info["tokenizer"].get("sentencepiece_sha256")):
        d = os.path.dirname(os.path.abspath(cand))
        out[domain] = (os.path.join(d, "train.array_record-*"),
                       os.path.join(d, "validation.array_record-*"), meta)
        break
    else:
      return {}
  return out


def expected_epochs(weights: dict, info, budget) -> dict:
  if info is None or budget is None:
    return {}
  tokens = dict(zip(info["domains"], info["train_tokens"]))
  return {d: budget * w / tokens[d] for d, w in weights.items() if tokens.get(d)}


def _nonzero(weights: dict, digits: int = 4) -> tuple:
  kept = {d: w for d, w in weights.items() if round(w, digits) > 0}
  return kept, sorted(set(weights) - set(kept))


@dataclasses.dataclass(frozen=True)
class _Export:
  """What every format's writer reads."""
  header: str
  weights: dict
  epochs: dict
  budget: Any
  source: str
  info: Any
  paths: dict
  packed: dict
  name: str


def _json(x: _Export) -> str:
  return json.dumps({"weights": x.weights, "expected_epochs": x.epochs,
                     "token_budget": x.budget, "source": x.source}, indent=2) + "\n"


def literal(value) -> str:
  """`value` (strings, numbers, None, lists and dicts of them) as a Python
  literal: every user-given string (a domain name, a path, the source)
  goes into generated code escaped this way, never into a docstring or
  the code around it."""
  return pprint.pformat(value, indent=4, width=100, sort_dicts=False)


def _seqio(x: _Export) -> str:
  corpus = (x.info or {}).get("corpus")
  tasks = ({d: f"doremi_{corpus}_{re.sub(r'[^a-z0-9_]+', '_', d.lower()).strip('_')}"
            for d in x.weights} if corpus else {})
  return ('"""A seqio Mixture exported by doremi_jax (where from: DESCRIPTION).\n\n'
          'Call register() after the Tasks exist (doremi_jax registers its own when a stage\n'
          'trains, or on doremi_jax.data.corpus.register_tasks(corpus); give yours as\n'
          'tasks={domain: task_name})."""\n\n'
          f"import seqio\n\nDESCRIPTION = {literal(x.header)}\nNAME = {literal(x.name)}\n"
          f"WEIGHTS = {literal(x.weights)}\n"
          f"EXPECTED_EPOCHS = {literal(x.epochs)}\n"
          f"TASKS = {literal(tasks)}\n\n\n"
          "def register(name=NAME, tasks=None):\n"
          "  tasks = tasks or TASKS\n"
          "  missing = sorted(set(WEIGHTS) - set(tasks))\n"
          "  if missing:\n"
          "    raise ValueError(f'no seqio Task for domains {missing}')\n"
          "  if name in seqio.MixtureRegistry.names():\n"
          "    seqio.MixtureRegistry.remove(name)\n"
          "  return seqio.MixtureRegistry.add(name, [(tasks[d], w) for d, w in "
          "WEIGHTS.items()])\n")


def _grain_decoder(x: _Export) -> str:
  """A packed row's decoder, for our own shards (not for --paths files)."""
  row = next(iter(x.packed.values()))[2] if x.packed else None
  if row is None or x.paths:
    return ""
  return (f"\nSEQ_LEN = {int(row['seq_len'])}\nTOKEN_DTYPE = {literal(str(row['token_dtype']))}\n\n\n"
          "def decode(record):\n"
          "  \"\"\"A doremi_jax packed row: targets and segment ids (0: padding).\"\"\"\n"
          "  n = SEQ_LEN * np.dtype(TOKEN_DTYPE).itemsize\n"
          "  targets = np.frombuffer(record[:n], TOKEN_DTYPE).astype(np.int32)\n"
          "  segment_ids = np.frombuffer(record[n:], np.uint16).astype(np.int32)\n"
          "  return {'targets': targets, 'segment_ids': segment_ids}\n")


def _grain(x: _Export) -> str:
  kept, note = _kept(x.weights)
  files = {d: x.paths[d] if d in x.paths else x.packed[d][0] for d in kept
           if d in x.paths or d in x.packed}
  missing = sorted(set(kept) - set(files))
  if missing:
    raise ConfigError(f"no files for domains {missing}: the run's corpus has no packed "
                      "shards here; give --paths DOMAIN=GLOB for each.")
  decoder = _grain_decoder(x)
  return ('"""A Grain mixture exported by doremi_jax (where from: DESCRIPTION)."""\n\n'
          "import glob\n\nimport grain\nimport numpy as np\n\n"
          f"DESCRIPTION = {literal(x.header + '.' + note)}\n"
          f"WEIGHTS = {literal(kept)}\nFILES = {literal(files)}\n"
          f"{decoder}\n\n"
          "def mixture(seed=0):\n"
          "  \"\"\"One shuffled, repeated dataset per domain, mixed with WEIGHTS.\"\"\"\n"
          "  datasets = []\n"
          "  for i, (domain, pattern) in enumerate(FILES.items()):\n"
          "    source = grain.sources.ArrayRecordDataSource(sorted(glob.glob(pattern)))\n"
          "    ds = grain.MapDataset.source(source).shuffle(seed=seed + i).repeat()\n"
          + ("    ds = ds.map(decode)\n" if decoder else "")
          + "    datasets.append(ds)\n"
          "  return grain.MapDataset.mix(datasets, [WEIGHTS[d] for d in FILES])\n")


def _maxtext(x: _Export) -> str:
  kept, note = _kept(x.weights)
  missing = sorted(set(kept) - set(x.paths))
  if missing:
    raise ConfigError(f"give --paths DOMAIN=GLOB (your ArrayRecord files in MaxText's "
                      f"record format) for domains {missing}.")
  bad = [p for p in x.paths.values() if re.search(r"[,;]", p) or p != p.strip()]
  if bad:
    raise ConfigError(f"MaxText's mixture string cannot hold ',' ';' or surrounding spaces "
                      f"in a path: {bad}.")
  mix = ";".join(f"{x.paths[d]},{w:.6g}" for d, w in kept.items())
  lines = [f"# {json.dumps(x.header + '.' + note)}",
           "# Weights are relative; MaxText normalises them.",
           "dataset_type: grain", "grain_file_type: arrayrecord",
           f"grain_train_files: {json.dumps(mix)}"]
  return "\n".join(lines) + "\n"


def _levanter(x: _Export) -> str:
  missing = sorted(set(x.weights) - set(x.paths))
  if missing:
    raise ConfigError(f"give --paths DOMAIN=GLOB (the train files Levanter tokenizes) for "
                      f"domains {missing}.")
  out = [f"# {json.dumps(x.header + '.')}", "# Weights are relative; Levanter normalises them.",
         "data:", "  components:"]
  for d in x.weights:
    out += [f"    {json.dumps(d)}:", "      source:", "        type: url",
            f"        train_urls: [{json.dumps(x.paths[d])}]"]
  out += ["  train_weights:"] + [f"    {json.dumps(d)}: {w:.6g}" for d, w in x.weights.items()]
  return "\n".join(out) + "\n"


def _kept(weights: dict):
  """(the nonzero weights, a note naming the domains left out)."""
  kept, dropped = _nonzero(weights)
  return kept, (f" Left out (weight rounds to 0): {', '.join(dropped)}." if dropped else "")


WRITERS = {"seqio": _seqio, "grain": _grain, "maxtext": _maxtext, "levanter": _levanter,
           "json": _json}


def render(fmt: str, weights: dict, epochs: dict, budget, source: str, info, paths: dict,
           packed: dict, name: str) -> str:
  """The exported mixture in format `fmt` (one of FORMATS), as text."""
  if fmt not in WRITERS:
    raise ConfigError(f"--format={fmt!r} does not exist; use one of {', '.join(FORMATS)}.")
  header = (f"Mixture exported by doremi_jax from {source}"
            + (f"; expected epochs at {budget:.4g} tokens: " + ", ".join(
                f"{d} {e:.3g}" for d, e in epochs.items()) if epochs else ""))
  return WRITERS[fmt](_Export(header, weights, epochs, budget, source, info, paths, packed,
                              name))


def main(argv):
  if len(argv) != 2:
    raise ConfigError("give one RUN_DIR: python -m doremi_jax.export_mixture RUN_DIR "
                      f"--format {'|'.join(FORMATS)}.")
  if FLAGS.format not in FORMATS:
    raise ConfigError(f"--format={FLAGS.format!r} does not exist; use one of "
                      f"{', '.join(FORMATS)}.")
  run_dir = argv[1]
  source, weights = find_weights(run_dir)
  info, run_path = find_info(run_dir)
  paths = {}
  for entry in FLAGS.paths:
    domain, sep, pattern = entry.partition("=")
    if not sep or not pattern:
      raise ConfigError(f"--paths {entry!r}: use DOMAIN=GLOB.")
    if domain not in weights:
      raise ConfigError(f"--paths names {domain!r}, which is not a domain of the weights "
                        f"({', '.join(weights)}).")
    paths[domain] = pattern
  budget = FLAGS.token_budget
  if budget is not None and not budget > 0:
    raise ConfigError(f"--token_budget must be positive, got {budget}.")
  if budget is None and info is not None and info.get("stage") == "main" and \
      os.path.basename(source) == rundir.MAIN_WEIGHTS:
    budget = float(info["num_steps"] * info["tokens_per_step"])
  if info is not None and sorted(info["domains"]) != sorted(weights):
    raise ConfigError(f"the weights name {sorted(weights)} but the run's corpus has "
                      f"{sorted(info['domains'])}.")
  packed = packed_files(info, run_path) if FLAGS.format == "grain" else {}
  text = render(FLAGS.format, weights, expected_epochs(weights, info, budget), budget, source,
                info, paths, packed, FLAGS.name)
  if FLAGS.output:
    write_output(FLAGS.output, text)
    print(f"[export_mixture] {FLAGS.format}: {FLAGS.output}")
  else:
    sys.stdout.write(text)


def write_output(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary name, creating its
  directory; ConfigError when it cannot."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    raise ConfigError(f"cannot write --output {path!r}: {e.strerror or e}. Give a path "
                      "in a directory you can write to.") from e


if __name__ == "__main__":
  define_flags()
  run_tool(main)
