"""The jitted Group-DRO step: sharded == single device; accumulation exact;
one step agrees with the NumPy formulas."""

import jax
import numpy as np
import pytest

from doremi_jax import doremi
from doremi_jax import loss as loss_lib
from doremi_jax import sharding as sharding_lib
from doremi_jax import state as state_lib
from doremi_jax import steps
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import synthetic
from doremi_jax.data.synthetic_tasks import synthetic_corpus
from doremi_jax.model import ModelConfig
from doremi_jax.reference import Reference

from helpers import weights_log_rows
from np_reference import np_excess, np_update

TINY = ModelConfig(d_model=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                   unembed_init_scale=1.0)
K = 5


@pytest.fixture(scope="module")
def corpus():
  return synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=32))


def _batches(corpus, n, bs=20):
  loader = loader_lib.BatchLoader(corpus, loader_lib.StratifiedAssignment(K, 0), bs, 32, seed=0)
  out = [loader.next()[0] for _ in range(n)]
  loader.close()
  return out


def _run(corpus, mesh_cfg, devices, batches, accum=1, dro_cfg=doremi.DROConfig()):
  cfg = state_lib.TrainConfig(num_steps=len(batches), global_batch_size=20, seq_len=32,
                              grad_accum_steps=accum)
  setup = state_lib.build_setup(corpus.vocab_size, cfg, model_cfg=TINY, mesh_cfg=mesh_cfg,
                                devices=devices)
  ref_params = state_lib.init_state(setup, seed=123).params   # a different model as reference
  program = steps.dro_program(setup, Reference(setup.model, ref_params,
                                              setup.state_shardings.params, {}),
                              K, accum, dro_cfg, np.full(K, 1 / K), cfg.seq_len)
  state = program.init(0)
  history = []
  for b in batches:
    before = jax.device_get(state["dro"])
    params_before = jax.device_get(state["train"].params)
    state, m = program(state, state_lib.to_global(b, setup.batch_shardings))
    history.append((jax.device_get(m), before, params_before))
  return setup, state, history, jax.device_get(ref_params)


@pytest.fixture(scope="module")
def single_device(corpus):
  batches = _batches(corpus, 3)
  return batches, _run(corpus, sharding_lib.MeshConfig(1, 1, 1), jax.devices()[:1], batches)


