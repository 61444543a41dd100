"""Stages: each a short function over `doremi_jax.runner.run_stage`.

lm.py        `reference` (DoReMi Step 1) and `main` (Step 3, the main model)
proxy.py     `proxy` (Step 2, Group DRO against a reference)
pipeline.py  `pipeline` (all of DoReMi, iterated rounds, the report)
study.py     `study` (arms x seeds, the statistics)
swarm.py     `swarm` (many tiny proxies, fitted mixing laws, their optimum)
registry.py  stage name -> function, gin scope and step program kind
"""
