"""Health checks fire on planted cases and pass on healthy ones."""

import math

from doremi_jax.analysis import health

DOMAINS = ["a", "b", "c", "d"]


def test_collapsed_step2_log_warns():
  collapsed = [{"domain_weights": [0.97, 0.01, 0.01, 0.01]} for _ in range(8)]
  healthy = [{"domain_weights": [0.3, 0.3, 0.2, 0.2]} for _ in range(8)]
  bad = health.weight_collapse(collapsed)
  assert [l["status"] for l in bad] == ["WARN", "WARN"]
  assert bad[0]["value"] == "8 of 8 steps (100%) with a weight > 0.9" and bad[0]["advice"]
  one = health.weight_collapse(healthy[:7] + collapsed[:1])   # one step of eight: 12%
  assert one[0]["value"] == "1 of 8 steps (12%) with a weight > 0.9"
  assert [l["status"] for l in health.weight_collapse(healthy)] == ["PASS", "PASS"]
  assert health.entropy([0.25] * 4) == math.log(4)
  # weights that end concentrated warn on entropy even without a collapse
  ending = healthy[:7] + [{"domain_weights": [0.85, 0.05, 0.05, 0.05]}]
  assert [l["status"] for l in health.weight_collapse(ending)] == ["PASS", "WARN"]


def test_weight_that_rounds_to_zero_examples_warns():
  w = {"a": 0.0004, "b": 0.3333, "c": 0.3333, "d": 0.333}
  line = health.starved_domains(DOMAINS, w, num_steps=200, batch=32)
  assert line["status"] == "WARN" and "a 2.6" in line["value"]
  ok = health.starved_domains(DOMAINS, {d: 0.25 for d in DOMAINS}, 200, 32)
  assert ok["status"] == "PASS"


def test_domain_repeated_many_epochs_warns():
  sizes = {"a": 1000, "b": 10**6, "c": 10**6, "d": 10**6}
  # 1000 full rows of 100 tokens
  line = health.repetition(DOMAINS, {d: 0.25 for d in DOMAINS}, 1000, 100, sizes)
  assert line["status"] == "WARN" and "a 25.00 epochs" in line["value"]
  assert health.repetition(DOMAINS, {d: 0.25 for d in DOMAINS}, 10, 100, sizes)["status"] == "PASS"
  # rows of 'a' hold 50 real tokens, the others 100: a quarter of the tokens
  # is 40% of the rows, 400 rows of 50 tokens, 20 epochs of 'a'
  fill = {"a": 50.0, "b": 100.0, "c": 100.0, "d": 100.0}
  line = health.repetition(DOMAINS, {d: 0.25 for d in DOMAINS}, 1000, 100, sizes,
                           tokens_per_row=fill)
  assert "a 20.00 epochs" in line["value"], line
  # equal rows (stratified): 250 rows of 50 tokens, 12.5 epochs
  line = health.repetition(DOMAINS, {d: 0.25 for d in DOMAINS}, 1000, 100, sizes,
                           tokens_per_row=fill, stratified=True)
  assert "a 12.50 epochs" in line["value"], line


def test_proxy_below_reference_and_rounds():
  ev = {"per_domain": {"a": {"excess_over_reference": -0.2}, "b": {"excess_over_reference": 0.1}}}
  (line,) = health.proxy_below_reference(ev)
  assert line["status"] == "WARN" and "a -0.200" in line["value"]
  state = {"rounds": [{"l1_change": 0.3}, {"l1_change": 0.2}], "rounds_requested": 2,
           "converged_at_round": None, "tolerance": 0.01}
  assert health.rounds_converged(state)[0]["status"] == "WARN"
  state.update(converged_at_round=2)
  assert health.rounds_converged(state)[0]["status"] == "PASS"


def test_shares_of_tokens_and_bytes():
  s = health.shares(["a", "b"], {"a": 0.5, "b": 0.5}, [1.0, 3.0])
  assert s["tokens"] == {"a": 0.5, "b": 0.5} and s["bytes"] == {"a": 0.25, "b": 0.75}
  assert "bytes" not in health.shares(["a"], {"a": 1.0}, None)
  assert "bytes" not in health.shares(["a", "b"], {"a": 0.5, "b": 0.5}, [1.0, None])


def test_weights_under_budget_reads_a_runs_budget():
  info = {"num_steps": 100, "tokens_per_step": 32 * 64, "seq_len": 64, "domains": DOMAINS,
          "train_tokens": [1000, 10**6, 10**6, 10**6]}
  w = {"a": 0.25, "b": 0.25, "c": 0.4999, "d": 0.0001}
  starved, rep = health.weights_under_budget(DOMAINS, w, info, " (x)")
  assert starved["status"] == "WARN" and "d 0.3" in starved["value"]
  assert rep["status"] == "WARN" and "a 51.20 epochs" in rep["value"]
  assert rep["check"] == "repetition (x)"
  # a run_info from before train sizes were recorded: nothing to say
  assert health.weights_under_budget(DOMAINS, w, {"num_steps": 1}) == []


def test_tokenizer_line_shows_bytes_per_token():
  (line,) = health.tokenizer_line({"class": "SentencePieceVocabulary", "vocab_size": 8000,
                                   "sentencepiece_sha256": "ab" * 32}, ["a", "b"], [3.25, None])
  assert "8000 ids" in line["value"] and line["value"].endswith("bytes/token a 3.25")
