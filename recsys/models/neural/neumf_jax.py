"""NeuMF (He et al. 2017) training in JAX + optax: a parameter dict, BCE with sampled negatives, Adam.

    GMF tower:  g = p_u^G ⊙ q_i^G
    MLP tower:  h = ReLU layers on [p_u^M ; q_i^M]
    fusion:     logit_ui = out_w · [g ; h] + out_b

The parameter names are the exported weights' names, which `recsys.models.neumf` reads in
numpy. A whole epoch is one jitted `lax.scan` over its batches (one XLA call per epoch: the
Python dispatch per batch costs as much as the math at these sizes). Imports JAX: import lazily.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recsys.models.neural.data import cpu_seconds, epoch_examples

Params = dict[str, jax.Array]


def init_params(
    n_users: int, n_items: int, gmf_dim: int, mlp_dim: int, mlp_layers: tuple[int, ...], key: jax.Array
) -> Params:
    """Embeddings ~ N(0, 0.01²) as in the paper; dense layers Glorot-uniform."""
    keys = iter(jax.random.split(key, 5 + len(mlp_layers)))

    def emb(n: int, d: int) -> jax.Array:
        return 0.01 * jax.random.normal(next(keys), (n, d), jnp.float32)

    params: Params = {
        "gmf_user": emb(n_users, gmf_dim),
        "gmf_item": emb(n_items, gmf_dim),
        "mlp_user": emb(n_users, mlp_dim),
        "mlp_item": emb(n_items, mlp_dim),
    }
    sizes = (2 * mlp_dim, *mlp_layers)
    glorot = jax.nn.initializers.glorot_uniform()
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        params[f"mlp_w{k}"] = glorot(next(keys), (n_in, n_out), jnp.float32)
        params[f"mlp_b{k}"] = jnp.zeros((n_out,), jnp.float32)
    params["out_w"] = glorot(next(keys), (gmf_dim + sizes[-1], 1), jnp.float32)[:, 0]
    params["out_b"] = jnp.zeros((), jnp.float32)
    return params


def n_layers(params: dict) -> int:
    return sum(1 for name in params if name.startswith("mlp_w"))


def logits_from_embeddings(params: Params, gu, gi, mu, mi) -> jax.Array:
    h = jnp.concatenate([mu, mi], axis=-1)
    for k in range(n_layers(params)):
        h = jax.nn.relu(h @ params[f"mlp_w{k}"] + params[f"mlp_b{k}"])
    return jnp.concatenate([gu * gi, h], axis=-1) @ params["out_w"] + params["out_b"]


def logits(params: Params, users, items) -> jax.Array:
    return logits_from_embeddings(
        params,
        params["gmf_user"][users],
        params["gmf_item"][items],
        params["mlp_user"][users],
        params["mlp_item"][items],
    )


def loss_fn(params: Params, users, items, labels, l2: float) -> jax.Array:
    """Mean BCE over the batch, + l2 · (squared norms of the embedding rows it touched) / batch."""
    bce = optax.sigmoid_binary_cross_entropy(logits(params, users, items), labels).mean()
    if l2 == 0.0:
        return bce
    rows = (params["gmf_user"][users], params["gmf_item"][items], params["mlp_user"][users], params["mlp_item"][items])
    return bce + l2 * sum(jnp.sum(r * r) for r in rows) / users.shape[0]


def make_epoch_fn(optimizer: optax.GradientTransformation, l2: float) -> Callable:
    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch, l2)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run_epoch(params, opt_state, users, items, labels):
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (users, items, labels))
        return params, opt_state, losses.mean()

    return run_epoch


def train(
    pos_users: np.ndarray,
    pos_items: np.ndarray,
    n_users: int,
    n_items: int,
    *,
    gmf_dim: int,
    mlp_dim: int,
    mlp_layers: tuple[int, ...],
    negatives: int,
    lr: float,
    l2: float,
    batch_size: int,
    epochs: int,
    seed: int,
    time_budget_s: float | None = None,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Train for `epochs` (fewer if the next epoch would pass `time_budget_s`). Returns (numpy weights, history).

    History rows: epoch, mean training loss, wall and CPU seconds. The loss of the
    untrained model on the first epoch's examples is row 0 (so "training lowers the loss" is checkable).
    """
    rng = np.random.default_rng(seed)
    params = init_params(n_users, n_items, gmf_dim, mlp_dim, tuple(mlp_layers), jax.random.PRNGKey(seed))
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    run_epoch = make_epoch_fn(optimizer, l2)
    keys = np.unique(pos_users.astype(np.int64) * n_items + pos_items)
    history: list[dict] = []
    if not len(pos_users):
        return export(params), history
    started = time.perf_counter()
    for epoch in range(epochs):
        t0, c0 = time.perf_counter(), cpu_seconds()
        batches = epoch_examples(rng, pos_users, pos_items, n_items, negatives, keys, batch_size)
        if epoch == 0:  # the untrained model's loss on (up to 64 batches of) the first epoch's examples
            first = [b[:64].ravel() for b in batches]
            history.append({"epoch": 0, "loss": float(jax.jit(loss_fn, static_argnums=4)(params, *first, 0.0))})
        params, opt_state, loss = run_epoch(params, opt_state, *batches)
        history.append(
            {"epoch": epoch + 1, "loss": float(loss), "seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}
        )
        elapsed = time.perf_counter() - started
        if time_budget_s is not None and epoch + 1 < epochs and elapsed + elapsed / (epoch + 1) > time_budget_s:
            history[-1]["stopped_by_time_budget"] = True
            break  # the next epoch would end past the budget
    return export(params), history


def export(params: Params) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}


def jax_logits(weights: dict[str, np.ndarray], users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The library's own forward pass on exported weights: the reference the numpy scorer must equal."""
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    return np.asarray(jax.jit(logits)(params, jnp.asarray(users), jnp.asarray(items)))


def jax_user_grads(
    weights: dict[str, np.ndarray], gmf_u: np.ndarray, mlp_u: np.ndarray, items: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean BCE of one user over (items, labels) and its gradient w.r.t. the user's two embeddings, by jax.grad."""
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    it = jnp.asarray(items)

    def loss(gu, mu):
        n = it.shape[0]
        z = logits_from_embeddings(
            params,
            jnp.broadcast_to(gu, (n, gu.shape[0])),
            params["gmf_item"][it],
            jnp.broadcast_to(mu, (n, mu.shape[0])),
            params["mlp_item"][it],
        )
        return optax.sigmoid_binary_cross_entropy(z, jnp.asarray(labels)).mean()

    value, (g_gmf, g_mlp) = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(gmf_u), jnp.asarray(mlp_u))
    return float(value), np.asarray(g_gmf), np.asarray(g_mlp)
