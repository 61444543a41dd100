"""Study arms: what an arm of `train_study.arms` can be, one small module a
kind (see `base` for the interface, and docs/architecture.md for adding a
kind).

  static.py       'stratified', 'unimax'
  doremi_arm.py   'doremi', 'doremi:N' (the study runs iterated DoReMi)
  swarm_arm.py    'swarm', 'swarm:LAW' (the study trains a swarm)
  mixer_arm.py    every registered online mixer by name
  weights_arm.py  any other spec: a preset, a {domain: weight} mapping, a
                  weights file or a Step 2 run directory

Kinds are tried in registration order; the weights kind, which reads any
other spec as weights, stays last. A kind of your own is a class in a
module of yours, decorated with `arms.register` and imported before the
study runs (a gin file can say `import my_arms`).
"""

from doremi_jax.arms import base
# Importing the kinds registers them, in this order (the weights kind last).
from doremi_jax.arms import static, doremi_arm, swarm_arm, mixer_arm  # noqa: F401,I001
from doremi_jax.arms import weights_arm  # noqa: F401

make, by_kind, spellings, Arm, Study, register, unregister = (
    base.make, base.by_kind, base.spellings, base.Arm, base.Study, base.register,
    base.unregister)
