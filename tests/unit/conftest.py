"""The unit tier's rules, enforced: a unit test spawns no process and
imports no TensorFlow (exactly so when the tier runs alone, as in the daily
loop `pytest tests/unit`; under xdist another tier's test may have loaded
TensorFlow into the same worker first). A test that needs either belongs in
tests/integration or tests/e2e."""

import subprocess
import sys

import pytest

# Matplotlib builds its font cache on first import, asking `fc-list` (a
# process) where fontconfig is installed: build it here, before the rules.
from matplotlib import font_manager  # pylint: disable=unused-import  # noqa: F401


class _NoProcess:
  def __init__(self, *args, **kwargs):
    raise AssertionError("a unit test spawned a process; move it to tests/e2e "
                         "(see docs/testing.md)")


@pytest.fixture(autouse=True)
def _unit_rules(monkeypatch):
  monkeypatch.setattr(subprocess, "Popen", _NoProcess)
  had_tf = "tensorflow" in sys.modules
  yield
  if not had_tf and "tensorflow" in sys.modules:
    pytest.fail("a unit test imported TensorFlow; move it to tests/integration "
                "(see docs/testing.md)")


@pytest.fixture(scope="module")
def tiny_model():
  """A 2-layer Transformer over 64 ids and its initial parameters."""
  import jax
  import jax.numpy as jnp
  from doremi_jax.model import ModelConfig, Transformer
  cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2, head_dim=16,
                    mlp_dim=64, unembed_init_scale=1.0)
  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
  return model, params
