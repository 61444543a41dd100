"""A swarm of N small LMs trained together: one jitted, sharded step over a
leading member axis, the loader that gives every member its own mixture's
batches, and the evaluator that scores every member per domain.

Layout: the member axis M is the leading axis of every parameter, optimizer
state, batch and metric, and is split over the mesh axis `data`; within a
member, `fsdp` and `tensor` shard as `MeshConfig.rules` say (their `data`
entries are dropped: the swarm owns that axis). The step is
`jax.vmap(steps.lm_train(...), spmd_axis_name='data')`, so member m's update
is the plain LM step on its own batch, and the model's sharding constraints
gain the member axis.

Every host builds every member's whole batch (the members' batches are
small) and keeps the pieces its devices hold, so the batches do not depend
on the process count. Member m's rows are drawn from its own mixture by
the same exact, resumable loader as any run (`SwarmLoader`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from doremi_jax import evaluate
from doremi_jax import sharding as sharding_lib
from doremi_jax import steps
from doremi_jax.config import ConfigError
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import packing
from doremi_jax.loss import per_domain_sums, per_token_loss, tokens_of
from doremi_jax.state import ModelSetup, TrainConfig, build_setup
from doremi_jax.tasks.suite import TaskSuite

AXIS = "data"   # the mesh axis the members are split over


def member_rules(rules) -> tuple:
  """`rules` without the mesh axis `data` (which splits the members)."""
  out = []
  for name, axes in rules:
    if isinstance(axes, tuple):
      axes = tuple(a for a in axes if a != AXIS) or None
      axes = axes[0] if axes is not None and len(axes) == 1 else axes
    elif axes == AXIS:
      axes = None
    out.append((name, axes))
  return tuple(out)


def _with_member_axis(sharding: NamedSharding) -> NamedSharding:
  return NamedSharding(sharding.mesh, P(AXIS, *sharding.spec))


def swarm_setup(vocab_size: int, cfg: TrainConfig, members: int, model_cfg=None,
                mesh_cfg=None, devices=None) -> ModelSetup:
  """The `ModelSetup` of `members` copies of a model (gin's when not
  given), with the member axis leading every state leaf and batch (split
  over mesh axis `data`)."""
  mesh_cfg = mesh_cfg or sharding_lib.MeshConfig()
  mesh_cfg = dataclasses.replace(mesh_cfg, rules=member_rules(mesh_cfg.rules))
  one = build_setup(vocab_size, cfg, model_cfg=model_cfg, mesh_cfg=mesh_cfg, devices=devices)
  split = one.mesh.shape[AXIS]
  if members % split:
    raise ConfigError(
        f"the swarm's {members} members do not split evenly over the mesh axis 'data' "
        f"({split} devices): choose train_swarm.members divisible by {split} (with "
        f"train_swarm.groups, each group's members), or set MeshConfig.data to a divisor of "
        f"{members} (and MeshConfig.fsdp to fill the devices, so each member is split over "
        "fsdp).")
  shardings = jax.tree.map(_with_member_axis, one.state_shardings)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct((members,) + a.shape, a.dtype, sharding=s),
      one.abstract_state, shardings)
  batch_shardings = {k: _with_member_axis(v) for k, v in one.batch_shardings.items()}
  return dataclasses.replace(one, abstract_state=abstract, state_shardings=shardings,
                             batch_shardings=batch_shardings)


def from_full(batch: dict, shardings: dict) -> dict:
  """Global arrays from a batch every process holds whole."""
  return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx])
          for k, v in batch.items()}


def swarm_program(setup: ModelSetup, num_domains: int, accum: int, seq_len: int,
                  member_seeds: Sequence[int]) -> steps.StepProgram:
  """The swarm step: every member's plain LM step on its own batch
  (`{'targets': [M, B, L], 'segment_ids': [M, B, L], 'domain_ids': [M, B]}`),
  vmapped in one program.
  Member m is initialised as a single model with seed `member_seeds[m]`
  (`init`'s own seed argument is not used).

  Metrics: per member (`member_loss` [M], `member_grad_norm` [M],
  `member_domain_loss` [M, K]) and, for the runner's checks and progress,
  their mean loss, largest gradient norm and per-domain mean loss (a
  non-finite member makes these non-finite)."""
  train = steps.lm_train(setup, num_domains, accum)

  def step(state, batch):
    new, m, _, _ = jax.vmap(train, spmd_axis_name=AXIS)(state, batch)
    metrics = {
        "loss": jnp.mean(m["loss"]),
        "grad_norm": jnp.max(m["grad_norm"]),
        "learning_rate": m["learning_rate"][0],
        "domain_loss": jnp.mean(m["domain_loss"], axis=0),
        "domain_tokens": jnp.sum(m["domain_tokens"], axis=0),
        "member_loss": m["loss"],
        "member_grad_norm": m["grad_norm"],
        "member_domain_loss": m["domain_loss"],
    }
    return new, metrics

  members = len(member_seeds)

  def init(_seed=None):
    keys = jnp.stack([jax.random.key(int(s)) for s in member_seeds])
    with setup.scope():
      fn = jax.jit(jax.vmap(lambda k: nn.meta.unbox(setup.init_fn(k)), spmd_axis_name=AXIS),
                   out_shardings=setup.state_shardings)
      return fn(keys)

  replicated = sharding_lib.replicated(setup.mesh)
  jitted = jax.jit(step, in_shardings=(setup.state_shardings, setup.batch_shardings),
                   out_shardings=(setup.state_shardings, replicated), donate_argnums=(0,))
  return steps.StepProgram(
      name=f"swarm{members}", setup=setup, abstract_state=setup.abstract_state,
      state_shardings=setup.state_shardings, init=init, jitted=jitted, extra=(),
      params_of=lambda s: s.params, domain_loss_key="domain_loss",
      flops_per_token=float(setup.model_cfg.flops_per_token(seq_len)),
      make_global=lambda b: from_full(b, setup.batch_shardings),
      make_evaluator=SwarmEvaluator.create, batch_prefix=(members,))


class SwarmAssignment:
  """Rows m*B..(m+1)*B-1 of a step's [M*B] rows are member m's: the rows a
  main run on `mixtures[m]` with seed `seeds[m]` would draw
  (`MixtureAssignment`)."""

  def __init__(self, mixtures, seeds: Sequence[int], tokens_per_row=None):
    self.members = [loader_lib.MixtureAssignment(w, int(s), tokens_per_row)
                    for w, s in zip(mixtures, seeds)]

  @property
  def num_domains(self) -> int:
    return self.members[0].num_domains

  def __call__(self, step: int, batch_size: int) -> np.ndarray:
    per = batch_size // len(self.members)
    return np.concatenate([a(step, per) for a in self.members])


class SwarmLoader:
  """The swarm's batches: one exact, resumable `BatchLoader` over every
  member's rows (`SwarmAssignment`), so the members share each domain's
  stream (member m takes its examples after members 0..m-1's in each
  step) and the data state is the loader's (each domain's position).
  Every host reads every member's whole batch. `next()` gives
  `{'targets': [M, B, L], 'segment_ids': [M, B, L], 'domain_ids': [M, B]}` and the
  data state. `members`: only these members' rows (a group of the swarm
  trained as its own run, `train_swarm.groups`): exactly the rows they
  draw in the whole swarm, so a member's data does not depend on how the
  swarm is split; the data state is still the whole swarm's."""

  def __init__(self, corpus, mixtures, seeds: Sequence[int], cfg: TrainConfig,
               start_step: int = 0, data_state=None, members: Optional[Sequence[int]] = None):
    self.members = len(mixtures)
    self.rows = None if members is None else np.asarray(members, np.int64)
    positions = None if data_state is None else np.asarray(data_state["positions"])
    self.loader = loader_lib.BatchLoader(
        corpus, SwarmAssignment(mixtures, seeds,
                                loader_lib.tokens_per_row(corpus, cfg.seq_len)),
        self.members * cfg.global_batch_size,
        cfg.seq_len, cfg.seed, start_step, positions)

  def next(self):
    batch, state = self.loader.next()
    out = {k: v.reshape((self.members, -1) + v.shape[1:]) for k, v in batch.items()}
    if self.rows is not None:
      out = {k: v[self.rows] for k, v in out.items()}
    return out, state

  def close(self):
    self.loader.close()


