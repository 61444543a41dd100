"""Orbax checkpoints holding the train state *and* the data position.

One checkpoint per saved step: item `state` (the sharded pytree, restored
directly into its shardings) and item `data` (JSON: the loader's position),
so a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from doremi_jax import io


class Checkpointer:

  def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
    self.every = every
    self.manager = ocp.CheckpointManager(
        io.path(directory).absolute() if "://" not in str(directory) else directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def maybe_save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out.state, out.data

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)
