"""Golden values: the first steps' metrics of the LM step, the Group-DRO
step and Step 2's resample step on a fixed tiny setup (one device). The
headline behaviour of DoReMi on the built-in corpus (the quickstart's
weights) is tests/e2e/golden_quickstart_test.py.

A change that moves these numbers must be deliberate. If it is, regenerate
them with

    DOREMI_UPDATE_GOLDEN=1 python -m pytest tests/unit/golden_test.py

and commit tests/golden/*.json with a note saying why they moved.
"""


import jax
import numpy as np
import pytest

from helpers import check_golden
from doremi_jax import doremi
from doremi_jax import state as state_lib
from doremi_jax import steps
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import synthetic
from doremi_jax.data.synthetic_tasks import synthetic_corpus
from doremi_jax.model import ModelConfig
from doremi_jax.reference import Reference

TINY = ModelConfig(d_model=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                   unembed_init_scale=1.0)
KEYS = {"lm": ("loss", "grad_norm", "domain_loss"),
        "dro": ("loss", "grad_norm", "proxy_domain_loss", "reference_domain_loss", "excess",
                "domain_weights", "average_weights"),
        # Step 2 with train_proxy.mode = 'resample' (batches drawn from the weights),
        # recorded before it became online DoReMi's program: {golden name: metric}
        "dro_resample": {"loss": "loss", "grad_norm": "grad_norm", "excess": "mixer/excess",
                         "domain_weights": "mixer_rates",
                         "average_weights": "mixer/average_weights"}}


def _first_steps(kind: str, n: int = 3) -> dict:
  corpus = synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=32))
  k = corpus.num_domains
  cfg = state_lib.TrainConfig(num_steps=10, global_batch_size=10, seq_len=32)
  setup = state_lib.build_setup(corpus.vocab_size, cfg, model_cfg=TINY,
                                devices=jax.devices()[:1])
  if kind == "lm":
    program = steps.lm_program(setup, k, 1, cfg.seq_len)
    assignment = loader_lib.MixtureAssignment(np.full(k, 1 / k), 0)
  else:
    ref = Reference(setup.model, state_lib.init_state(setup, 123).params,
                    setup.state_shardings.params, {})
    build = steps.resample_program if kind == "dro_resample" else steps.dro_program
    program = build(setup, ref, k, 1, doremi.DROConfig(), np.full(k, 1 / k), cfg.seq_len)
    assignment = (loader_lib.MixtureAssignment(np.full(k, 1 / k), 0) if kind == "dro_resample"
                  else loader_lib.StratifiedAssignment(k, 0))
  loader = loader_lib.BatchLoader(corpus, assignment, cfg.global_batch_size, cfg.seq_len, 0)
  state, rows = program.init(0), {key: [] for key in KEYS[kind]}
  for _ in range(n):
    state, m = program(state, state_lib.to_global(loader.next()[0], setup.batch_shardings))
    names = KEYS[kind] if isinstance(KEYS[kind], dict) else {k: k for k in KEYS[kind]}
    for key, metric in names.items():
      rows[key].append(np.asarray(jax.device_get(m[metric]), np.float64).tolist())
  loader.close()
  return rows


@pytest.mark.parametrize("kind", ["lm", "dro", "dro_resample"])
def test_first_steps_match_golden_values(kind):
  check_golden(f"first_steps_{kind}", _first_steps(kind), rtol=2e-5)
