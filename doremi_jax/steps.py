"""Step programs: each kind of training step as one object that holds its
abstract state (with shardings), the state shardings, `init(seed)`, the
jitted step and its extra (non-donated) inputs.

* `lm_program`: the plain LM step (Step 1's reference and Step 3's main
  model): mean token loss over the global batch.
* `dro_program`: the Group-DRO step of DoReMi Step 2. In one XLA program:
  the proxy's per-token losses (forward + vjp), the frozen reference's
  per-token losses on the same tokens, the clipped per-domain excess, the
  new domain weights (`doremi.dro_update`), the gradient of the
  weight-averaged per-domain mean proxy loss, and the optimizer update.
  With gradient accumulation (A > 1 micro-batches) the excess must be known
  over the whole global batch before any gradient is taken, so the step
  first runs proxy and reference forwards over all micro-batches, then a
  second forward + backward with the new weights (one extra proxy forward).
* `resample_program`: Step 2's resample mode, which is the LM step with the
  online DoReMi mixer (`mixers.doremi_online`) at proxy size.

The stage runner trains a program; `compile_check` lowers one for a TPU
topology; the benchmarks time one. Every step returns `(state, metrics)`
where metrics hold at least `loss`, `grad_norm`, `learning_rate`,
`domain_tokens` and the per-domain loss under `program.domain_loss_key`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from doremi_jax import checkpoint as ckpt_lib
from doremi_jax import doremi
from doremi_jax import sharding as sharding_lib
from doremi_jax.loss import per_domain_sums, per_token_loss, tokens_of
from doremi_jax.mixers import base as mixer_base
from doremi_jax.mixers.doremi_online import DoReMiOnlineMixer
from doremi_jax.state import ModelSetup, TrainState, init_state, to_global


@dataclasses.dataclass
class StepProgram:
  """One kind of training step, ready to run or to compile ahead of time.

  `abstract_state` (ShapeDtypeStructs with shardings) is the restore target
  of a checkpoint and the argument of ahead-of-time lowering; `extra` are
  the step's inputs after the batch (concrete arrays to run, abstract ones
  to lower); `flops_per_token` is the model FLOPs of one training token
  (the one MFU convention of the benchmarks and `compile_check`).
  """
  name: str
  setup: ModelSetup
  abstract_state: Any
  state_shardings: Any
  init: Callable[[int], Any]         # seed -> state, written into its shards
  jitted: Any                        # jax.jit(step_fn): (state, batch, *extra) -> (state, metrics)
  extra: tuple
  params_of: Callable[[Any], Any]    # state -> the parameters evaluation uses
  domain_loss_key: str
  flops_per_token: float
  # Optional: host batch -> global batch (default: each process's rows of
  # `setup.batch_shardings`), and (setup, corpus, cfg) -> the evaluator.
  make_global: Optional[Callable[[dict], dict]] = None
  make_evaluator: Optional[Callable] = None
  # Leading batch axes before [B, L] (the swarm's member axis).
  batch_prefix: tuple = ()
  # The online mixer whose update runs inside the step (`mixers.base.Mixer`).
  mixer: Any = None

  def global_batch(self, batch: dict) -> dict:
    """The step's global batch from this process's loader output."""
    if self.make_global is not None:
      return self.make_global(batch)
    return to_global(batch, self.setup.batch_shardings)

  def __call__(self, state, batch):
    with self.setup.scope():
      return self.jitted(state, batch, *self.extra)

  def abstract_batch(self, global_batch_size: int, seq_len: int) -> dict:
    sh, rows = self.setup.batch_shardings, self.batch_prefix + (global_batch_size,)
    return {"targets": jax.ShapeDtypeStruct(rows + (seq_len,), np.int32,
                                            sharding=sh["targets"]),
            "segment_ids": jax.ShapeDtypeStruct(rows + (seq_len,), np.int32,
                                                sharding=sh["segment_ids"]),
            "domain_ids": jax.ShapeDtypeStruct(rows, np.int32, sharding=sh["domain_ids"])}

  def lower(self, global_batch_size: int, seq_len: int, extra=None):
    """`jax.jit(...).lower` on abstract state and batch (and `extra`, default
    this program's)."""
    extra = self.extra if extra is None else extra
    with self.setup.scope():
      return self.jitted.lower(self.abstract_state,
                               self.abstract_batch(global_batch_size, seq_len), *extra)


# --------------------------------------------------------------------------
# Loss and gradients with optional accumulation


def split_micro(x, accum: int):
  """[B, ...] -> [A, B/A, ...]; micro-batch m holds rows m, m+A, m+2A, ...

  so each micro-batch keeps the batch sharding of the global batch."""
  b = x.shape[0]
  x = x.reshape((b // accum, accum) + x.shape[1:])
  return jnp.swapaxes(x, 0, 1)


def merge_micro(x):
  """Inverse of `split_micro`."""
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape((-1,) + x.shape[2:])


def _constrain_micro(x):
  return nn.with_logical_constraint(x, (None, "act_batch") + (None,) * (x.ndim - 2))


def token_mask(batch: dict):
  """1.0 on real tokens (segment id not 0), [B, L] fp32."""
  return (batch["segment_ids"] != 0).astype(jnp.float32)


def forward_losses(model, params, tokens, accum: int):
  """Per-token losses (no gradient) of packed rows `tokens` ({'targets',
  'segment_ids'}), micro-batched. Returns (loss_BxL, mask_BxL)."""
  if accum == 1:
    return per_token_loss(model, params, tokens)
  def body(_, t):
    return None, per_token_loss(model, params, jax.tree.map(
        lambda x: _constrain_micro(x[None])[0], t))
  _, (loss, mask) = jax.lax.scan(body, None, jax.tree.map(lambda x: split_micro(x, accum),
                                                          tokens))
  return merge_micro(loss), merge_micro(mask)


def weighted_grads(model, params, tokens, weights_BxL, accum: int):
  """Gradient of sum(loss_BxL * weights_BxL) w.r.t. params, accumulated over
  `accum` micro-batches; also returns loss_BxL (for metrics)."""
  def micro(t, w):
    loss, vjp = jax.vjp(lambda p: per_token_loss(model, p, t)[0], params)
    return vjp(w.astype(loss.dtype))[0], loss
  if accum == 1:
    return micro(tokens, weights_BxL)
  def body(acc, tw):
    g, loss = micro(*tw)
    return jax.tree.map(jnp.add, acc, g), loss
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, loss = jax.lax.scan(body, zeros, jax.tree.map(lambda x: split_micro(x, accum),
                                                       (tokens, weights_BxL)))
  return grads, merge_micro(loss)


def apply_gradients(setup: ModelSetup, state: TrainState, grads) -> TrainState:
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state)


def jit_step(setup: ModelSetup, step_fn, state_shardings, extra_shardings: tuple = ()):
  """jax.jit of `step_fn(state, batch, *extra)` with explicit shardings and
  donated state (not the extra inputs, e.g. frozen reference parameters)."""
  replicated = sharding_lib.replicated(setup.mesh)
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, setup.batch_shardings, *extra_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))


