"""The speed layer's state on a small hand-made model: exact fold-in on top of the training history."""

import numpy as np
import pytest
import scipy.sparse as sp
from artifacts import als_artifact

from recsys.contracts.event_columns import EventColumns
from recsys.contracts.events import Event
from recsys.data.inputs import UserHistory
from recsys.io.model_store import ModelArtifact
from recsys.models.als import FoldIn, Objective
from recsys.protocol import VectorUpdate
from recsys.settings import Settings
from recsys.topk import top_k
from serving.model import ServingModel
from speed_layer.state import SpeedState

WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
OBJECTIVE = Objective(confidence="alpha_r", reg_scaling="none", alpha=2.0, reg=0.5)


@pytest.fixture
def artifact() -> ModelArtifact:
    """Two categories: items 0-4 live along axis 0, items 5-9 along axis 1; users 0-2 like A, 3-5 like B."""
    rng = np.random.default_rng(0)
    items = np.zeros((10, 4), np.float32)
    items[:5, 0], items[5:, 1] = 1.0, 1.0
    items += rng.normal(scale=0.05, size=items.shape).astype(np.float32)
    base = sp.lil_matrix((6, 10), dtype=np.float32)
    for u in range(6):
        for j in range(5) if u < 3 else range(5, 10):
            base[u, j] = 1.0
    base = base.tocsr()
    users = FoldIn(items, OBJECTIVE).vectors(base)
    return als_artifact(users, items, base, OBJECTIVE)


def batch(events: list[tuple[Event, int]]) -> tuple[EventColumns, list[int]]:
    """What the speed layer hands the state for these (event, source timestamp) pairs."""
    return EventColumns.of([e for e, _ in events]), [ts for _, ts in events]


def ev(n: int, user: str, item: str, etype: str = "purchase") -> tuple[Event, int]:
    event = Event(event_id=f"e{n}", user_id=user, item_id=item, event_type=etype, ts=1_700_000_000_000 + n)
    return event, 1_700_000_000_000 + n


def test_a_known_users_new_event_folds_in_on_top_of_their_history(artifact):
    state = SpeedState(artifact, WEIGHTS)
    updates = state.apply(*batch([ev(1, "u0", "i7"), ev(2, "u0", "i0", "view")]))
    expected_row = artifact.interactions[0].toarray().ravel()
    expected_row[7] += 5.0
    expected_row[0] += 1.0
    nz = np.flatnonzero(expected_row)
    expected = FoldIn(artifact.item_factors, OBJECTIVE).vector(nz, expected_row[nz])
    np.testing.assert_allclose(updates.users["u0"], expected, rtol=1e-5, atol=1e-6)
    assert updates.source_ts_ms[("user", "u0")] == 1_700_000_000_002
    # Deltas accumulate across micro-batches.
    again = state.apply(*batch([ev(3, "u0", "i7")]))
    expected_row[7] += 5.0
    expected = FoldIn(artifact.item_factors, OBJECTIVE).vector(nz, expected_row[nz])
    np.testing.assert_allclose(again.users["u0"], expected, rtol=1e-5, atol=1e-6)


def test_a_user_buying_in_another_category_moves_towards_it(artifact):
    state = SpeedState(artifact, WEIGHTS)
    before = top_k(artifact.user_factors[[0]], artifact.item_factors, 5)[0][0]
    updates = state.apply(*batch([ev(i, "u0", f"i{j}") for i, j in enumerate([5, 6, 7, 8, 9, 5, 6])]))
    after = top_k(updates.users["u0"][None, :], artifact.item_factors, 5)[0][0]
    assert sum(j >= 5 for j in before) == 0
    assert sum(j >= 5 for j in after) >= 3
    assert updates.users["u0"][1] > artifact.user_factors[0][1] + 0.1


