"""The assignment of a mixture that changes during training: blocks of
rates published by the trainer, waited for by the loader, replayed exactly
after a resume."""

import json
import threading
import time

import numpy as np
import pytest

from doremi_jax.config import ConfigError
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import synthetic
from doremi_jax.data import synthetic_tasks
from doremi_jax.data.scheduled import ScheduledAssignment


def test_constant_rates_give_the_static_mixture_batches():
  rates = [0.3, 0.1, 0.2, 0.2, 0.2]
  sched = ScheduledAssignment(rates, seed=3, every=4)
  static = loader_lib.MixtureAssignment(rates, seed=3)
  for block in range(1, 6):
    sched.publish(block, rates)
  for step in range(24):
    np.testing.assert_array_equal(sched(step, 64), static(step, 64))


def test_each_block_uses_its_own_rates():
  sched = ScheduledAssignment([1, 0, 0], seed=0, every=5)
  sched.publish(1, [0, 1, 0])
  sched.publish(2, [0, 0, 2])
  for step, domain in [(0, 0), (4, 0), (5, 1), (9, 1), (10, 2), (14, 2)]:
    assert set(sched(step, 32).tolist()) == {domain}, step


def test_the_loader_waits_for_rates_not_yet_published():
  sched = ScheduledAssignment([0.5, 0.5], seed=0, every=2, timeout=30)
  out = {}
  reader = threading.Thread(target=lambda: out.setdefault("ids", sched(2, 16)))
  reader.start()
  time.sleep(0.2)
  assert reader.is_alive()            # block 1 is not published: still waiting
  sched.publish(1, [0, 1])
  reader.join(timeout=10)
  assert set(out["ids"].tolist()) == {1}
  late = ScheduledAssignment([0.5, 0.5], seed=0, every=2, timeout=0.1)
  with pytest.raises(RuntimeError, match="rates of block 3 .steps from 6"):
    late(7, 4)


def test_history_restores_identical_draws():
  sched = ScheduledAssignment([0.25] * 4, seed=7, every=3)
  rng = np.random.default_rng(0)
  for block in range(1, 5):
    sched.publish(block, rng.dirichlet(np.ones(4)))
  restored = ScheduledAssignment([0.25] * 4, seed=7, every=3, history=sched.history())
  for step in range(15):
    np.testing.assert_array_equal(restored(step, 40), sched(step, 40))


@pytest.mark.parametrize("rates,message", [
    ([0.5, -0.1, 0.6], r"weights must be non-negative; got negative weights for \['domain 1'\]"),
    ([0.5, float("nan"), 0.5], r"weights must be finite numbers; got NaN/inf for \['domain 1'\]"),
    ([0, 0, 0], "all weights are zero; at least one domain needs a positive weight"),
    ([0.5, 0.5], "3 sampling rates needed, one per domain")])
def test_bad_rates_are_refused(rates, message):
  sched = ScheduledAssignment([1, 1, 1], seed=0, every=2)
  with pytest.raises(ConfigError, match="mixer rates for block 1: " + message):
    sched.publish(1, rates)


def test_a_block_is_published_once():
  sched = ScheduledAssignment([1, 1], seed=0, every=2)
  sched.publish(1, [0.2, 0.8])
  sched.publish(1, [0.2, 0.8])        # the same rates again: fine
  with pytest.raises(ValueError, match="already published"):
    sched.publish(1, [0.5, 0.5])
  with pytest.raises(ConfigError, match="update interval must be an integer >= 1"):
    ScheduledAssignment([1, 1], seed=0, every=0)


