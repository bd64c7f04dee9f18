"""Helpers shared by the speed-layer and serving tests: events on the real broker, and real published models.

`publish_model` fits a real engine on real events and publishes the artifact the
way `jobs.train` + `jobs.publish` do (model_store.save, promote), without Spark's
aggregation step, so a test gets a published model in about a second.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from jobs.engines import AlsParams, implicit_als
from recsys.contracts.events import Event, validate_event
from recsys.contracts.manifest import ModelManifest
from recsys.data import catalog
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.evaluation.protocol import distinct_users_per_item
from recsys.io import model_store
from recsys.io.kafka import end_offsets
from recsys.protocol import Topics
from recsys.replay import replay

CATALOGUE = {"n_users": 300, "n_items": 150, "n_categories": 5}


def produce(s, seed: int, n: int, malformed: float = 0.0, **catalogue) -> list[Event]:
    """Replay `n` synthetic messages into `events`; returns the valid ones."""
    config = SyntheticConfig(n_events=n, seed=seed, malformed_share=malformed, **{**CATALOGUE, **catalogue})
    messages = list(iter_messages(config, key=s.pseudonym_key_bytes()))
    assert replay(messages, settings=s, progress=False).sent == n
    return [e for _, v in messages if isinstance(e := validate_event(v, s), Event)]


def write_catalogue(s, **catalogue) -> None:
    c = {**CATALOGUE, **catalogue}
    catalog.write(catalog.synthetic(c["n_items"], c["n_categories"]), s)


def publish_model(
    s, events: list[Event], version: str, engine=implicit_als, spark=None, rank: int = 16
) -> model_store.ModelArtifact:
    """Fit an engine on `events` and publish it as covering everything in `events` so far."""
    weights = s.event_weights
    types = list(weights)
    users = np.array(sorted({e.user_id for e in events}))
    items = np.array(sorted({e.item_id for e in events}))
    u = np.searchsorted(users, [e.user_id for e in events])
    i = np.searchsorted(items, [e.item_id for e in events])
    shape = (len(users), len(items))
    matrix = sp.csr_matrix(([weights[e.event_type] for e in events], (u, i)), shape=shape)
    seen = sp.coo_matrix(([1 << types.index(e.event_type) for e in events], (u, i)), shape=shape)
    seen = _bit_or(seen, matrix)
    params = AlsParams(rank=rank, iterations=6, reg=1.0 if engine is implicit_als else 0.1, alpha=1.0)
    user_factors, item_factors = engine.fit(matrix, params, spark)
    manifest = ModelManifest(
        model_version=version, created_at_ms=int(time.time() * 1000), engine=engine.NAME,
        objective=engine.objective(params), rank=rank, hyperparameters={}, n_users=len(users),
        n_items=len(items), kafka_offsets=end_offsets(Topics.EVENTS, s), event_types=types,
    )  # fmt: skip
    artifact = model_store.ModelArtifact(manifest, users, items, user_factors, item_factors, matrix.astype(np.float32),
                                         distinct_users_per_item(matrix).astype(np.float32), seen)  # fmt: skip
    path = model_store.save(artifact, model_store.candidates_dir(s) / version)
    model_store.promote(path, s)
    return artifact


def _bit_or(bits: sp.coo_matrix, pattern: sp.csr_matrix) -> sp.csr_matrix:
    """OR of the bits per (row, col), laid out on exactly `pattern`'s sparsity (as the train job stores it)."""
    merged: dict[tuple[int, int], int] = {}
    for r, c, b in zip(bits.row.tolist(), bits.col.tolist(), bits.data.tolist(), strict=True):
        merged[(r, c)] = merged.get((r, c), 0) | b
    out = pattern.astype(np.int32, copy=True)
    for r in range(out.shape[0]):
        start, end = out.indptr[r], out.indptr[r + 1]
        out.data[start:end] = [merged[(r, c)] for c in out.indices[start:end].tolist()]
    return out
