"""Training needs no TensorFlow: the model, the steps and the runner run
with TensorFlow, seqio and TFDS made unimportable; the entry point, the
stages and the loader import none of them; and the quickstart's DoReMi
stages run without them and end with the golden weights."""

import os
import subprocess
import sys
from helpers import REPO


IMPORT_WITHOUT_TF = r"""
import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None   # `import name` now raises ImportError
import jax, numpy as np
from doremi_jax import doremi, model, runner, state, steps
from doremi_jax.stages import registry
from doremi_jax.reference import Reference

cfg = state.TrainConfig(num_steps=2, global_batch_size=8, seq_len=16)
setup = state.build_setup(128, cfg, model_cfg=model.ModelConfig(d_model=32, num_layers=1,
                          num_heads=2, head_dim=16, mlp_dim=64), devices=jax.devices()[:1])
rng = np.random.default_rng(0)
batch = state.to_global({"targets": rng.integers(2, 128, (8, 16)).astype(np.int32),
                         "segment_ids": np.ones((8, 16), np.int32),
                         "domain_ids": (np.arange(8) % 4).astype(np.int32)},
                        setup.batch_shardings)
lm = steps.lm_program(setup, 4, 1, cfg.seq_len)
_, m = lm(lm.init(0), batch)
ref = lm.init(1).params
dro = steps.dro_program(setup, Reference(setup.model, ref, setup.state_shardings.params, {}),
                        4, 1, doremi.DROConfig(), np.full(4, 0.25), cfg.seq_len)
_, d = dro(dro.init(0), batch)
assert np.isfinite(float(m["loss"])) and np.isfinite(float(d["loss"]))
assert all(sys.modules.get(n) is None for n in ("tensorflow", "seqio", "tensorflow_datasets"))
print("ran both steps without tensorflow")
"""


def test_model_steps_and_runner_import_and_run_without_tensorflow():
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_TF], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "ran both steps without tensorflow" in r.stdout


IMPORT_AND_READ = r"""
import sys
from doremi_jax import main, runner
from doremi_jax.data import loader, registry, synthetic, synthetic_tasks
from doremi_jax.stages import lm, pipeline, proxy, study, swarm
main.register_configurables()
corpus = registry.get_corpus()
corpus = synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=16))
batch, _ = loader.BatchLoader(corpus, loader.MixtureAssignment([0.2] * 5, 0), 8, 16, 0).next()
loader.eval_batches(corpus, 16, 4, 8)
assert batch["targets"].shape == (8, 16)
print("loaded:", sorted(n for n in ("tensorflow", "seqio", "tensorflow_datasets")
                        if n in sys.modules))
"""


def test_training_imports_and_synthetic_corpus_import_no_tensorflow():
  """TensorFlow is installed here, yet importing the entry point, the
  stages and the loader, building the synthetic corpus and reading its
  batches loads neither it nor seqio nor TFDS."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", IMPORT_AND_READ], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "loaded: []" in r.stdout, r.stdout


QUICKSTART_WITHOUT_TF = r"""
import runpy, sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None   # `import name` now raises ImportError
sys.argv = ["doremi_jax.main", "--gin_file=gin/quickstart.gin", "--workdir=" + sys.argv[1]]
try:
  runpy.run_module("doremi_jax.main", run_name="__main__")
except SystemExit as e:
  if e.code:
    raise
assert all(sys.modules.get(n) is None for n in ("tensorflow", "seqio", "tensorflow_datasets"))
print("quickstart ran without tensorflow")
"""


def test_quickstart_runs_without_tensorflow_and_gives_the_golden_weights(quickstart_run,
                                                                        tmp_path):
  """README's first command with TensorFlow, seqio and TFDS unimportable:
  it completes (no seqio Mixture is registered) and its DoReMi weights are
  the recorded ones, compared as tests/unit/golden_test.py compares them.
  To keep CI short it starts from the session's quickstart run's Step 1
  reference and baseline main run (the same LM program as the DoReMi main
  run, which trains here): Step 2's proxy and Step 3's DoReMi run train
  without TensorFlow."""
  import json
  import shutil
  import numpy as np
  full, _, done = quickstart_run
  assert done.returncode == 0, done.stderr[-3000:]
  wd = tmp_path / "run"
  for stage in ("round_1/reference", "main_baseline"):
    shutil.copytree(full / stage, wd / stage)
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false")
  r = subprocess.run([sys.executable, "-c", QUICKSTART_WITHOUT_TF, str(wd)], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "quickstart ran without tensorflow" in r.stdout, r.stdout[-2000:]
  assert "Step 1: reference model: already complete" in r.stdout, r.stdout[-2000:]
  state = json.loads((wd / "pipeline.json").read_text())
  assert state["stages"]["round_1/proxy"]["status"] == "ran"
  assert state["stages"]["main_doremi"]["status"] == "ran"
  got = json.loads((wd / "round_1" / "proxy" / "average_domain_weights.json").read_text())
  with open(os.path.join(REPO, "tests", "golden", "quickstart_weights.json")) as f:
    want = json.load(f)
  assert list(got) == list(want)
  np.testing.assert_allclose([got[d] for d in want], [want[d][0] for d in want], rtol=1e-4,
                             atol=1e-7, err_msg="the quickstart's weights moved without TF")
  assert (wd / "report.md").exists()
  assert json.loads((wd / "comparison.json").read_text())["per_domain"] == \
      json.loads((full / "comparison.json").read_text())["per_domain"]


WITHOUT_SEQIO = r"""
import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None   # `import name` now raises ImportError
from absl import logging
logging.set_verbosity(logging.INFO)
from doremi_jax.data import corpus as corpus_lib, synthetic, synthetic_tasks
c = synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=8))
rates = corpus_lib.mixture_rates([0.5, 0, 1, 2, 0.25])
assert rates.tolist() == [0.5, 0.0, 1.0, 2.0, 0.25]
assert corpus_lib.register_mixture("m", c, rates) is None
assert corpus_lib.register_mixture("m2", c, rates) is None and not corpus_lib.register_tasks(c)
print("skipped")
"""


def test_without_seqio_nothing_is_registered_and_one_info_line_says_so():
  import os
  import subprocess
  import sys
  from helpers import REPO
  r = subprocess.run([sys.executable, "-c", WITHOUT_SEQIO], cwd=REPO, capture_output=True,
                     text=True, timeout=120, env=dict(os.environ, XLA_FLAGS=""))
  assert r.returncode == 0 and "skipped" in r.stdout, r.stderr[-2000:]
  assert r.stderr.count("seqio cannot be imported") == 1, r.stderr[-2000:]
  assert "Mixtures are not registered (training does not need them)" in r.stderr
