"""fashion_jax: JAX/Flax training and evaluation for fashion product photo classification."""
