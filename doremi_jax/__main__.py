from doremi_jax.main import cli

cli()
