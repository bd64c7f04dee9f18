"""FORGET during an A/B test, on the real broker: the speed layer drops the user from the champion's state and from
the challenger's, tombstones both arms' keys, and a returning user's UPs in both arms hold only what they did after
the request."""

import time

import numpy as np
import pytest
from published_models import produce, publish_model

from infra.chaos import latest_updates
from recsys.contracts.events import CONTROL_HEADER, FORGET_CONTROL, Event, ForgetMarker
from recsys.io.kafka import end_offsets, producer, read_to_end
from recsys.models.als import FoldIn
from recsys.protocol import Topics, parse_key
from speed_layer.service import SpeedLayer

pytestmark = pytest.mark.integration

CHALLENGER = "m20260102T000000000000"


def _place_marker(s, user: str) -> None:
    """The FORGET marker on `events`, as `erasure.request` places it, without the tombstones that function also
    sends: what the speed layer does with the marker is under test."""
    prod = producer(s, linger_ms=0)
    try:
        marker = ForgetMarker(user_id=user, requested_at_ms=int(time.time() * 1000))
        headers = [(CONTROL_HEADER, FORGET_CONTROL)]
        prod.send(Topics.EVENTS, key=user.encode(), value=marker.to_wire(), headers=headers).get(timeout=30)
    finally:
        prod.close()


def _send(s, event: Event) -> None:
    prod = producer(s, linger_ms=0)
    try:
        prod.send(Topics.EVENTS, key=event.user_id.encode(), value=event.to_wire()).get(timeout=30)
    finally:
        prod.close()


def _run_to_end(layer: SpeedLayer, s, timeout_s: float = 300.0) -> None:
    """Run the layer until it holds every partition of `events` read to its end as of the call (and is idle); the
    layer stays open, its state in memory, as a running speed layer's is when a FORGET arrives."""
    ends = end_offsets(Topics.EVENTS, s)
    deadline = time.monotonic() + timeout_s
    while True:
        layer.run(max_idle_s=3.0)
        assigned = layer.events.assignment()
        read = all(layer.events.position(tp) >= ends[tp.partition] for tp in assigned)
        if {tp.partition for tp in assigned} == set(ends) and read:
            return
        assert time.monotonic() < deadline, "the speed layer did not read `events` to its end"


def _tombstoned(s, user: str, version: str) -> bool:
    """Whether a tombstone under this arm's key for the user is on `model-updates`."""
    for records in read_to_end(Topics.MODEL_UPDATES, s):
        for r in records:
            key = parse_key(r.key)
            if key.is_up() and key.kind == "user" and key.id == user and key.version == version and r.value is None:
                return True
    return False


def test_forget_drops_the_user_from_both_arms_and_a_return_counts_only_what_follows(isolated_stack):
    s = isolated_stack
    history = produce(s, seed=30, n=3_000)
    challenger = publish_model(s, history, CHALLENGER, rank=8, as_challenger=True)
    champion = publish_model(s, history, "m20260101T000000000000")
    stream = produce(s, seed=31, n=800)
    ab = s.model_copy(update={"ab_challenger_version": CHALLENGER})
    layer = SpeedLayer(ab, "speed-ab-forget")
    try:
        _run_to_end(layer, s)
        assert layer.challenger is not None
        champion_ups, challenger_ups = latest_updates(s), latest_updates(s, challenger=CHALLENGER)
        trained = set(champion.user_ids) & set(challenger.user_ids)
        # Shoppers the models were trained on, whose streamed events made UPs in both arms: both what the models
        # know of them and what the running layer holds must go.
        both = sorted(
            u for kind, u in challenger_ups if kind == "user" and ("user", u) in champion_ups and u in trained
        )
        assert len(both) >= 2
        gone, back = both[0], both[1]

        _place_marker(s, gone)
        _place_marker(s, back)
        j = 5
        item = str(champion.item_ids[j])
        assert str(challenger.item_ids[j]) == item  # the same data: the same item positions
        latest = max(e.ts_ms for e in stream)
        _send(s, Event(event_id="e-after-forget", user_id=back, item_id=item, event_type="view", ts=latest + 1_000))
        _run_to_end(layer, s)
    finally:
        layer.close()

    champion_ups, challenger_ups = latest_updates(s), latest_updates(s, challenger=CHALLENGER)
    for version, ups in (("", champion_ups), (CHALLENGER, challenger_ups)):
        assert ("user", gone) not in ups, version  # their last UP in this arm is followed by a tombstone
        assert _tombstoned(s, gone, version), version
    weight = np.array([s.event_weights["view"]])
    for version, ups, artifact in (("", champion_ups, champion), (CHALLENGER, challenger_ups, challenger)):
        up = ups[("user", back)]
        assert up.model_version == artifact.manifest.model_version and up.strengths == {item: weight[0]}, version
        expected = FoldIn(artifact.item_factors, artifact.model.objective).vector(np.array([j]), weight)
        np.testing.assert_allclose(up.vector, expected, rtol=1e-3, atol=1e-5, err_msg=version)
