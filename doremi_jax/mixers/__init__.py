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

Issue 14 builds the rest on these (the mixer interface in the loader and
the step, ADO, Aioli, online DoReMi, study arms); this package holds the
methods' math.
"""