def test_loader_replays_the_position_of_a_scheduled_run():
  """A loader resumed without a saved position replays it from the
  published history, and its batches are the uninterrupted run's."""
  corpus = synthetic_tasks.synthetic_corpus(synthetic.SyntheticCorpusConfig(seq_len=32))
  rng = np.random.default_rng(1)
  history = {str(b): rng.dirichlet(np.ones(5)).tolist() for b in range(1, 4)}
  make = lambda: ScheduledAssignment([0.2] * 5, seed=2, every=2, history=history)
  full = loader_lib.BatchLoader(corpus, make(), 12, 32, seed=4)
  batches = [full.next() for _ in range(7)]
  full.close()
  resumed = loader_lib.BatchLoader(corpus, make(), 12, 32, seed=4, start_step=4)
  for want, _ in batches[4:]:
    got, _ = resumed.next()
    np.testing.assert_array_equal(got["targets"], want["targets"])
    np.testing.assert_array_equal(got["domain_ids"], want["domain_ids"])
  resumed.close()
  assert batches[3][1]["positions"] == resumed.replay_positions(4).tolist()


def test_stored_rates_survive_a_checkpoint_bit_for_bit():
  """Rates whose normalisation is not idempotent (proportional shares) are
  stored normalised once; the JSON history restores the same bits, and
  publishing the stored or the raw rates again is accepted."""
  raw = np.array([2.0, 1.0, 4.0, 3.0, 2.0]) / 12.0 * 1.0000001
  a = ScheduledAssignment(raw, seed=0, every=1)
  stored = a.publish(1, raw)
  assert abs(stored.sum() - 1) <= 1e-12
  history = json.loads(json.dumps(a.history()))
  b = ScheduledAssignment(raw, seed=0, every=1, history=history)
  for block in (0, 1):
    assert a.rates(block).tobytes() == b.rates(block).tobytes()
  b.publish(1, stored)
  b.publish(1, raw)
  np.testing.assert_array_equal(a(1, 64), b(1, 64))


def test_resample_mode_draws_step_t_from_the_weights_step_t_minus_3_computed(tmp_path):
  """Step 2's resample mode (online DoReMi's program) as the runner drives
  it: step s's metrics reach the publisher after step s + 1 is dispatched
  (`on_step(s + 1, ...)`), and the loader draws step t from the weights the
  mixer held after step t - 3 (after t - 2 steps done: two steps later than
  the freshest, after t steps), steps 0-2 from the initial weights; an
  update gated to step u (warm-up 4, every 3) first reaches step u + 3. The
  rates are known before the step that draws from them."""
  from doremi_jax import doremi
  from doremi_jax.data.scheduled import RatesPublisher
  from doremi_jax.mixers import base
  from doremi_jax.mixers.doremi_online import DoReMiOnlineMixer
  k, steps, w0 = 3, 14, np.full(3, 1 / 3)
  mixer = DoReMiOnlineMixer.from_dro_config(k, doremi.DROConfig(weights_warmup_steps=4,
                                                                update_every=3))
  assignment = ScheduledAssignment(w0, seed=0, every=mixer.every, timeout=0.1)
  publisher = RatesPublisher(assignment, "mixer_rates", list("abc"), steps, base.DELAY,
                             tmp_path / "mixture_weights.jsonl", "doremi_resample", True,
                             score_key="mixer/excess")
  publisher.start(0)
  state, after, used, unchecked = mixer.init(w0), {}, {}, []
  for s in range(steps):
    assert assignment.known(s), s                 # the loader need not wait for step s
    used[s] = assignment.rates(s)
    excess = np.array([0.1 * s, 0.5, 0.0], np.float32)
    state = mixer.update(state, base.Signals(np.zeros(k), np.ones(k), np.ones(k), excess), s)
    after[s] = np.asarray(mixer.rates(state), np.float64)
    unchecked.append((s + 1, {"mixer_rates": after[s], "mixer/excess": excess}))
    while len(unchecked) > (1 if s < steps - 1 else 0):   # the runner's one-step-late fetch
      publisher.on_step(*unchecked.pop(0))
  for t in range(steps):
    want = w0 if t < 3 else after[t - 3]
    np.testing.assert_allclose(used[t], want, rtol=1e-6, err_msg=str(t))
  changed = [t for t in range(1, steps) if not np.allclose(used[t], used[t - 1])]
  assert changed == [4 + 3, 7 + 3, 10 + 3]       # the updates at steps 4, 7, 10
