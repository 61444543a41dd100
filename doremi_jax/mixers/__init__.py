"""Online mixing methods: mixtures that change during the main run.

Each method is a small module whose update is a pure function of a pytree
state and the per-domain signals the step computes, so it can run inside
the jitted step, be checkpointed with the model and be tested against an
independent NumPy implementation (tests/mixers_test.py).

  odm.py    ODM (Albalak et al. 2023): EXP3 on per-domain training loss
  ado.py    ADO (Jiang et al. 2024): per-domain scaling-law fits of loss
            against data seen, and its policy
  aioli.py  Aioli (Chen, Hu et al. 2024): the mixing-law matrix from
            LearnParams' loss decreases, and the exponentiated-gradient step

  doremi_online.py  DoReMi's Group-DRO weights against a reference, as the
            main run's rates

`base.Mixer` is the interface the main stage trains with (its state lives
in the step program's state, its update inside the jitted step); `make`
builds one by name with its gin settings.
"""

from doremi_jax.config import ConfigError
from doremi_jax.mixers import ado, aioli, doremi_online, odm  # registers their gin settings

METHODS = ("odm", "ado", "doremi_online", "aioli")

# Each method's starting mixture as published: ODM's warm-up mixes
# naturally and ADO's prior mu is the token shares (both 'proportional');
# Aioli starts from uniform, and DoReMi's Group DRO from uniform.
PRIORS = {"odm": "proportional", "ado": "proportional", "doremi_online": "uniform",
          "aioli": "uniform"}


def make(name: str, num_domains: int, num_steps: int):
  """The mixer `name` (one of METHODS) with its gin-bound settings."""
  classes = {"odm": odm.ODMMixer, "ado": ado.ADOMixer,
             "doremi_online": doremi_online.DoReMiOnlineMixer,
             "aioli": aioli.AioliMixer}
  if name not in classes:
    raise ConfigError(f"unknown mixing method {name!r}; train_main_model.mixer takes one of "
                      f"{', '.join(METHODS)}, or None for a static mixture.")
  return classes[name](num_domains, num_steps)


def refuse_on_stage(stage: str, mixer) -> None:
  """A clear error for an online mixer bound to a stage where it has no
  meaning (Step 1's fixed reference mixture, Step 2's Group DRO)."""
  if mixer is None:
    return
  why = ("DoReMi compares against a reference trained on a fixed mixture" if stage ==
         "reference" else "Group DRO's weights are the proxy's own online mixture "
         "(train_proxy.mode = 'resample' samples with them)")
  raise ConfigError(f"train_{stage}.mixer = {mixer!r}: an online mixer has no meaning in the "
                    f"{stage} stage: {why}. Set train_main_model.mixer instead.")
