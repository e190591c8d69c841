"""upzeroir-jax: zero-shot all-in-one image restoration (UP-ZeroIR) in JAX/Flax."""

__version__ = "0.1.0"
