"""Health checks of a DoReMi run or a mixture study: each a line with its
number, PASS or WARN, and what to do. Pure functions of what the run
directories hold (weights, Step 2's weight log, evaluations, sizes)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

COLLAPSE_WEIGHT = 0.9      # a "collapsed" step: one domain holds more than this
COLLAPSE_SHARE = 0.25      # WARN when more than this share of Step 2's steps collapsed
MIN_EXAMPLES = 5           # WARN when a domain gets fewer sequences over the main run
MAX_EPOCHS = 4.0           # WARN past this many epochs of a domain (repetition)


def _line(name: str, value: str, ok: bool, advice: str) -> dict:
  return {"check": name, "value": value, "status": "PASS" if ok else "WARN",
          "advice": "" if ok else advice}


def entropy(w) -> float:
  w = np.asarray(w, np.float64)
  w = w[w > 0]
  return float(-(w * np.log(w)).sum())


def weight_collapse(weights_log: Sequence[dict]) -> list:
  """Step 2's current weights over the steps of its log (every step; a run
  older than that log logged one step in `log_every`): the share of steps
  where one domain holds more than COLLAPSE_WEIGHT, and the entropy of the
  weights (first, lowest, last; log k is uniform)."""
  if not weights_log:
    return []
  w = np.array([r["domain_weights"] for r in weights_log], np.float64)
  collapsed = int(np.sum(w.max(axis=1) > COLLAPSE_WEIGHT))
  share = collapsed / len(w)
  ent = [entropy(x) for x in w]
  k = w.shape[1]
  return [
      _line("Step 2 weight collapse", f"{collapsed} of {len(w)} steps ({share:.0%}) with a "
            f"weight > {COLLAPSE_WEIGHT}", share <= COLLAPSE_SHARE,
            "the Group-DRO weights sit on one domain: lower train_proxy.step_size, raise "
            "train_proxy.smoothing, or check that the reference is trained on that domain."),
      _line("Step 2 weight entropy", f"first {ent[0]:.3f}, lowest {min(ent):.3f}, last "
            f"{ent[-1]:.3f} nats (uniform {math.log(k):.3f})", ent[-1] >= 0.5 * math.log(k),
            "the current weights ended concentrated on few domains (below half the uniform "
            "entropy): the averaged weights hide this; look at which domains they left and "
            "why, or lower train_proxy.step_size."),
  ]


def starved_domains(domains, weights: dict, num_steps: int, batch: int,
                    label: str = "") -> dict:
  """A domain whose weight gives it fewer than MIN_EXAMPLES sequences over the
  main run (a small weight silently gives it nothing)."""
  expected = {d: weights[d] * num_steps * batch for d in domains}
  few = {d: n for d, n in expected.items() if n < MIN_EXAMPLES}
  value = ", ".join(f"{d} {n:.1f}" for d, n in few.items()) or \
      f"every domain >= {MIN_EXAMPLES} sequences"
  return _line(f"domains starved{label}", value, not few,
               f"these domains get fewer than {MIN_EXAMPLES} sequences over the main run "
               "(expected counts shown): if that is not intended, floor their weights or "
               "train longer.")


def repetition(domains, weights: dict, budget_rows: float, seq_len: int, train_tokens: dict,
               label: str = "", tokens_per_row=None, stratified: bool = False) -> dict:
  """Epochs of each domain's data that the main run's `budget_rows` packed
  rows imply: a domain's rows drawn (its row share, `shares`) times its
  real tokens per row (`tokens_per_row`; full rows of `seq_len` when
  unknown), over its train tokens."""
  tpr = tokens_per_row or {d: float(seq_len) for d in domains}
  rows = shares(domains, weights, None, tpr, stratified)["rows"]
  epochs = {d: rows[d] * budget_rows * tpr[d] / max(train_tokens[d], 1) for d in domains}
  many = {d: e for d, e in epochs.items() if e > MAX_EPOCHS}
  top = max(epochs, key=epochs.get)
  return _line(f"repetition{label}", f"most repeated: {top} {epochs[top]:.2f} epochs"
               + (f"; over {MAX_EPOCHS:g}: " + ", ".join(f"{d} {e:.1f}" for d, e in many.items())
                  if many else ""), not many,
               f"these domains repeat more than {MAX_EPOCHS:g} times under the main run's "
               "budget; returns from repeated data fall off: cap them (the 'unimax' arm does) "
               "or add data.")


def proxy_below_reference(proxy_eval: Optional[dict]) -> list:
  """Domains where the proxy ends below the reference: their clipped excess
  is zero, so Step 2 cannot see them (the reference is too weak there)."""
  if not proxy_eval:
    return []
  below = {d: r["excess_over_reference"] for d, r in proxy_eval["per_domain"].items()
           if r.get("excess_over_reference", 0.0) < 0}
  return [_line("proxy below reference", ", ".join(f"{d} {x:+.3f}" for d, x in below.items())
                or "none", not below,
                "the proxy beats the reference on these domains, so their excess is clipped "
                "to zero and DoReMi down-weights them: train the reference longer or give the "
                "proxy a lower learning rate.")]


def rounds_converged(pipeline_state: Optional[dict]) -> list:
  if not pipeline_state or not pipeline_state.get("rounds"):
    return []
  rounds = pipeline_state["rounds"]
  requested = pipeline_state.get("rounds_requested", len(rounds))
  last = rounds[-1]["l1_change"]
  ok = requested == 1 or pipeline_state.get("converged_at_round") is not None
  return [_line("iterated rounds", f"{len(rounds)} of {requested} round(s), last L1 change "
                f"{last:.4f} (tolerance {pipeline_state.get('tolerance', 0):g})", ok,
                "the weights were still moving when the rounds ran out: raise "
                "train_pipeline.rounds.")]


def tokenizer_line(tokenizer: Optional[dict], domains=None, bytes_per_token=None) -> list:
  """The tokenizer used and, where known, each domain's bytes per token."""
  if not tokenizer:
    return []
  name = tokenizer.get("class", "?")
  sha = tokenizer.get("sentencepiece_sha256")
  value = f"{name}, {tokenizer.get('vocab_size')} ids" + (f", sha256 {sha[:12]}" if sha else "")
  if domains and bytes_per_token:
    value += "; bytes/token " + ", ".join(f"{d} {r:.2f}" for d, r in zip(domains, bytes_per_token)
                                          if r is not None)
  return [_line("tokenizer", value, True, "")]