def test_new_users_and_new_items_get_vectors(artifact):
    state = SpeedState(artifact, WEIGHTS)
    first = state.apply(*batch([ev(1, "newbie", "i8"), ev(2, "newbie", "i9"), ev(3, "u4", "brand-new")]))
    assert set(first.users) == {"newbie", "u4"} and set(first.items) == {"brand-new"}
    assert first.users["newbie"][1] > abs(first.users["newbie"][0])  # likes category B from two B items
    # The new item is folded in from u4 (a B user): it lands in category B.
    assert first.items["brand-new"][1] > abs(first.items["brand-new"][0])
    # Next time someone touches it, it takes part in their fold-in like any other item.
    second = state.apply(*batch([ev(4, "u1", "brand-new")]))
    u1 = state.context("u1")
    assert dict(zip(u1.items.tolist(), u1.strengths.tolist(), strict=True))[state.item_index["brand-new"]] == 5.0
    assert np.isfinite(second.users["u1"]).all()
    np.testing.assert_allclose(state.user_vector("newbie"), first.users["newbie"])


def test_unknown_user_without_events_has_no_vector(artifact):
    state = SpeedState(artifact, WEIGHTS)
    assert state.user_vector("nobody") is None
    np.testing.assert_allclose(state.user_vector("u3"), artifact.user_factors[3])


@pytest.mark.reliability
def test_forgetting_a_user_drops_their_training_row_and_events_and_refolds_their_new_items(artifact):
    state = SpeedState(artifact, WEIGHTS)
    before = state.apply(*batch([ev(1, "u0", "i7"), ev(2, "u4", "brand-new"), ev(3, "u5", "brand-new", "view")]))
    refolded = state.forget("u4")
    assert state.user_vector("u4") is None and len(state.context("u4").items) == 0
    assert set(refolded.items) == {"brand-new"}  # now from u5's view alone
    assert not np.allclose(refolded.items["brand-new"], before.items["brand-new"])
    state.forget("u0")
    # u0 comes back: only what they do from now on counts, not the training row nor the earlier purchase.
    again = state.apply(*batch([ev(4, "u0", "i9")]))
    expected = FoldIn(artifact.item_factors, OBJECTIVE).vector(np.array([9]), np.array([5.0]))
    np.testing.assert_allclose(again.users["u0"], expected, rtol=1e-4)
    assert again.user_strengths["u0"] == {"i9": 5.0}


def test_the_up_fields_are_the_whole_period_since_the_cut_off_however_the_batches_fall(artifact):
    """Kept event by event, they equal what the events since the cut-off say, in one batch or several."""
    events = [
        ev(1, "u0", "i7", "view"),
        ev(2, "u0", "i7", "purchase"),
        ev(3, "u0", "new-1", "view"),
        ev(4, "u1", "i2", "add_to_cart"),
        ev(5, "u0", "i7", "add_to_cart"),
        ev(6, "u0", "i7", "view"),
    ]
    whole = SpeedState(artifact, WEIGHTS).apply(*batch(events))
    split = SpeedState(artifact, WEIGHTS)
    split.apply(*batch(events[:2]))
    split.apply(*batch(events[2:4]))
    last = split.apply(*batch(events[4:]))
    assert set(last.users) == {"u0"}
    for updates in (whole, last):
        assert updates.user_strengths["u0"] == {"i7": 10.0, "new-1": 1.0}
        assert updates.user_event_types["u0"] == {"i7": ["add_to_cart", "purchase", "view"], "new-1": ["view"]}
        assert updates.user_recent["u0"] == [
            ("i7", "view", 1_700_000_000_001),
            ("i7", "purchase", 1_700_000_000_002),
            ("new-1", "view", 1_700_000_000_003),
            ("i7", "add_to_cart", 1_700_000_000_005),
            ("i7", "view", 1_700_000_000_006),
        ]
    assert whole.user_strengths["u1"] == {"i2": 3.0}
    # What a batch hands out is a copy: later events do not change an update already built.
    split.apply(*batch([ev(7, "u0", "i8")]))
    assert last.user_strengths["u0"] == {"i7": 10.0, "new-1": 1.0} and len(last.user_recent["u0"]) == 5