def test_dro_step_matches_numpy_formulas(single_device):
  batches, (setup, state, hist, ref_params) = single_device
  for b, (m, dro_before, params_before) in zip(batches, hist):
    pl, mask = loss_lib.per_token_loss(setup.model, params_before, loss_lib.tokens_of(b))
    rl, _ = loss_lib.per_token_loss(setup.model, ref_params, loss_lib.tokens_of(b))
    lam = np_excess(np.asarray(pl), np.asarray(rl), np.asarray(mask), b["domain_ids"], K)
    np.testing.assert_allclose(m["excess"], lam, rtol=1e-4, atol=1e-5)
    w = np_update(dro_before.weights, lam, 1.0, 1e-3)
    np.testing.assert_allclose(m["domain_weights"], w, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(m["domain_tokens"], np.bincount(
        b["domain_ids"], weights=np.asarray(mask).sum(1), minlength=K))
  w = [h[0]["domain_weights"] for h in hist]
  np.testing.assert_allclose(hist[2][0]["average_weights"], np.mean(w, 0), rtol=1e-5)


def test_dro_step_on_2x2x2_mesh_matches_one_device(corpus, single_device):
  batches, (_, s1, h1, _) = single_device
  _, s8, h8, _ = _run(corpus, sharding_lib.MeshConfig(2, 2, 2), jax.devices(), batches)
  for (m1, _, _), (m8, _, _) in zip(h1, h8):
    for key in ("excess", "domain_weights", "average_weights", "proxy_domain_loss",
                "reference_domain_loss", "loss"):
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(s1["train"].params), jax.tree.leaves(s8["train"].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_dro_accumulation_uses_the_whole_global_batch(corpus):
  batches = _batches(corpus, 2)
  mesh = sharding_lib.MeshConfig(2, 1, 1)
  _, s1, h1, _ = _run(corpus, mesh, jax.devices()[:2], batches, accum=1)
  _, s2, h2, _ = _run(corpus, mesh, jax.devices()[:2], batches, accum=2)
  for (m1, _, _), (m2, _, _) in zip(h1, h2):
    np.testing.assert_allclose(m2["excess"], m1["excess"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m2["domain_weights"], m1["domain_weights"], rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(s1["train"].params), jax.tree.leaves(s2["train"].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_weights_warmup_and_interval(corpus):
  batches = _batches(corpus, 5)
  cfg = doremi.DROConfig(weights_warmup_steps=2, update_every=2)
  _, _, hist, _ = _run(corpus, sharding_lib.MeshConfig(1, 1, 1), jax.devices()[:1], batches,
                       dro_cfg=cfg)
  updated = [bool(m["weights_updated"]) for m, _, _ in hist]
  assert updated == [False, False, True, False, True]
  np.testing.assert_allclose(hist[0][0]["domain_weights"], 1 / K)
  assert not np.allclose(hist[2][0]["domain_weights"], 1 / K)
  np.testing.assert_array_equal(hist[3][0]["domain_weights"], hist[2][0]["domain_weights"])


def test_resample_mode_holds_absent_excess_and_trains_the_plain_loss(corpus):
  """mode='resample': batches drawn from the weights (here with a domain
  left out of some batches), lambda of an absent domain held from its last
  batch, the same weight update, and the parameters updated by the
  gradient of the plain token-mean loss (equal to a plain LM step's)."""
  cfg = state_lib.TrainConfig(num_steps=4, global_batch_size=20, seq_len=32)
  setup = state_lib.build_setup(corpus.vocab_size, cfg, model_cfg=TINY,
                                mesh_cfg=sharding_lib.MeshConfig(1, 1, 1),
                                devices=jax.devices()[:1])
  ref_params = state_lib.init_state(setup, seed=123).params
  program = steps.resample_program(setup, Reference(setup.model, ref_params,
                                                   setup.state_shardings.params, {}),
                                   K, 1, doremi.DROConfig(), np.full(K, 1 / K), cfg.seq_len)
  plain = steps.lm_program(setup, K, 1, cfg.seq_len)
  rates = [np.full(K, 0.2), np.array([0, .25, .25, .25, .25]), np.full(K, 0.2),
           np.array([.25, .25, .25, 0, .25])]
  loader = loader_lib.BatchLoader(corpus, loader_lib.MixtureAssignment(np.full(K, .2), 0), 20,
                                  32, seed=0)
  state, held, w, prev = program.init(0), np.zeros(K), np.full(K, 1 / K), None
  for t, r in enumerate(rates):
    b = loader.next()[0]
    ids = loader_lib.MixtureAssignment(r, t)(t, 20)
    b = dict(b, domain_ids=ids)
    params_before = jax.device_get(state["train"].params)
    plain_state, plain_m = plain(jax.tree.map(np.array, jax.device_get(state["train"])),
                                 state_lib.to_global(b, setup.batch_shardings))
    expect_params = jax.device_get(plain_state.params)
    state, m = program(state, state_lib.to_global(b, setup.batch_shardings))
    pl, mask = loss_lib.per_token_loss(setup.model, params_before, loss_lib.tokens_of(b))
    rl, _ = loss_lib.per_token_loss(setup.model, ref_params, loss_lib.tokens_of(b))
    lam = np_excess(np.asarray(pl), np.asarray(rl), np.asarray(mask), ids, K)
    present = np.bincount(ids, minlength=K) > 0
    held = np.where(present, lam, held)
    w = np_update(w, held, 1.0, 1e-3)
    np.testing.assert_allclose(m["mixer/excess"], held, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["mixer_rates"], w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(m["loss"]), float(plain_m["loss"]), rtol=1e-6)
    for a, e in zip(jax.tree.leaves(state["train"].params), jax.tree.leaves(expect_params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)
    if not present.all():   # held exactly: the previous step's value
      assert m["mixer/excess"][~present].tolist() == prev[~present].tolist()
    prev = np.asarray(m["mixer/excess"])
  loader.close()


def _hook_run(workdir, start, stop, log_every, checkpoint_at, kill_after=None):
  """`proxy.DROHook` driven as the runner drives it, on made-up metrics
  (step s's weights are a function of s): steps start+1..stop, each handed
  over once checked, written at log steps and before checkpoints; with
  `kill_after` the run dies after that step (no close, no flush)."""
  from doremi_jax.stages import proxy
  hook = proxy.DROHook(workdir, list("abcde"), proxy.MODES["reweight"], None, stop)
  hook.start(str(workdir), start, None)
  for step in range(start + 1, stop + 1):
    w = np.full(K, 1.0 / K) + 0.01 * np.sin(step + np.arange(K))
    hook.on_step(step, {"domain_weights": w, "excess": w * 2, "average_weights": w / 2})
    if step % log_every == 0 or step == stop:
      hook.on_log(step, {"domain_weights": w})
    if step % checkpoint_at == 0:
      hook.data_state(step, {})
    if step == kill_after:
      return
  hook.close()


def test_weights_log_has_every_step_once_after_a_kill_and_resume(tmp_path):
  """doremi_weights.jsonl: a row for every step (not one in log_every), and
  a run killed after step 17 (rows to 16 written, checkpoint 10) and resumed
  from step 10 ends with exactly the uninterrupted run's rows; a line cut
  short by the kill is dropped."""
  from doremi_jax import rundir
  full, killed = tmp_path / "full", tmp_path / "killed"
  full.mkdir(), killed.mkdir()
  _hook_run(full, 0, 20, log_every=4, checkpoint_at=10)
  rows = weights_log_rows(full)
  assert [r["step"] for r in rows] == list(range(1, 21))
  _hook_run(killed, 0, 20, log_every=4, checkpoint_at=10, kill_after=17)
  log = killed / rundir.DOREMI_WEIGHTS_LOG
  assert [r["step"] for r in weights_log_rows(killed)] == list(range(1, 17))
  with log.open("a") as f:
    f.write('{"step": 17, "timest')            # cut short by the kill
  _hook_run(killed, 10, 20, log_every=4, checkpoint_at=10)
  assert weights_log_rows(killed) == rows
  # a fresh start over a directory without a checkpoint starts the log anew
  _hook_run(killed, 0, 20, log_every=4, checkpoint_at=10)
  assert weights_log_rows(killed) == rows
