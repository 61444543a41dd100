"""Online DoReMi: the Group-DRO weights of DoReMi Step 2 (Xie et al. 2023,
Algorithm 1), computed against a reference model while the main model
trains, and used as the main model's sampling rates (no separate proxy run).

The same update is Step 2's `train_proxy.mode = 'resample'` (the variant
the paper proposes for larger proxies): the proxy is then the model that
trains on batches drawn from the weights, against Step 1's reference, with
`train_proxy`'s settings (`from_dro_config`).

Per step, on the batch the main model trains on (drawn from the rates):

  lambda_t[i] = clipped per-token excess of the main model over the frozen
                reference on domain i's tokens (`doremi.per_domain_excess_loss`)
  alpha_t     = (1 - c) softmax(log alpha_{t-1} + eta lambda_t) + c / k
                (`doremi.dro_update`, eta 1 and c 1e-3 as in the paper)

The batch is sampled, not stratified, so a domain can be absent from it.
`hold_excess` is our choice for that case: the domain keeps its last
observed lambda (what the official implementation's per-domain score buffer
does). The alternatives are worse: lambda = 0 for an absent domain pushes
rare domains down because they are rare (a self-reinforcing collapse to the
floor), and an importance-weighted lambda / P(present) is unbiased but
gives a floored domain (present in about 2% of batches) jumps of 50x its
excess. A held lambda is stale only while the domain is absent, which gets
less likely the more weight it gains. Before a domain's first appearance
its lambda is 0.

The time-averaged alpha (the DRO state's running mean) is the static
mixture this run would suggest; the rates used are alpha_t.
"""

from __future__ import annotations

import gin
import jax.numpy as jnp

from doremi_jax import doremi
from doremi_jax.config import check_number
from doremi_jax.mixers import base


def hold_excess(last_K, excess_K, observed_K):
  """lambda with absent domains holding their last observed value."""
  return jnp.where(observed_K, excess_K, last_K)


@base.register(prior="uniform")
@gin.configurable
class DoReMiOnlineMixer(base.Mixer):
  """DoReMi's Group-DRO weights as the main run's rates (needs
  `train_main_model.reference_dir`)."""
  name = "doremi_online"
  needs_reference = True

  def __init__(self, num_domains: int, num_steps: int, step_size: float = 1.0,
               smoothing: float = 1e-3, warmup_steps: int = 0, update_every: int = 1):
    check_number("DoReMiOnlineMixer.step_size", step_size, low=0, low_open=True)
    check_number("DoReMiOnlineMixer.smoothing", smoothing, low=0, high=1)
    check_number("DoReMiOnlineMixer.warmup_steps", warmup_steps, integer=True, low=0,
                 high=num_steps - 1)
    check_number("DoReMiOnlineMixer.update_every", update_every, integer=True, low=1)
    super().__init__(num_domains, dict(step_size=step_size, smoothing=smoothing,
                                       warmup_steps=warmup_steps, update_every=update_every))

  @classmethod
  def from_dro_config(cls, num_domains: int, dro_cfg: doremi.DROConfig) -> "DoReMiOnlineMixer":
    """Step 2's `train_proxy.mode = 'resample'`: this update with
    `train_proxy`'s settings (already checked by `doremi.DROConfig`), not
    gin's `DoReMiOnlineMixer.*`."""
    mixer = cls.__new__(cls)
    base.Mixer.__init__(mixer, num_domains, dict(
        step_size=dro_cfg.step_size, smoothing=dro_cfg.smoothing,
        warmup_steps=dro_cfg.weights_warmup_steps, update_every=dro_cfg.update_every))
    return mixer

  def gate(self, step):
    """Whether the weights change at (traced int) step `step`: not before
    `warmup_steps`, then every `update_every` steps (Step 2's rule)."""
    w, n = self.hyper["warmup_steps"], self.hyper["update_every"]
    return (step >= w) & ((step - w) % n == 0)

  def init(self, prior_K):
    return {"dro": doremi.DROState.create(prior_K),
            "held": jnp.zeros(self.num_domains, jnp.float32)}

  def update(self, state, signals, step):
    h = self.hyper
    held = hold_excess(state["held"], signals.excess_K, signals.observed_K)
    dro = doremi.dro_update(state["dro"], held, h["step_size"], h["smoothing"],
                            self.gate(step))
    return {"dro": dro, "held": held}

  def rates(self, state):
    return state["dro"].weights

  def report(self, state):
    return {"excess": state["held"], "average_weights": state["dro"].average_weights}
