"""The package's shape: no import cycles, no private names used across
modules, no module over 400 lines, and the model, step programs, DRO math
and runner usable without TensorFlow, seqio or TFDS."""

import ast
import os
import re


from helpers import REPO

PKG = os.path.join(REPO, "doremi_jax")
MAX_LINES = 400


def _modules() -> dict:
  """{dotted module name: path} for every module of the package."""
  out = {}
  for root, _, names in os.walk(PKG):
    for n in names:
      if n.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, n), REPO)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, n)
  return out


MODULES = _modules()


def parse(path):
  """ast.parse of a file. CPython 3.11's AST builder keeps its recursion
  depth in state shared by all threads (python/cpython#106905), so a
  parse while a background thread of an earlier test (tf.data's autograph)
  parses too can fail with a spurious SystemError; parse again then."""
  text = open(path).read()
  for _ in range(3):
    try:
      return ast.parse(text)
    except SystemError:
      continue
  return ast.parse(text)


def _imports(path: str) -> tuple[set, dict]:
  """(package modules imported anywhere in the file, including inside
  functions; {local alias: module} of the imported package modules)."""
  tree = parse(path)
  deps, aliases = set(), {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name in MODULES:
          deps.add(a.name)
          aliases[a.asname or a.name] = a.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("doremi_jax"):
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        if sub in MODULES:          # from pkg import module
          deps.add(sub)
          aliases[a.asname or a.name] = sub
        elif node.module in MODULES:  # from module import name
          deps.add(node.module)
  return deps, aliases


def test_no_import_cycles():
  graph = {m: _imports(p)[0] - {m} for m, p in MODULES.items()}
  cycles, state = [], {}

  def visit(m, stack):
    state[m] = "open"
    for d in sorted(graph.get(m, ())):
      if state.get(d) == "open":
        cycles.append(stack[stack.index(d):] + [d])
      elif d not in state:
        visit(d, stack + [d])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
  bad = []
  for m, path in MODULES.items():
    tree = parse(path)
    _, aliases = _imports(path)
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("doremi_jax"):
        bad += [f"{m}: from {node.module} import {a.name}" for a in node.names
                if a.name.startswith("_")]
      elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in aliases and node.attr.startswith("_")
            and not node.attr.startswith("__")):
        bad.append(f"{m}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not bad, "private names used from another module:\n" + "\n".join(bad)


def test_no_module_over_400_lines():
  long = {m: n for m, p in MODULES.items() if (n := len(open(p).read().splitlines())) > MAX_LINES}
  assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


# What trains: the reports read finished runs and never import it (they import
# rundir and what it imports, the file formats' readers and matplotlib).
TRAINING = ("doremi_jax.stages", "doremi_jax.runner", "doremi_jax.steps", "doremi_jax.state",
            "doremi_jax.evaluate", "doremi_jax.swarm", "doremi_jax.mixers", "doremi_jax.doremi",
            "doremi_jax.main", "doremi_jax.sharding", "doremi_jax.checkpoint",
            "doremi_jax.optimizer", "doremi_jax.data.loader", "doremi_jax.loop")


def test_analysis_imports_no_training_code():
  graph = {m: _imports(p)[0] - {m} for m, p in MODULES.items()}
  bad = []
  for m in (m for m in MODULES if m.startswith("doremi_jax.analysis")):
    seen, todo = set(), [m]
    while todo:
      for d in graph.get(todo.pop(), ()):
        if d not in seen:
          seen.add(d)
          todo.append(d)
    bad += [f"{m} -> {d}" for d in sorted(seen) if d.startswith(TRAINING)]
  assert not bad, "analysis/ imports training code:\n" + "\n".join(bad)


def _docstrings(tree) -> set:
  """ids of the constant nodes that are docstrings."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        out.add(id(body[0].value))
  return out


def _run_file_names() -> set:
  """The file and directory names of the run-directory contract (rundir.py's
  constants) that no other module may spell: those with an extension, and
  the directories named like no stage."""
  names = set()
  for node in parse(MODULES["doremi_jax.rundir"]).body:
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and
        isinstance(node.value.value, str) and node.targets[0].id.isupper()):
      names.add(node.value.value)
  return {n for n in names if "." in n or n in ("checkpoints", "plots")}


def test_only_the_run_directory_contract_spells_run_file_names():
  names = _run_file_names()
  assert {"eval.json", "average_domain_weights.json", "checkpoints", "study.json"} <= names
  pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(names))) + r")(?![\w])")
  bad = []
  for m, path in MODULES.items():
    if m == "doremi_jax.rundir":
      continue
    tree = parse(path)
    docs = _docstrings(tree)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Constant) and isinstance(node.value, str) and
          id(node) not in docs and pattern.search(node.value)):
        bad.append(f"{m}:{node.lineno}: {node.value[:60]!r}")
  assert not bad, ("run-directory names spelled outside doremi_jax/rundir.py (use its "
                   "constants):\n" + "\n".join(bad))


def _arm_spellings() -> set:
  from doremi_jax import arms, mixers
  names = {"stratified", "unimax", "doremi", "swarm", *mixers.names()}
  assert {k.kind for k in arms.base.KINDS} >= {"stratified", "unimax", "doremi", "swarm"}
  return names


def _compares_with(test, strings: set) -> bool:
  """Whether an if/while test compares something with one of `strings`
  (==, !=, in, or a startswith on it)."""
  for node in ast.walk(test):
    if isinstance(node, ast.Compare):
      for c in [node.left, *node.comparators]:
        if isinstance(c, ast.Constant) and isinstance(c.value, str) and \
            c.value.split(":")[0] in strings:
          return True
        if isinstance(c, (ast.Tuple, ast.List, ast.Set)) and any(
            isinstance(e, ast.Constant) and e.value in strings for e in c.elts):
          return True
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and
        node.func.attr == "startswith" and node.args and
        isinstance(node.args[0], ast.Constant) and
        str(node.args[0].value).split(":")[0] in strings):
      return True
  return False


def test_no_stage_branches_on_an_arms_spelling():
  """Only the arm registry (doremi_jax/arms/) and the modules that define a
  spelling (the sampling mode, the weights presets, the mixers' registry)
  look at how an arm is spelled."""
  strings = _arm_spellings()
  allowed = ("doremi_jax.arms", "doremi_jax.data.sampling", "doremi_jax.data.weights",
             "doremi_jax.mixers")
  bad = []
  for m, path in MODULES.items():
    if m.startswith(allowed):
      continue
    for node in ast.walk(parse(path)):
      if isinstance(node, (ast.If, ast.IfExp, ast.While)) and _compares_with(node.test, strings):
        bad.append(f"{m}:{node.lineno}")
  assert not bad, "branches on an arm's spelling outside doremi_jax/arms/:\n" + "\n".join(bad)


MAX_FUNCTION_LINES = 60


def test_functions_are_short_or_say_why():
  """No function over 60 lines unless its docstring says why
  ('Long because ...')."""
  long = []
  for m, path in MODULES.items():
    for node in ast.walk(parse(path)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        doc = ast.get_docstring(node) or ""
        if n > MAX_FUNCTION_LINES and "Long because" not in doc:
          long.append(f"{m}.{node.name}: {n} lines")
  assert not long, (f"functions over {MAX_FUNCTION_LINES} lines (split them, or say why in "
                    "the docstring: 'Long because ...'):\n" + "\n".join(long))
