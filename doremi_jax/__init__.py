"""doremi_jax: DoReMi (Xie et al. 2023) domain reweighting in JAX/Flax."""

__version__ = "0.1.0"