# --------------------------------------------------------------------------
# The LM step (Step 1 and Step 3)


def lm_train(setup: ModelSetup, num_domains: int, accum: int):
  """The plain LM update of one model: `train(ts, batch) -> (new ts,
  metrics, loss_BxL, mask_BxL)`; mean token loss over the batch, with
  `accum` micro-batches. (The LM step program jits it; the swarm vmaps it.)"""
  model = setup.model

  def train(ts: TrainState, batch):
    mask_BxL = token_mask(batch)
    total = jnp.maximum(mask_BxL.sum(), 1.0)
    grads, loss_BxL = weighted_grads(model, ts.params, tokens_of(batch), mask_BxL / total,
                                     accum)
    sums, counts = per_domain_sums(loss_BxL, mask_BxL, batch["domain_ids"], num_domains)
    metrics = {
        "loss": loss_BxL.sum() / total,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": setup.lr_schedule(ts.step),
        "domain_loss": sums / jnp.maximum(counts, 1.0),
        "domain_tokens": counts,
    }
    return apply_gradients(setup, ts, grads), metrics, loss_BxL, mask_BxL

  return train


def replicated_state(setup: ModelSetup, make):
  """(abstract state with shardings, shardings) of a small pytree built by
  `make()` (domain weights, a mixer's state): replicated on the mesh."""
  replicated = sharding_lib.replicated(setup.mesh)
  abstract = jax.eval_shape(make)
  shardings = jax.tree.map(lambda _: replicated, abstract)
  return ckpt_lib.abstract_with_shardings(abstract, shardings), shardings


