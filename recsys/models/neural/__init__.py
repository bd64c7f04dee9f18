"""Training side of the neural recommenders (`neumf`, `srgnn`): JAX + optax, imported only inside `fit`.

`recsys/models/neumf.py` and `recsys/models/srgnn.py` are the recommenders: their scoring,
real-time update, explanations and files are numpy over exported weights, so the speed
layer and serving never import JAX. This package holds what only training needs:

- `data`: numpy-only example builders shared by the trainers and the tests (negative
  sampling, sessions from an `EventLog`, next-item prefixes, padded windows);
- `neumf_jax`, `srgnn_jax`: the models as pure functions over a parameter dict (the
  exported weights use the same names), the loss, and a training loop bounded by a
  time budget. They import `jax` at module level: import them lazily.
"""