def weights_under_budget(domains, weights: dict, info: dict, label: str = "") -> list:
  """Starvation and repetition of `weights` under the budget of the run
  whose run_info is `info` (steps, tokens per step, sequence length and the
  corpus's train sizes)."""
  if not info or not all(k in info for k in ("num_steps", "tokens_per_step", "seq_len",
                                             "train_tokens")):
    return []
  batch = info["tokens_per_step"] // info["seq_len"]
  sizes = dict(zip(info["domains"], info["train_tokens"]))
  return [starved_domains(domains, weights, info["num_steps"], batch, label),
          repetition(domains, weights, info["num_steps"] * batch, info["seq_len"], sizes, label,
                     info.get("tokens_per_row"))]


def shares(domains, weights: dict, bytes_per_token, tokens_per_row=None,
           stratified: bool = False) -> dict:
  """An arm's shares of real tokens, of rows and (where the corpus knows
  every domain's bytes per token, a sequence in domain order, or None) of
  UTF-8 bytes, computed from the domains' measured tokens per packed row
  (`tokens_per_row`, a {domain: tokens} dict or None when unknown). A
  mixture's weights are token shares (the loader draws rows with
  `weights.row_rates`); a stratified arm draws equal rows, so its token
  shares follow the rows' fill. Weights found with one tokenizer mean other
  byte shares under another."""
  w = {d: float(weights[d]) for d in domains}
  tpr = None if tokens_per_row is None else {d: float(tokens_per_row[d]) for d in domains}
  if stratified:
    if tpr is None:
      raise ValueError("the token shares of stratified batches need the tokens per row")
    rows = {d: 1.0 / len(domains) for d in domains}
    tokens = _normalised({d: rows[d] * tpr[d] for d in domains})
  else:
    tokens = _normalised(w)
    rows = None if tpr is None else _normalised({d: w[d] / tpr[d] for d in domains})
  out = {"tokens": tokens}
  if rows is not None:
    out["rows"] = rows
  if bytes_per_token is not None and all(r is not None for r in bytes_per_token):
    ratio = dict(zip(domains, bytes_per_token))
    out["bytes"] = _normalised({d: tokens[d] * ratio[d] for d in domains})
  return out


def _normalised(values: dict) -> dict:
  total = sum(values.values()) or 1.0
  return {d: v / total for d, v in values.items()}


def format_lines(lines: list) -> list:
  """Markdown rows of a health-check table."""
  out = ["| check | value | status | what to do |", "|---|---|---|---|"]
  out += [f"| {l['check']} | {l['value']} | {l['status']} | {l['advice']} |" for l in lines]
  return out
