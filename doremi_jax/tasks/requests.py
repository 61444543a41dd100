"""Our request format: one small JSONL file per task, the form every other
source (the built-in tasks, OLMo's request files) converts to.

Each line is one JSON object of one of three kinds:

  {"context": "...", "choices": [" a", " b", ...], "gold": 1}
      multiple choice (ranked classification): every choice is scored as a
      continuation of the context; metrics acc, acc_per_char,
      acc_per_token, prob_correct, bpb (`scoring.choice_metrics`)
  {"contexts": ["... Sarah", "... Maria"], "choices": [" ran.", " ran."], "gold": 1}
      multiple choice with one context per choice instead of one shared
      context (partial scoring, as OLMo's Winogrande: the option fills the
      blank in the context and the rest of the sentence is scored); a line
      has "context" or "contexts", never both; `choice_contexts(item)`
      gives every choice's context for either form
  {"context": "...", "target": " 42", "stop": [";", "\\n"], "max_tokens": 8}
      generative: greedy decoding from the context until a stop string or
      `max_tokens` new tokens (default: the target's length in tokens plus
      8); metrics exact_match (the generation, cut at the first stop
      string and stripped of surrounding whitespace, equals the stripped
      target) and bpb of the target
  {"text": "..."}
      a whole document: rolling log-likelihood; metric bpb

A file holds one kind. Optional fields on every line: "id" (kept in
per-item outputs). A task is named by its file's stem unless given a
name. Lines are validated when the task is loaded, before any training,
and a bad line gets `error:` naming the file and line.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from typing import Optional, Sequence

from doremi_jax import files
from doremi_jax.config import ConfigError

CHOICE, GENERATE, ROLLING = "choice", "generate", "rolling"
KINDS = (CHOICE, GENERATE, ROLLING)
# The fields that make a line of each kind; "id" is optional everywhere, and
# "stop", "max_tokens" on generative lines.
# A choice line has one of "context" and "contexts" too (`kind_of`).
_REQUIRED = {CHOICE: ("choices", "gold"), GENERATE: ("context", "target"), ROLLING: ("text",)}
_OPTIONAL = {CHOICE: ("id", "context", "contexts"), GENERATE: ("id", "stop", "max_tokens"),
             ROLLING: ("id",)}
# The metric each kind's headline is (lower is better for bpb).
PRIMARY_METRIC = {CHOICE: "bpb", GENERATE: "bpb", ROLLING: "bpb"}


@dataclasses.dataclass(frozen=True)
class Task:
  """A named list of validated items of one kind; `source` says where they
  came from (a file, 'builtin:...', 'olmo:...')."""
  name: str
  kind: str
  items: tuple
  source: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
    if not self.items:
      raise ConfigError(f"task {self.name!r} ({self.source}) has no items.")


def kind_of(item: dict) -> Optional[str]:
  """The kind whose required fields `item` has, or None."""
  for kind in (CHOICE, GENERATE, ROLLING):
    if all(k in item for k in _REQUIRED[kind]):
      if kind != CHOICE or "context" in item or "contexts" in item:
        return kind
  return None


def choice_contexts(item: dict) -> list:
  """The context of every choice of a validated choice line: its
  "contexts", or its one "context" repeated."""
  if "contexts" in item:
    return list(item["contexts"])
  return [item["context"]] * len(item["choices"])


def _check_choice(item: dict, where: str) -> None:
  """ConfigError naming `where` unless `item`'s choices, gold and
  context(s) make a multiple-choice line."""
  choices, gold = item["choices"], item["gold"]
  if (not isinstance(choices, list) or len(choices) < 2
          or not all(isinstance(c, str) and c for c in choices)):
    raise ConfigError(f"{where}: 'choices' must be a list of at least two non-empty "
                      f"strings, got {choices!r}.")
  if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
    raise ConfigError(f"{where}: 'gold' must be the index of the correct choice, 0 to "
                      f"{len(choices) - 1}, got {gold!r}.")
  if "context" in item and "contexts" in item:
    raise ConfigError(f"{where}: a multiple-choice request has 'context' (one for all "
                      "choices) or 'contexts' (one per choice), not both.")
  if "context" in item and not isinstance(item["context"], str):
    raise ConfigError(f"{where}: 'context' must be a string, got {item['context']!r}.")
  contexts = item.get("contexts", [""] * len(choices))
  if (not isinstance(contexts, list) or len(contexts) != len(choices)
          or not all(isinstance(c, str) for c in contexts)):
    raise ConfigError(f"{where}: 'contexts' must be a list of {len(choices)} strings, one per "
                      f"choice, got {contexts!r}.")


def validate(item, where: str) -> tuple:
  """(kind, item) of one request line, or ConfigError naming `where`."""
  if not isinstance(item, dict):
    raise ConfigError(f"{where}: a request must be a JSON object, got {type(item).__name__}.")
  kind = kind_of(item)
  if kind is None:
    raise ConfigError(f"{where}: a request needs the fields context (or contexts), choices, "
                      "gold (multiple choice), or context, target (generative), or text "
                      f"(rolling); it has {sorted(item)}.")
  extra = set(item) - set(_REQUIRED[kind]) - set(_OPTIONAL[kind])
  if extra:
    raise ConfigError(f"{where}: unknown field(s) {sorted(extra)} for a {kind} request; its "
                      f"fields are {list(_REQUIRED[kind] + _OPTIONAL[kind])}.")
  text_fields = {CHOICE: (), GENERATE: ("context", "target"), ROLLING: ("text",)}
  for k in text_fields[kind]:
    if not isinstance(item[k], str):
      raise ConfigError(f"{where}: {k!r} must be a string, got {item[k]!r}.")
  if kind == CHOICE:
    _check_choice(item, where)
  if kind == GENERATE:
    if not item["target"]:
      raise ConfigError(f"{where}: 'target' must be a non-empty string.")
    stop = item.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
      raise ConfigError(f"{where}: 'stop' must be a list of non-empty strings, got {stop!r}.")
    n = item.get("max_tokens", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ConfigError(f"{where}: 'max_tokens' must be a positive integer, got {n!r}.")
  if kind == ROLLING and not item["text"]:
    raise ConfigError(f"{where}: 'text' must be a non-empty string.")
  return kind, item


def from_items(name: str, items: Sequence[dict], source: str) -> Task:
  """A Task of validated items, all of one kind (ConfigError otherwise)."""
  kinds, checked = set(), []
  for i, item in enumerate(items, 1):
    kind, item = validate(item, f"{source}, item {i}")
    kinds.add(kind)
    checked.append(item)
  if len(kinds) > 1:
    raise ConfigError(f"{source} mixes request kinds {sorted(kinds)}; one task holds one kind "
                      "(split it into one file per kind).")
  if not checked:
    raise ConfigError(f"{source} holds no requests.")
  return Task(name, kinds.pop(), tuple(checked), source)


def read_lines(path: str) -> list:
  """The JSON objects of a .jsonl (or .jsonl.gz) file, ConfigError naming
  the file and line of anything malformed."""
  if not files.exists(path):
    raise ConfigError(f"task file {path!r} does not exist; TrainConfig.eval_tasks names a "
                      "built-in task, an OLMo task or a .jsonl request file.")
  raw = files.path(path).read_bytes()
  try:
    text = (gzip.decompress(raw) if str(path).endswith(".gz") else raw).decode("utf-8")
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise ConfigError(f"task file {path!r} cannot be read ({e}); it must be UTF-8 JSON lines "
                      "(gzip-compressed when its name ends in .gz).") from e
  out = []
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise ConfigError(f"task file {path!r}, line {n}: not valid JSON ({e.msg}).") from e
  return out


def file_stem(path: str) -> str:
  """A request file's name without its directory and its .gz, .jsonl or
  .json suffixes: the name its task reports under."""
  stem = os.path.basename(str(path).replace("\\", "/"))
  for suffix in (".gz", ".jsonl", ".json"):
    stem = stem[:-len(suffix)] if stem.endswith(suffix) else stem
  return stem


def load_file(path: str, name: Optional[str] = None) -> Task:
  """The task in one of our request files (see the module docstring)."""
  lines = read_lines(path)
  return from_items(name or file_stem(path),
                    [dict(x) if isinstance(x, dict) else x for x in lines], str(path))


def write_file(path: str, items: Sequence[dict]) -> str:
  """Writes `items` (validated) as one of our request files."""
  from_items("check", items, str(path))
  files.write_text(path, "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
  return str(path)
