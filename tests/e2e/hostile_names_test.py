"""Generated files are data: every export format written for domain names,
a source path and file paths that hold quotes, triple quotes, newlines and
code imports or parses (in a fresh process, the seqio and grain modules
under stand-ins) to exactly the intended values, and runs none of the code
they carry: the code would create a canary file."""

import json
import os
import subprocess
import sys

import yaml

from doremi_jax import export_mixture as ex

CANARY = "CANARY_RAN"


def hostile(tmp_path):
  code = f'__import__("pathlib").Path({str(tmp_path / CANARY)!r}).touch()'
  names = [f'a"""\n{code}\n"""', f"b'''\n{code}\n'''", "c\\\n" + code, 'd"\n# {x}', "e\r\nf"]
  weights = {n: 1.0 / len(names) for n in names}
  source = f'/runs/x"""\n{code}\n"""/w.json'
  paths = {n: f'/data/{i}"\n{code}\n"*' for i, n in enumerate(names)}
  return weights, source, paths


IMPORT = """
import importlib.util, json, sys, types
for name in ("seqio", "grain"):            # stand-ins: nothing of them is needed
  sys.modules[name] = types.ModuleType(name)
sys.modules["numpy"] = types.ModuleType("numpy")
spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({k: getattr(module, k) for k in sys.argv[2:]}))
"""


def _import(path, *names):
  out = subprocess.run([sys.executable, "-c", IMPORT, str(path), *names], capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout)


def test_exports_of_hostile_names_and_paths_run_no_code(tmp_path):
  weights, source, paths = hostile(tmp_path)
  info = {"stage": "main", "corpus": "c", "domains": list(weights)}
  epochs = {d: 0.5 for d in weights}
  for fmt in ("seqio", "grain"):
    text = ex.render(fmt, weights, epochs, 1000.0, source, info, paths, {}, 'n"""\nx')
    (tmp_path / f"{fmt}.py").write_text(text)
    got = _import(tmp_path / f"{fmt}.py", "WEIGHTS", "DESCRIPTION")
    assert got["WEIGHTS"] == weights and source in got["DESCRIPTION"]
    if fmt == "grain":
      assert _import(tmp_path / "grain.py", "FILES")["FILES"] == paths
    else:
      assert _import(tmp_path / "seqio.py", "NAME")["NAME"] == 'n"""\nx'
  levanter = yaml.safe_load(ex.render("levanter", weights, epochs, 1000.0, source, info, paths,
                                      {}, "n"))
  assert levanter["data"]["train_weights"] == weights
  assert {d: c["source"]["train_urls"] for d, c in levanter["data"]["components"].items()} == \
      {d: [p] for d, p in paths.items()}
  safe_paths = {d: p.replace("\n", "_") for d, p in paths.items()}   # MaxText: one string
  maxtext = yaml.safe_load(ex.render("maxtext", weights, epochs, 1000.0, source, info,
                                     safe_paths, {}, "n"))
  assert set(maxtext) == {"dataset_type", "grain_file_type", "grain_train_files"}
  assert maxtext["grain_train_files"].split(";")[0].rsplit(",", 1)[0] == list(safe_paths.values())[0]
  got = json.loads(ex.render("json", weights, epochs, 1000.0, source, info, paths, {}, "n"))
  assert got["weights"] == weights and got["source"] == source
  assert not os.path.exists(tmp_path / CANARY)
