"""SR-GNN (Wu et al. 2019) training in JAX + optax: gated graph steps over the session graph, attention readout.

Per session (its last `max_len` items):
  1. session graph: nodes = distinct items, edge a → b (0/1) if a is directly followed by b;
     A_in / A_out = the edge matrix normalised by in- / out-degree (as the reference code);
  2. `n_steps` gated graph steps: a = [A_in (H W_in + b_in) + b_iah ; A_out (H W_out + b_out) + b_oah],
     then a GRU cell updates every node state from (a, H);
  3. readout: s_l = the last item's node state; s_g = Σ_i α_i v_i, α_i = q · σ(W1 s_l + W2 v_i + c);
     s = W3 [s_l ; s_g] + b;
  4. scores = s · e_j over every item; softmax cross-entropy on the next item.

Batching: windows are padded to `max_len` positions and the graph is built inside the jitted step
from the padded item sequence, in "position space" (an item's node is the position of its first
occurrence; positions holding a repeat are empty nodes, never read). So the training data is int32
windows, not adjacency tensors, and one compiled step serves every batch. `recsys.models.srgnn`
builds the textbook graph (distinct items, small dense matrices) in numpy for serving; the tests
check both give the same scores. Imports JAX: import lazily.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recsys.models.neural.data import cpu_seconds, gather_windows

Params = dict[str, jax.Array]
CHUNK_STEPS = 32  # batches per jitted scan call: the time budget is checked between chunks


def init_params(n_items: int, dim: int, key: jax.Array) -> Params:
    """Every weight ~ U(-1/√d, 1/√d), as the reference implementation's reset_parameters."""
    d = dim
    shapes = {
        "item_emb": (n_items, d),
        "edge_in_w": (d, d),
        "edge_in_b": (d,),
        "edge_out_w": (d, d),
        "edge_out_b": (d,),
        "iah": (d,),
        "oah": (d,),
        "gru_wi": (2 * d, 3 * d),
        "gru_bi": (3 * d,),
        "gru_wh": (d, 3 * d),
        "gru_bh": (3 * d,),
        "att_w1": (d, d),
        "att_b1": (d,),
        "att_w2": (d, d),
        "att_b2": (d,),
        "att_q": (d,),
        "out_w": (2 * d, d),
        "out_b": (d,),
    }
    keys = jax.random.split(key, len(shapes))
    bound = 1.0 / np.sqrt(d)
    return {
        name: jax.random.uniform(k, shape, jnp.float32, -bound, bound)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def batch_graph(seq: jax.Array, lengths: jax.Array):
    """Graphs of a padded batch (B, L) in position space: (first, valid, A_in, A_out).

    first[b, p] = position of the first occurrence of seq[b, p] (its node);
    A_in[b, v, u] = edge(u → v) / indeg(v), A_out[b, u, v] = edge(u → v) / outdeg(u).
    """
    _, L = seq.shape
    valid = jnp.arange(L)[None, :] < lengths[:, None]
    same = (seq[:, :, None] == seq[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    first = jnp.where(valid, jnp.argmax(same, axis=2), 0)
    pair = valid[:, 1:]
    src = jax.nn.one_hot(first[:, :-1], L) * pair[:, :, None]
    dst = jax.nn.one_hot(first[:, 1:], L)
    edge = jnp.minimum(jnp.einsum("bpu,bpv->buv", src, dst), 1.0)  # 0/1: a repeated transition counts once
    indeg, outdeg = edge.sum(axis=1), edge.sum(axis=2)
    a_in = jnp.swapaxes(edge, 1, 2) / jnp.maximum(indeg, 1.0)[:, :, None]
    a_out = edge / jnp.maximum(outdeg, 1.0)[:, :, None]
    return first, valid, a_in, a_out


def ggnn_step(params: Params, h, a_in, a_out):
    d = h.shape[-1]
    msg_in = a_in @ (h @ params["edge_in_w"] + params["edge_in_b"]) + params["iah"]
    msg_out = a_out @ (h @ params["edge_out_w"] + params["edge_out_b"]) + params["oah"]
    gi = jnp.concatenate([msg_in, msg_out], -1) @ params["gru_wi"] + params["gru_bi"]
    gh = h @ params["gru_wh"] + params["gru_bh"]
    r = jax.nn.sigmoid(gi[..., :d] + gh[..., :d])
    z = jax.nn.sigmoid(gi[..., d : 2 * d] + gh[..., d : 2 * d])
    n = jnp.tanh(gi[..., 2 * d :] + r * gh[..., 2 * d :])
    return n + z * (h - n)


def session_vectors(params: Params, seq, lengths, n_steps: int = 1):
    """(B, d) session vectors of a padded batch of item windows."""
    first, valid, a_in, a_out = batch_graph(seq, lengths)
    is_node = valid & (first == jnp.arange(seq.shape[1])[None, :])
    h = params["item_emb"][jnp.maximum(seq, 0)] * is_node[:, :, None]
    for _ in range(n_steps):
        h = ggnn_step(params, h, a_in, a_out)
    seq_h = jnp.take_along_axis(h, first[:, :, None], axis=1)
    last = jnp.take_along_axis(seq_h, (lengths - 1)[:, None, None], axis=1)[:, 0]
    att = (
        jax.nn.sigmoid(
            (last @ params["att_w1"] + params["att_b1"])[:, None, :] + seq_h @ params["att_w2"] + params["att_b2"]
        )
        @ params["att_q"]
    )
    global_pref = jnp.sum((att * valid)[:, :, None] * seq_h, axis=1)
    return jnp.concatenate([last, global_pref], -1) @ params["out_w"] + params["out_b"]


def scores(params: Params, seq, lengths, n_steps: int = 1):
    return session_vectors(params, seq, lengths, n_steps) @ params["item_emb"].T


def loss_fn(params: Params, seq, lengths, targets, weights, n_steps: int = 1):
    """Softmax cross-entropy of the next item over the catalogue, averaged over rows with weight 1 (padding: 0)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(scores(params, seq, lengths, n_steps), targets)
    return jnp.sum(ce * weights) / jnp.maximum(weights.sum(), 1.0)


def make_optimizer(lr: float, l2: float, lr_decay: float, decay_steps: int) -> optax.GradientTransformation:
    schedule = optax.exponential_decay(lr, transition_steps=max(decay_steps, 1), decay_rate=lr_decay, staircase=True)
    # Decayed weights before Adam = coupled L2 on the gradient (torch Adam(weight_decay=...)), as the paper's code.
    return optax.chain(optax.add_decayed_weights(l2), optax.scale_by_adam(), optax.scale_by_learning_rate(schedule))


def _epoch_batches(rng, flat, begins, ends, targets, batch_size: int, max_len: int):
    """The epoch's examples shuffled, as (n_batches, B, ·) arrays; the last batch padded with weight-0 rows."""
    order = rng.permutation(len(targets))
    n_batches = -(-len(order) // batch_size)
    seq, lengths = gather_windows(flat, begins[order], ends[order], max_len)
    pad = n_batches * batch_size - len(order)
    seq = np.vstack([seq, np.zeros((pad, max_len), np.int32)])
    lengths = np.r_[lengths, np.ones(pad, np.int32)]
    tgt = np.r_[targets[order], np.zeros(pad, np.int64)].astype(np.int32)
    w = np.r_[np.ones(len(order), np.float32), np.zeros(pad, np.float32)]
    return (
        seq.reshape(n_batches, batch_size, max_len),
        lengths.reshape(n_batches, batch_size),
        tgt.reshape(n_batches, batch_size),
        w.reshape(n_batches, batch_size),
    )


def train(
    flat: np.ndarray,
    begins: np.ndarray,
    ends: np.ndarray,
    targets: np.ndarray,
    n_items: int,
    *,
    dim: int,
    max_len: int,
    n_steps: int,
    lr: float,
    l2: float,
    lr_decay: float,
    lr_decay_epochs: int,
    batch_size: int,
    epochs: int,
    seed: int,
    time_budget_s: float | None = None,
) -> tuple[dict, list[dict]]:
    """Train on the examples (context = flat[begin:end], last `max_len` of it; target). Returns (weights, history).

    Stops after `epochs`, or as soon as `time_budget_s` has passed (checked every `CHUNK_STEPS` batches, so the
    budget is a hard bound up to one chunk). History row 0 is the untrained model's loss on the first batches.
    """
    rng = np.random.default_rng(seed)
    params = init_params(n_items, dim, jax.random.PRNGKey(seed))
    history: list[dict] = []
    if not len(targets):
        return export(params, max_len, n_steps), history
    steps_per_epoch = -(-len(targets) // batch_size)
    opt = make_optimizer(lr, l2, lr_decay, steps_per_epoch * lr_decay_epochs)
    state = opt.init(params)

    def step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch, n_steps)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    @jax.jit
    def run_chunk(params, state, seq, lengths, tgt, w):
        (params, state), losses = jax.lax.scan(step, (params, state), (seq, lengths, tgt, w))
        return params, state, losses

    one_step = jax.jit(lambda p, s, *b: step((p, s), b))
    started = time.perf_counter()
    out_of_time = False
    for epoch in range(epochs):
        t0, c0 = time.perf_counter(), cpu_seconds()
        seq, lengths, tgt, w = _epoch_batches(rng, flat, begins, ends, targets, batch_size, max_len)
        if epoch == 0:
            k = min(8, len(seq))
            first = (seq[:k].reshape(-1, max_len), lengths[:k].ravel(), tgt[:k].ravel(), w[:k].ravel())
            history.append({"epoch": 0, "loss": float(jax.jit(loss_fn, static_argnums=5)(params, *first, n_steps))})
        losses, done = [], 0
        while done < len(seq):
            if len(seq) - done >= CHUNK_STEPS:
                sl = slice(done, done + CHUNK_STEPS)
                params, state, chunk = run_chunk(params, state, seq[sl], lengths[sl], tgt[sl], w[sl])
                losses.append(chunk)
                done += CHUNK_STEPS
            else:  # the remainder one batch at a time (one more compiled shape, not one per remainder length)
                (params, state), loss = one_step(params, state, seq[done], lengths[done], tgt[done], w[done])
                losses.append(loss[None])
                done += 1
            if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
                out_of_time = True
                break
        losses_np = np.concatenate([np.asarray(x) for x in losses])
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(losses_np.mean()),
                "steps": done,
                "seconds": time.perf_counter() - t0,
                "cpu_s": cpu_seconds() - c0,
            }
        )
        if out_of_time:
            history[-1]["stopped_by_time_budget"] = True
            break
    return export(params, max_len, n_steps), history


def export(params: Params, max_len: int, n_steps: int) -> dict[str, np.ndarray]:
    out = {name: np.asarray(v, dtype=np.float32) for name, v in params.items()}
    out["max_len"] = np.array(max_len, np.int32)
    out["n_steps"] = np.array(n_steps, np.int32)
    return out


def jax_scores(weights: dict[str, np.ndarray], seqs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The library's batched forward pass on exported weights (the reference for the numpy scorer)."""
    params = {k: jnp.asarray(v) for k, v in weights.items() if k not in ("max_len", "n_steps")}
    fn = jax.jit(scores, static_argnums=3)
    return np.asarray(fn(params, jnp.asarray(seqs), jnp.asarray(lengths), int(weights["n_steps"])))
