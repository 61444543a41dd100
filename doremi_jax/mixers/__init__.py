"""Online mixing methods: mixtures that change during the main run.

Each method is a small module whose update is a pure function of a pytree
state and the per-domain signals the step computes, so it can run inside
the jitted step, be checkpointed with the model and be tested against an
independent NumPy implementation (tests/unit/mixers_test.py).

  odm.py    ODM (Albalak et al. 2023): EXP3 on per-domain training loss
  ado.py    ADO (Jiang et al. 2024): per-domain scaling-law fits of loss
            against data seen, and its policy
  aioli.py  Aioli (Chen, Hu et al. 2024): the mixing-law matrix from
            LearnParams' loss decreases, and the exponentiated-gradient step

  doremi_online.py  DoReMi's Group-DRO weights against a reference, as the
            main run's rates (also Step 2's `train_proxy.mode = 'resample'`)

`base.Mixer` is the interface the main stage trains with (its state lives
in the step program's state, its update inside the jitted step). A method
registers itself once, by name, with its starting mixture
(`@base.register(prior=...)`); `make` builds one by name with its gin
settings, and the study's mixer arms are every registered name.
"""

from doremi_jax.mixers import base
# Importing the methods registers them (and their gin settings), in this order.
from doremi_jax.mixers import odm, ado, doremi_online, aioli  # noqa: F401,I001  pylint: disable=wrong-import-order


def names() -> tuple:
  """Every registered method's name, in registration order."""
  return base.names()


def prior(name: str) -> str:
  """The weights spec method `name` starts from."""
  return base.get(name).prior


def make(name: str, num_domains: int, num_steps: int) -> base.Mixer:
  """The mixer `name` with its gin-bound settings (ConfigError for an
  unknown name)."""
  return base.get(name).cls(num_domains, num_steps)


def needs_reference(name: str) -> bool:
  """Whether method `name` compares the model with a reference run."""
  return base.get(name).cls.needs_reference