@dataclasses.dataclass
class SwarmEvaluator:
  """`evaluator(params, step) -> summary`: every member's mean token loss per
  domain on the `tune` rows (`loader.eval_batches`; the laws are fitted to
  them, so the study grades the swarm's optimum on `test`). The summary is `evaluate.summarize`'s of the members'
  mean loss per domain, plus `members`: [M][K] losses."""
  setup: ModelSetup
  corpus: object
  batches: list
  step_fn: object
  tasks: Optional[TaskSuite] = None    # TrainConfig.eval_tasks on `tune`, per member

  @classmethod
  def create(cls, setup: ModelSetup, corpus, cfg: TrainConfig) -> "SwarmEvaluator":
    batches = loader_lib.eval_batches(corpus, cfg.seq_len, cfg.eval_examples_per_domain,
                                      cfg.eval_batch_size, split=packing.TUNE)
    k = corpus.num_domains

    def one(params, batch):
      loss_BxL, mask_BxL = per_token_loss(setup.model, params, tokens_of(batch))
      return per_domain_sums(loss_BxL, mask_BxL, batch["domain_ids"], k)

    eval_sh = {key: NamedSharding(v.mesh, P(*v.spec[1:]))
               for key, v in setup.batch_shardings.items()}
    replicated = sharding_lib.replicated(setup.mesh)
    step_fn = jax.jit(jax.vmap(one, in_axes=(0, None), spmd_axis_name=AXIS),
                      in_shardings=(setup.state_shardings.params, eval_sh),
                      out_shardings=(replicated, replicated))
    return cls(setup, corpus, batches, lambda p, b: step_fn(p, from_full(b, eval_sh)),
               evaluate.task_suite(corpus, cfg, packing.TUNE))

  def losses(self, params) -> np.ndarray:
    """[M, K] float64: every member's mean `tune` loss per domain."""
    with self.setup.scope():
      sums, counts = evaluate.run_eval(self.step_fn, params, self.batches, lambda b: b)
    return sums / np.maximum(counts, 1.0)

  def __call__(self, params, step: int, reference=None) -> dict:
    with self.setup.scope():
      sums, counts = evaluate.run_eval(self.step_fn, params, self.batches, lambda b: b)
    losses = sums / np.maximum(counts, 1.0)
    summary = evaluate.summarize(self.corpus.domains, losses.mean(0) * counts[0], counts[0],
                                 step, self.corpus.entropy_floors, split=packing.TUNE)
    summary["members"] = losses.tolist()
    if self.tasks is not None:   # each member's tasks, one member's parameters at a time
      with self.setup.scope():
        summary["member_tasks"] = [
            self.tasks(self.setup.model, jax.tree.map(lambda x, m=m: x[m], params))
            for m in range(len(losses))]
    return summary

