"""Two models' states in one speed layer: each takes every event after its own cut-off once, across seeks."""

import random
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp
from artifacts import als_artifact

from recsys.contracts.event_columns import EventColumns
from recsys.contracts.events import Event
from recsys.io.model_store import ModelArtifact
from recsys.models.als import FoldIn, Objective
from speed_layer.state import SpeedState
from speed_layer.tracks import Track, bounds, own_part, replay_start

WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
OBJECTIVE = Objective(confidence="alpha_r", reg_scaling="none", alpha=2.0, reg=0.5)
USERS = {0: ["u0", "u1", "u2"], 1: ["u3", "u4", "late"]}  # by partition, as events are keyed by user


@dataclass(frozen=True)
class Rec:
    """A record of `events`: an event, or a FORGET marker (`event` None) for `user`."""

    partition: int
    offset: int
    user: str
    event: Event | None


def model(version: str, offsets: dict[int, int], seed: int) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(10, 4)).astype(np.float32)
    base = sp.random(6, 10, density=0.4, random_state=seed, dtype=np.float32).tocsr()
    base.data[:] = 1.0
    return als_artifact(FoldIn(items, OBJECTIVE).vectors(base), items, base, OBJECTIVE, version, kafka_offsets=offsets)


def log(n: int, seed: int) -> dict[int, list[Rec]]:
    """Per partition, `n` records: events on the models' items, and a FORGET marker now and then."""
    rng = random.Random(seed)
    out: dict[int, list[Rec]] = {}
    for p, users in USERS.items():
        out[p] = []
        for offset in range(n):
            user = rng.choice(users)
            if rng.random() < 0.08:
                out[p].append(Rec(p, offset, user, None))
                continue
            kind = rng.choice(list(WEIGHTS))
            event = Event(
                event_id=f"{p}-{offset}",
                user_id=user,
                item_id=f"i{rng.randrange(10)}",
                event_type=kind,
                ts=1_700_000_000_000 + offset,
            )
            out[p].append(Rec(p, offset, user, event))
    return out


class Folded:
    """A track's state, and every (partition, offset) handed to it (to show none is handed over twice)."""

    def __init__(self, artifact: ModelArtifact, keyed: bool) -> None:
        self.track = Track.fresh(SpeedState(artifact, WEIGHTS), keyed_by_version=keyed)
        self.seen: list[tuple[int, int]] = []

    def take(self, records: list[Rec]) -> None:
        """As `SpeedLayer._fold`: the batch's FORGET markers first, then its events after their user's marker."""
        self.seen += [(r.partition, r.offset) for r in records]
        markers = {r.user: r.offset for r in records if r.event is None}
        for user in markers:
            self.track.state.forget(user)
        events = [r.event for r in records if r.event is not None and r.offset > markers.get(r.user, -1)]
        self.track.state.apply(EventColumns.of(events), [1] * len(events))


def run(the_log: dict[int, list[Rec]], steps: list, seed: int) -> None:
    """The speed layer's loop over `the_log`, without Kafka: `steps` says, between polls, when a model is loaded:
    (batch number, action) where action(folded list) returns the new list of tracks; then a seek to each partition's
    `replay_start`. A poll returns a random number of records from each partition's position."""
    rng = random.Random(seed)
    tracks: list[Folded] = []
    position: dict[int, int] = {}
    for batch in range(10_000):
        for at, action in steps:
            if at == batch:
                tracks = action(tracks)
                for p in the_log:  # the seek after a model is loaded
                    start = replay_start([f.track for f in tracks], p)
                    position[p] = 0 if start is None else start
        if batch > max(at for at, _ in steps) and all(position[p] >= len(recs) for p, recs in the_log.items()):
            return
        polled = {p: recs[position[p] : position[p] + rng.randint(0, 7)] for p, recs in the_log.items()}
        records = [r for recs in polled.values() for r in recs]
        for p, recs in polled.items():
            position[p] += len(recs)
        firsts, lasts = bounds(polled)
        read = [r for r in records if r.event is not None]
        for folded in tracks:
            part = own_part(folded.track, firsts, records, read)
            folded.take(records if part is None else part[0])
            folded.track.advance(lasts)
    raise AssertionError("the log was never read to its end")