def lm_program(setup: ModelSetup, num_domains: int, accum: int, seq_len: int, mixer=None,
               prior=None, reference=None) -> StepProgram:
  """Plain LM step: mean token loss over the global batch, with `accum`
  micro-batches. With a `mixer` (`mixers.base.Mixer`) the state is
  `{"train": TrainState, "mixer": its state}` (initialised from `prior`),
  the mixer updates inside the step from the step's per-domain signals, and
  the metrics carry its proposed rates (`mixer_rates`) and its report
  (`mixer/<name>`). A mixer that needs a reference gets `reference` (a
  `reference.Reference`: model, params or their abstract shapes,
  shardings): its forward runs in the same program and the clipped
  per-domain excess joins the signals."""
  if mixer is not None and mixer.needs_reference and reference is None:
    raise ValueError(f"the {mixer.name} mixer needs a reference model")
  train = lm_train(setup, num_domains, accum)

  def step(state: TrainState, batch):
    new_state, metrics, _, _ = train(state, batch)
    return new_state, metrics

  flops = float(setup.model_cfg.flops_per_token(seq_len))
  if mixer is None:
    return StepProgram(
        name="lm", setup=setup, abstract_state=setup.abstract_state,
        state_shardings=setup.state_shardings, init=lambda seed: init_state(setup, seed),
        jitted=jit_step(setup, step, setup.state_shardings), extra=(),
        params_of=lambda s: s.params, domain_loss_key="domain_loss", flops_per_token=flops)

  return _mixer_program(setup, train, num_domains, accum, seq_len, mixer, prior, reference)


def _mixer_step(train, num_domains: int, accum: int, mixer, reference):
  """The LM step with `mixer`'s update inside (see `lm_program`)."""

  def mixed_step(state, batch, *ref_params):
    ts = state["train"]
    new_ts, metrics, loss_BxL, mask_BxL = train(ts, batch)
    dom_B = batch["domain_ids"]
    excess = None
    if mixer.needs_reference:
      ref_loss_BxL, _ = forward_losses(reference.model, jax.lax.stop_gradient(ref_params[0]),
                                       tokens_of(batch), accum)
      excess = doremi.per_domain_excess_loss(loss_BxL, ref_loss_BxL, mask_BxL, dom_B,
                                             num_domains)
      metrics["excess"] = excess
    rows = jnp.zeros(num_domains, jnp.float32).at[dom_B].add(1.0)
    signals = mixer_base.Signals(metrics["domain_loss"], metrics["domain_tokens"], rows, excess)
    new_mixer = mixer.update(state["mixer"], signals, ts.step)
    metrics["mixer_rates"] = mixer.rates(new_mixer)
    metrics.update({f"mixer/{k}": v for k, v in mixer.report(new_mixer).items()})
    return {"train": new_ts, "mixer": new_mixer}, metrics

  return mixed_step


def _mixer_program(setup: ModelSetup, train, num_domains: int, accum: int, seq_len: int,
                   mixer, prior, reference) -> StepProgram:
  prior = np.asarray(prior, np.float32)
  mixer_abstract, mixer_shardings = replicated_state(setup, lambda: mixer.init(prior))
  state_shardings = {"train": setup.state_shardings, "mixer": mixer_shardings}

  def init(seed):
    return {"train": init_state(setup, seed),
            # via host copies: distinct buffers per leaf (the state is donated)
            "mixer": jax.device_put(jax.tree.map(np.array, mixer.init(prior)),
                                    mixer_shardings)}

  flops = float(setup.model_cfg.flops_per_token(seq_len))
  extra, extra_shardings = (), ()
  if mixer.needs_reference:
    extra, extra_shardings = (reference.params,), (reference.shardings,)
    flops += reference.model.cfg.flops_per_token(seq_len) / 3
  step = _mixer_step(train, num_domains, accum, mixer, reference)
  return StepProgram(
      name=f"lm+{mixer.name}", setup=setup,
      abstract_state={"train": setup.abstract_state, "mixer": mixer_abstract},
      state_shardings=state_shardings, init=init,
      jitted=jit_step(setup, step, state_shardings, extra_shardings), extra=extra,
      params_of=lambda s: s["train"].params, domain_loss_key="domain_loss",
      flops_per_token=flops, mixer=mixer)


# --------------------------------------------------------------------------
# The Group-DRO step (Step 2)


def dro_state(setup: ModelSetup, initial_weights):
  """(abstract DROState with shardings, shardings): replicated on the mesh."""
  return replicated_state(setup, lambda: doremi.DROState.create(initial_weights))


