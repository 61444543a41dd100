"""Swarm methods (RegMix, Olmix): many small proxies on sampled mixtures, a
fitted mixing law, and the mixture it proposes.

law.py      the swarm's mixtures (RegMix's sampler) and Olmix's exact proposer
fit.py      the laws, their cross-validation, every law's proposal
program.py  the swarm's step program (vmapped members), loader and evaluator
results.py  swarm.json: every law's fits, cross-validation and optimum
(the stage itself is `doremi_jax.stages.swarm`; swarm.md is
`doremi_jax.analysis.swarm_report`)
"""