def reference(artifact: ModelArtifact, the_log: dict[int, list[Rec]]) -> SpeedState:
    """Independently of the tracks: a fresh state fed, one record at a time, exactly the log after the cut-off."""
    state = SpeedState(artifact, WEIGHTS)
    cutoff = artifact.manifest.kafka_offsets
    for p, recs in the_log.items():
        for r in recs[cutoff.get(p, 0) :]:
            if r.event is None:
                state.forget(r.user)
            else:
                state.apply(EventColumns.of([r.event]), [1])
    return state


def assert_folded_exactly(folded: Folded, artifact: ModelArtifact, the_log: dict[int, list[Rec]]) -> None:
    cutoff = artifact.manifest.kafka_offsets
    expected = sorted((p, r.offset) for p, recs in the_log.items() for r in recs[cutoff.get(p, 0) :])
    assert sorted(folded.seen) == expected  # each record after the cut-off, once; none before it
    ref = reference(artifact, the_log)
    for user in [u for users in USERS.values() for u in users]:
        got, want = folded.track.state.user_vector(user), ref.user_vector(user)
        assert (got is None) == (want is None), user
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=user)
        assert folded.track.state.user_strengths.get(user) == ref.user_strengths.get(user), user


CHAMPION = model("m20260101T000000000000", {0: 9, 1: 4}, seed=1)
CHALLENGER = model("m20260102T000000000000-neumf", {0: 3, 1: 14}, seed=2)  # earlier on one partition, later on one
NEXT_CHAMPION = model("m20260103T000000000000", {0: 30, 1: 25}, seed=3)


@pytest.mark.parametrize("seed", range(5))
def test_both_states_take_exactly_the_events_after_their_own_models_offsets(seed):
    the_log = log(60, seed)
    champion, challenger = Folded(CHAMPION, False), Folded(CHALLENGER, True)
    run(the_log, [(0, lambda _: [champion, challenger])], seed)
    assert challenger.track.key_version == CHALLENGER.manifest.model_version and champion.track.key_version is None
    assert_folded_exactly(champion, CHAMPION, the_log)
    assert_folded_exactly(challenger, CHALLENGER, the_log)


@pytest.mark.parametrize("seed", range(5))
def test_a_challenger_loaded_late_replays_from_its_offsets_and_the_champion_is_not_fed_twice(seed):
    """The challenger appears after the champion has read past its cut-off (the seek goes back for it); later a new
    champion replaces the first (the seek goes forward for it, the challenger keeps its state and position)."""
    the_log = log(60, seed)
    champion, challenger, newer = Folded(CHAMPION, False), Folded(CHALLENGER, True), Folded(NEXT_CHAMPION, False)
    run(the_log, [(0, lambda _: [champion]), (6, lambda t: [*t, challenger]), (12, lambda t: [newer, t[1]])], seed)
    assert_folded_exactly(challenger, CHALLENGER, the_log)
    assert_folded_exactly(newer, NEXT_CHAMPION, the_log)
    assert len(set(champion.seen)) == len(champion.seen)  # the replaced champion, until then: nothing twice


def test_replay_starts_at_the_earliest_position_and_at_the_beginning_when_a_model_lacks_the_partition():
    a = Track.fresh(SpeedState(CHAMPION, WEIGHTS))
    b = Track.fresh(SpeedState(CHALLENGER, WEIGHTS), keyed_by_version=True)
    assert [replay_start([a, b], p) for p in (0, 1, 2)] == [3, 4, None]
    assert replay_start([a], 0) == 9
    a.advance({0: 40, 2: 5})
    assert a.next == {0: 41, 1: 4, 2: 6} and not a.behind({0: 41}) and a.behind({0: 40, 1: 50})
