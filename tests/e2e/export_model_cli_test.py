"""`python -m doremi_jax.export_model` on a trained run (a 6-step `reference`
stage made in this process): the export runs with torch and transformers
unimportable, and transformers reads it back as the trained model; its bad
input ends with `error:` and exit status 2, naming what to change."""

import os

import numpy as np
import pytest

from helpers import REPO, run_tools_many, tiny_trained_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  return tiny_trained_run(tmp_path_factory.mktemp("export_model_cli") / "reference")


def _without_torch(tmp_path, monkeypatch):
  """PYTHONPATH for the tools' processes in which `import torch` and `import
  transformers` fail (the export must need neither)."""
  blocker = tmp_path / "blocker"
  for name in ("torch", "transformers"):
    (blocker / name).mkdir(parents=True)
    (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(blocker), REPO]))


def _assert_logits_are_the_runs(run_dir, out_dir, step=None):
  import jax.numpy as jnp
  from doremi_jax.tasks import trained
  t = trained.load(str(run_dir), step)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
  tokens = np.random.default_rng(0).integers(0, t.vocabulary.vocab_size, (2, 32))
  tokens[:, 0] = 0
  ours = np.asarray(t.model.apply({"params": t.params}, jnp.asarray(tokens)))
  with torch.no_grad():
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_cli_exports_a_trained_run_and_refuses_bad_input(trained_run, tmp_path, monkeypatch):
  _without_torch(tmp_path, monkeypatch)
  full = tmp_path / "busy"
  full.mkdir()
  (full / "notes.txt").write_text("mine")
  not_a_run = tmp_path / "not_a_run"
  not_a_run.mkdir()
  run = str(trained_run)
  ok, step3, *bad = run_tools_many([
      ("export_model", [run, "--format", "hf", str(tmp_path / "hf")]),
      ("export_model", [run, "--format=hf", str(tmp_path / "hf3"), "--step=3"]),
      ("export_model", [str(tmp_path / "missing"), "--format=hf", str(tmp_path / "a")]),
      ("export_model", [str(not_a_run), "--format=hf", str(tmp_path / "b")]),
      ("export_model", [run, "--format=hf", str(tmp_path / "c"), "--step=4"]),
      ("export_model", [run, "--format=gguf", str(tmp_path / "d")]),
      ("export_model", [run, "--format=hf", str(full)]),
      ("export_model", [run, "--format=hf"])])
  for r in (ok, step3):
    assert r.returncode == 0, r.stderr[-3000:]
  assert "[export_model] hf:" in ok.stdout and "step 6" in ok.stdout
  assert "no Hugging Face tokenizer" in ok.stdout and "SyntheticVocabulary" in ok.stdout
  assert sorted(os.listdir(tmp_path / "hf")) == [
      "README.md", "config.json", "generation_config.json", "model.safetensors"]
  expected = ["does not exist; give a stage's or a pipeline's run directory",
              "is not a run directory", "has no checkpoint at step 4",
              "flag --format=gguf: value should be one of <hf>",
              "is not empty; give a new or empty directory, or pass --overwrite",
              "give RUN_DIR and OUT_DIR"]
  for r, message in zip(bad, expected):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "error:" in r.stderr and message in r.stderr, r.stderr[-3000:]
  assert "it saved steps 3, 6" in bad[2].stderr
  for name in "abcd":
    assert not (tmp_path / name).exists()
  assert os.listdir(full) == ["notes.txt"]
  _assert_logits_are_the_runs(trained_run, tmp_path / "hf")
  _assert_logits_are_the_runs(trained_run, tmp_path / "hf3", step=3)


def test_overwrite_replaces_an_export_and_leaves_other_files(trained_run, tmp_path,
                                                             monkeypatch):
  _without_torch(tmp_path, monkeypatch)
  out = tmp_path / "hf"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  (out / "tokenizer.json").write_text("{}")     # an earlier export's, of another run
  (out / "config.json").write_text("{}")
  (r,) = run_tools_many([("export_model", [str(trained_run), str(out), "--overwrite"])])
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["README.md", "config.json", "generation_config.json",
                                     "model.safetensors", "notes.txt"]
  assert (out / "notes.txt").read_text() == "mine"
  _assert_logits_are_the_runs(trained_run, out)
