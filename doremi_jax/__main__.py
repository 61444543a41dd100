"""`python -m doremi_jax ...` is `python -m doremi_jax.main ...`."""

from doremi_jax.main import cli_main

if __name__ == "__main__":
  cli_main()
