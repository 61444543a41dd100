"""notebooks/doremi_quickstart.ipynb executes headless (nbclient) on CPU with
tiny settings, without errors, and shows the plots and tables inline."""

import os

import nbformat
from nbclient import NotebookClient

from helpers import REPO



def test_colab_notebook_runs_headless(tmp_path, monkeypatch):
  nb = nbformat.read(os.path.join(REPO, "notebooks", "doremi_quickstart.ipynb"), as_version=4)
  monkeypatch.setenv("XLA_FLAGS", "")                 # the kernel: 1 CPU device
  monkeypatch.setenv("DOREMI_NOTEBOOK_STEPS", "12")
  monkeypatch.setenv("DOREMI_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("DOREMI_JAX_REPO", "/nonexistent")  # installed already: no clone
  monkeypatch.setenv("PYTHONPATH", REPO)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 3
  tables = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
  assert "| noise |" in tables and "DoReMi weights" in tables and "uniform average" in tables
  assert (tmp_path / "run" / "report.md").exists()