def _dro_step(setup: ModelSetup, ref_model, num_domains: int, accum: int,
              dro_cfg: doremi.DROConfig):
  """The Group-DRO step function (see `dro_program`)."""
  model = setup.model

  def step(state, batch, ref_params):
    ts: TrainState = state["train"]
    dro: doremi.DROState = state["dro"]
    tokens, dom_B = tokens_of(batch), batch["domain_ids"]
    ref_params = jax.lax.stop_gradient(ref_params)
    ref_loss_BxL, mask_BxL = forward_losses(ref_model, ref_params, tokens, accum)
    if accum == 1:
      proxy_loss_BxL, vjp = jax.vjp(
          lambda p: per_token_loss(model, p, tokens)[0], ts.params)
    else:
      proxy_loss_BxL, _ = forward_losses(model, ts.params, tokens, accum)
    excess_K = doremi.per_domain_excess_loss(proxy_loss_BxL, ref_loss_BxL, mask_BxL, dom_B,
                                             num_domains)
    t = ts.step
    do_update = dro_cfg.update_gate(t)
    new_dro = doremi.dro_update(dro, excess_K, dro_cfg.step_size, dro_cfg.smoothing, do_update)
    w_BxL = doremi.token_weights(new_dro.weights, mask_BxL, dom_B, num_domains)
    if accum == 1:
      grads = vjp(w_BxL)[0]
    else:
      grads, proxy_loss_BxL = weighted_grads(model, ts.params, tokens, w_BxL, accum)
    new_ts = apply_gradients(setup, ts, grads)
    p_sum, counts = per_domain_sums(proxy_loss_BxL, mask_BxL, dom_B, num_domains)
    r_sum, _ = per_domain_sums(ref_loss_BxL, mask_BxL, dom_B, num_domains)
    proxy_dom = p_sum / jnp.maximum(counts, 1.0)
    metrics = {
        "loss": jnp.sum(new_dro.weights * proxy_dom),   # the DRO objective
        "proxy_domain_loss": proxy_dom,
        "reference_domain_loss": r_sum / jnp.maximum(counts, 1.0),
        "excess": excess_K,
        "domain_weights": new_dro.weights,
        "average_weights": new_dro.average_weights,
        "weights_updated": do_update,
        "domain_tokens": counts,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": setup.lr_schedule(t),
    }
    return {"train": new_ts, "dro": new_dro}, metrics

  return step


def dro_program(setup: ModelSetup, reference, num_domains: int, accum: int,
                dro_cfg: doremi.DROConfig, initial_weights, seq_len: int) -> StepProgram:
  """DoReMi's Algorithm 1 against the frozen `reference` (a
  `reference.Reference`: arrays to train, or abstract shapes to compile):
  the batch is stratified and the proxy's loss is the weight-averaged
  per-domain mean loss. The state is `{"train": TrainState, "dro":
  doremi.DROState}`. (Step 2's resample mode is `resample_program`.)"""
  ref_model = reference.model
  initial_weights = np.asarray(initial_weights, np.float32)
  dro_abstract, dro_shardings = dro_state(setup, initial_weights)
  state_shardings = {"train": setup.state_shardings, "dro": dro_shardings}
  abstract_state = {"train": setup.abstract_state, "dro": dro_abstract}

  step = _dro_step(setup, ref_model, num_domains, accum, dro_cfg)

  def init(seed):
    return {"train": init_state(setup, seed),
            "dro": jax.device_put(doremi.DROState.create(initial_weights), dro_shardings)}

  # proxy forward + backward, reference forward, and with accumulation a
  # second proxy forward (a forward is a third of a training token's FLOPs).
  proxy_flops = setup.model_cfg.flops_per_token(seq_len)
  ref_flops = ref_model.cfg.flops_per_token(seq_len) / 3
  return StepProgram(
      name="dro", setup=setup,
      abstract_state=abstract_state, state_shardings=state_shardings, init=init,
      jitted=jit_step(setup, step, state_shardings, (reference.shardings,)),
      extra=(reference.params,),
      params_of=lambda s: s["train"].params, domain_loss_key="proxy_domain_loss",
      flops_per_token=float(proxy_flops + ref_flops + (proxy_flops / 3 if accum > 1 else 0)))


def resample_program(setup: ModelSetup, reference, num_domains: int, accum: int,
                     dro_cfg: doremi.DROConfig, initial_weights, seq_len: int) -> StepProgram:
  """Step 2's `train_proxy.mode = 'resample'` (the variant the paper proposes
  for larger proxies): the proxy trains on the plain token-mean loss of
  batches drawn from the current Group-DRO weights, and the weights follow
  the same update, on the same program as online DoReMi
  (`mixers.doremi_online`, with `train_proxy`'s settings). A domain absent
  from a batch holds its last excess.

  The lag: step t (counted from 0) draws its batch from the weights after
  step t - 3, i.e. after t - 2 steps, DELAY = 2 steps (`mixers.base`)
  behind the freshest (after step t - 1): the runner fetches step s's
  metrics after step s + 1 is dispatched and publishes step s + 3's rates
  from them (`scheduled.RatesPublisher.on_step`), so the host never waits
  on the device. Steps 0-2 draw from `initial_weights`; an update at step
  u (where `doremi.DROConfig.update_gate` allows one) first changes step
  u + 3's batch; doremi_weights.jsonl's row `step` d holds the rates of
  mixture_weights.jsonl's row `step` d + 2. (`dro_program`: no lag.)"""
  mixer = DoReMiOnlineMixer.from_dro_config(num_domains, dro_cfg)
  return lm_program(setup, num_domains, accum, seq_len, mixer=mixer, prior=initial_weights,
                    reference=reference)