def test_the_latest_events_are_bounded_by_the_models_recent_events(artifact):
    state = SpeedState(artifact, WEIGHTS)
    n = state.model.recent_events
    updates = state.apply(*batch([ev(i, "u0", f"i{i % 10}", "view") for i in range(n + 7)]))
    assert len(updates.user_recent["u0"]) == n and updates.user_recent["u0"][0][2] == 1_700_000_000_007


def test_up_records_are_the_bytes_of_validated_messages_and_decode_back(artifact):
    from recsys import protocol
    from recsys.protocol import VectorUpdate
    from speed_layer.service import up_messages

    state = SpeedState(artifact, WEIGHTS)
    updates = state.apply(*batch([ev(1, "u0", "i7"), ev(2, "newbie", "brand-new", "view")]))
    records = up_messages(state.model_version, updates, {"u0": 41, "newbie": 42})
    keys = [protocol.parse_key(k) for k, _ in records]
    assert [(k.type, k.kind, k.id) for k in keys] == [
        ("UP", "user", "newbie"),
        ("UP", "user", "u0"),
        ("UP", "item", "brand-new"),
    ]
    for key, value in records:
        message = protocol.decode(value)
        assert isinstance(message, VectorUpdate) and protocol.key_of(message) == key
        assert protocol.encode(VectorUpdate.model_validate(message.model_dump())) == (key, value)
    u0 = protocol.decode(records[1][1])
    assert isinstance(u0, VectorUpdate)
    assert u0.source_offset == 41 and u0.strengths == {"i7": 5.0} and u0.event_types == {"i7": ["purchase"]}
    assert u0.recent == [("i7", "purchase", 1_700_000_000_001)] and u0.event_ts_ms == 1_700_000_000_001
    np.testing.assert_allclose(u0.vector, updates.users["u0"])
    item = protocol.decode(records[2][1])
    assert isinstance(item, VectorUpdate) and item.source_offset is None and item.strengths == {} and item.recent == []


