"""Checks of the speed layer's output shared by the speed-layer and fault tests.

`expected_user_vectors` computes, independently of the speed layer, what an
uninterrupted run must publish: each streamed user's training row plus the
stream, folded in once against the model's item factors.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from recsys.contracts import Event, Topics, VectorUpdate
from recsys.foldin import FoldIn
from recsys.kafka_io import read_to_end
from speed_layer.service import SpeedLayer


def latest_updates(s) -> dict[tuple[str, str], VectorUpdate]:
    latest = {}
    for records in read_to_end(Topics.MODEL_UPDATES, s):
        for r in records:
            if r.key.startswith(b"UP:") and r.value is not None:  # None: a forgotten user's tombstone
                up = VectorUpdate.model_validate_json(r.value)
                latest[(up.kind, up.id)] = up
    return latest


def expected_user_vectors(artifact, stream: list[Event], weights) -> dict[str, np.ndarray]:
    """Independently: each streamed user's training row plus the stream, folded in (model items only)."""
    index = {it: j for j, it in enumerate(artifact.item_ids)}
    rows = {u: i for i, u in enumerate(artifact.user_ids)}
    delta = defaultdict(lambda: np.zeros(len(index)))
    new_item_users = {e.user_id for e in stream if e.item_id not in index}
    for e in stream:
        if e.item_id in index:
            delta[e.user_id][index[e.item_id]] += weights[e.event_type]
    fold = FoldIn(artifact.item_factors, artifact.manifest.objective)
    out = {}
    for user, d in delta.items():
        if user in new_item_users:
            continue  # their vector depends on when the new item got one: checked elsewhere
        row = d + (artifact.interactions[rows[user]].toarray().ravel() if user in rows else 0)
        nz = np.flatnonzero(row)
        out[user] = fold.vector(nz, row[nz])
    return out


def run_until_idle(s, instance: str = "speed-test", idle_s: float = 3.0) -> SpeedLayer:
    layer = SpeedLayer(s, instance)
    try:
        layer.run(max_idle_s=idle_s)
    finally:
        layer.close()
    return layer


def assert_users_match(s, artifact, stream) -> int:
    expected = expected_user_vectors(artifact, stream, s.event_weights)
    updates = latest_updates(s)
    for user, vector in expected.items():
        up = updates[("user", user)]
        assert up.model_version == artifact.manifest.model_version
        np.testing.assert_allclose(up.vector, vector, rtol=2e-3, atol=2e-4)
    return len(expected)