def test_a_new_item_is_folded_in_exactly_from_every_user_who_touched_it(artifact):
    """Against the users' current vectors (folded in this batch), with each user's summed strength."""
    state = SpeedState(artifact, WEIGHTS)
    events = [ev(1, "u4", "brand-new"), ev(2, "u1", "other-new", "view"), ev(3, "u5", "brand-new", "view")]
    events += [ev(4, "newbie", "brand-new", "add_to_cart"), ev(5, "u5", "brand-new", "view"), ev(6, "u3", "i6")]
    updates = state.apply(*batch(events))
    # The model's YᵀY (vectors folded in since enter only the interaction terms), the touched users' rows replaced.
    fold = FoldIn(artifact.user_factors, OBJECTIVE)
    rows = {"u4": 4, "u5": 5, "u1": 1, "u3": 3, "newbie": 6}  # newbie: the first user new since the model
    fold.set_vectors(np.array(list(rows.values())), np.array([updates.users[u] for u in rows]))
    # brand-new: u4 purchase (5), u5 two views (2), newbie add-to-cart (3): rows 4, 5 and 6.
    expected = fold.vector(np.array([4, 5, 6]), np.array([5.0, 2.0, 3.0]))
    np.testing.assert_allclose(updates.items["brand-new"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updates.items["other-new"], fold.vector(np.array([1]), np.array([1.0])), rtol=1e-5)


@pytest.mark.parametrize("reads_events", [True, False])
def test_the_speed_layer_and_serving_see_a_user_as_the_same_history(artifact, monkeypatch, reads_events):
    """One history builder (recsys.data.inputs.UserHistory): the context the speed layer folds a user in from is
    the context serving scores them with once it has the UP, for a model user and for a new one. For a real-time
    side that reads no events (ALS) the speed layer's contexts leave them out, the rest the same."""
    state = SpeedState(artifact, WEIGHTS)
    monkeypatch.setattr(state.realtime, "reads_recent_events", reads_events)
    events = [ev(1, "u0", "i7"), ev(2, "u0", "i0", "view"), ev(3, "u0", "i7", "view"), ev(4, "visitor", "i3")]
    updates = state.apply(*batch(events))
    served = ServingModel(artifact, {}, Settings())
    for user, vector in updates.users.items():
        served.apply(
            VectorUpdate(
                model_version=artifact.manifest.model_version,
                kind="user",
                id=user,
                vector=None if vector is None else vector.tolist(),
                strengths=updates.user_strengths[user],
                event_types=updates.user_event_types[user],
                recent=updates.user_recent[user],
            )
        )
    for user in ("u0", "visitor", "u3"):  # u3: a model user with nothing since the cut-off
        speed, serving = state.context(user), served.context(user)
        assert serving is not None and speed.row == serving.row, user
        for name in ("items", "strengths", "recent", "recent_kinds", "recent_ts_ms"):
            expected = getattr(serving, name) if reads_events or not name.startswith("recent") else []
            np.testing.assert_array_equal(getattr(speed, name), expected, err_msg=f"{user}: {name}")
        assert not reads_events or len(serving.recent) > 0 or user == "u3"  # there were events to compare


def test_als_folds_users_in_from_their_items_alone(artifact):
    """The speed layer's ALS contexts carry no events (`AlsRealtime.reads_recent_events`); the vectors are those
    of the full context, events and all, as the batch model's `update_users` folds it in."""
    state = SpeedState(artifact, WEIGHTS)
    assert not state.realtime.reads_recent_events
    events = [ev(1, "u0", "i7"), ev(2, "u0", "i0", "view"), ev(3, "visitor", "i3"), ev(4, "u5", "i9", "view")]
    updates = state.apply(*batch(events))
    history, recent = UserHistory(artifact.data), state.model.recent_events
    for user in ("u0", "visitor", "u5"):
        lean = state.context(user)
        row = state.user_index.get(user)
        full = history.now(row, state.user_delta[user], state.user_recent[user], state.realtime.n_items, recent)
        assert len(full.recent) > 0 and len(lean.recent) == 0
        np.testing.assert_array_equal(lean.items, full.items)
        np.testing.assert_array_equal(lean.strengths, full.strengths)
        np.testing.assert_array_equal(updates.users[user], state.model.update_users([full])[0])


def test_a_training_users_context_is_their_row_and_cannot_write_into_the_models_data(artifact):
    """`UserHistory.at_cutoff` hands out views of the model's arrays (no copy per request): each is the user's
    row of the model's data in the context's dtype, and writing through one raises instead of changing the model
    every later request scores with."""
    data = artifact.data
    history = UserHistory(data)
    row = 4
    ctx = history.at_cutoff(row, recent=3)
    m, events = data.strengths, data.events
    start, end = m.indptr[row], m.indptr[row + 1]
    np.testing.assert_array_equal(ctx.items, m.indices[start:end])
    np.testing.assert_array_equal(ctx.strengths, m.data[start:end])
    mine = np.flatnonzero(events.user == row)[-3:]
    np.testing.assert_array_equal(ctx.recent, events.item[mine])
    np.testing.assert_array_equal(ctx.recent_ts_ms, events.ts_ms[mine])
    assert (ctx.items.dtype, ctx.strengths.dtype, ctx.recent.dtype) == (np.int64, np.float32, np.int64)
    before = m.data.copy()
    for values in (ctx.items, ctx.strengths, ctx.recent, ctx.recent_ts_ms, ctx.recent_kinds):
        with pytest.raises(ValueError, match="read-only"):
            values[:1] = 0
    np.testing.assert_array_equal(m.data, before)
