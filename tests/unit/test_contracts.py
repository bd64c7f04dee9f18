"""The event contract: what is accepted, and the reason for everything that is not."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from recsys.contracts.events import DeadLetter, Event, Rejection, validate_event
from recsys.contracts.manifest import ModelManifest
from recsys.models.als import Objective
from recsys.privacy import pseudonymise
from recsys.protocol import UpdateMessage
from recsys.settings import Settings

KEY = b"k" * 32
USER = pseudonymise("alice", KEY)
NOW_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)


def good(**overrides) -> dict:
    event = {"event_id": "e-1", "user_id": USER, "item_id": "i-9", "event_type": "view", "ts": NOW_MS}
    event.update(overrides)
    return event


def check(raw, **kw):
    return validate_event(
        raw if isinstance(raw, (bytes, str)) else json.dumps(raw),
        Settings(),
        now=datetime(2026, 6, 2, tzinfo=UTC),
        **kw,
    )


def test_valid_event_round_trips_through_the_wire_format():
    event = check(good(session_id="s1", quantity=2, price=9.5))
    assert isinstance(event, Event)
    assert check(event.to_wire()) == event
    assert json.loads(event.to_wire())["ts"] == NOW_MS
    assert event.key() == USER.encode()


def test_iso_and_epoch_ms_timestamps_mean_the_same_instant():
    iso = check(good(ts="2026-06-01T02:00:00+02:00"))
    naive = check(good(ts="2026-06-01T00:00:00"))
    assert isinstance(iso, Event) and isinstance(naive, Event)
    assert iso.ts_ms == naive.ts_ms == NOW_MS


def test_epoch_ms_keeps_millisecond_precision():
    assert check(good(ts=1614827167001)).ts_ms == 1614827167001


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (good(event_id=None), "invalid_field"),
        ({k: v for k, v in good().items() if k != "item_id"}, "invalid_field"),
        (good(event_id=17), "invalid_field"),
        (good(item_id=""), "invalid_field"),
        (good(item_id="a\x00b"), "invalid_field"),
        (good(item_id="x" * 500), "invalid_field"),
        (good(ts=True), "invalid_field"),
        (good(ts="yesterday"), "invalid_field"),
        (good(ts=10**20), "invalid_field"),
        (good(quantity=0), "invalid_field"),
        (good(quantity="2"), "invalid_field"),
        (good(price=-1), "invalid_field"),
        (good(schema_version=2), "invalid_field"),
        (good(colour="red"), "invalid_field"),
        (good(event_type="click"), "unknown_event_type"),
        (good(ts=NOW_MS + 10 * 86_400_000), "ts_out_of_range"),
        (good(ts=881250949), "ts_out_of_range"),  # seconds mistaken for ms land in 1970
        (good(user_id="alice"), "not_pseudonymised"),
        (good(item_id="x" * 20_000), "too_large"),
    ],
)
def test_each_bad_event_is_rejected_with_its_reason(raw, reason):
    result = check(raw)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.detail


def test_nan_price_is_rejected():
    raw = json.dumps(good()).replace("}", ', "price": NaN}')
    assert check(raw).reason == "invalid_field"


def test_producers_may_validate_before_pseudonymising():
    assert isinstance(check(good(user_id="alice"), require_pseudonym=False), Event)


def test_event_types_come_from_settings():
    s = Settings(event_weights={"view": 1, "like": 2})
    assert isinstance(
        validate_event(json.dumps(good(event_type="like")), s, now=datetime(2026, 6, 2, tzinfo=UTC)), Event
    )
    assert validate_event(json.dumps(good(event_type="purchase")), s).reason == "unknown_event_type"


def test_future_skew_is_configurable():
    s = Settings(max_future_skew_s=0)
    future = good(ts=int((datetime.now(UTC) + timedelta(minutes=5)).timestamp() * 1000))
    assert validate_event(json.dumps(future), s).reason == "ts_out_of_range"


def test_dead_letter_carries_reason_source_and_truncated_payload():
    raw = b"{" + b"x" * 10_000
    letter = DeadLetter.of(raw, check(raw), source_topic="events", source_partition=2, source_offset=41)
    decoded = json.loads(letter.to_wire())
    assert decoded["reason"] == "invalid_json"
    assert decoded["source_partition"] == 2 and decoded["source_offset"] == 41
    assert len(decoded["payload"]) == 4096


def test_update_messages_are_told_apart_by_type():
    from pydantic import TypeAdapter

    adapter = TypeAdapter(UpdateMessage)
    up = adapter.validate_json('{"type":"UP","model_version":"v1","kind":"user","id":"u","vector":[0.5,1]}')
    assert up.type == "UP" and up.vector == [0.5, 1.0]
    assert adapter.validate_json('{"type":"FORGET","user_id":"u"}').type == "FORGET"
    with pytest.raises(ValueError):
        adapter.validate_json('{"type":"NOPE"}')


def test_manifest_records_the_objective():
    objective = Objective(confidence="one_plus_alpha_r", reg_scaling="count", alpha=10, reg=0.1)
    manifest = ModelManifest(
        model_version="v1",
        created_at_ms=1,
        engine="spark_als",
        params={"rank": 8, "iterations": 10},
        details={"objective": objective.model_dump()},
        n_users=3,
        n_items=4,
        kafka_offsets={0: 12},
    )
    again = ModelManifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest and Objective.model_validate(again.details["objective"]) == objective
    with pytest.raises(ValueError):
        Objective(confidence="alpha_r", reg_scaling="sometimes", alpha=1, reg=0.1)


@pytest.mark.reliability
def test_a_forget_covers_models_whose_data_ends_before_the_marker():
    from recsys.protocol import ForgetMessage

    forget = ForgetMessage(user_id="u_" + "0" * 32, partition=2, offset=100)
    assert forget.covers({2: 100}) and forget.covers({2: 7}) and forget.covers({0: 500})  # no data past the marker
    assert not forget.covers({2: 101})  # built after the marker: cleaned of the user's earlier events
    assert ForgetMessage(user_id="u_x").covers({2: 10**9})  # no marker: everything


@pytest.mark.reliability
def test_erasure_never_splices_anything_but_a_pseudonym_into_sql():
    from recsys.erasure import before_marker_predicate
    from recsys.protocol import ForgetMessage

    ok = before_marker_predicate(ForgetMessage(user_id="u_" + "a" * 32, partition=1, offset=5))
    assert "kafka_partition = 1 AND kafka_offset < 5" in ok
    with pytest.raises(ValueError):
        before_marker_predicate(ForgetMessage(user_id="x' OR '1'='1", partition=1, offset=5))


def test_a_batch_is_validated_with_the_same_results_as_one_at_a_time():
    from recsys.contracts.events import validate_events

    now = datetime(2026, 6, 2, tzinfo=UTC)
    raws = [json.dumps(good(item_id=f"i-{n}")).encode() for n in range(3)]
    raws += [json.dumps(good(session_id="s", quantity=3, price="9.5", schema_version=1.0)).encode()]
    raws += [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps(good(price=float("nan"))).encode(),
        json.dumps(good(event_type="click")).encode(),
        json.dumps(good(user_id="alice")).encode(),
        json.dumps(good(item_id="x" * 500)).encode(),
        json.dumps(good(item_id="x" * 20_000)).encode(),
        json.dumps(good(ts=NOW_MS + 10 * 86_400_000)).encode(),
        json.dumps(good(ts=10**20)).encode(),
        "\ufeff".encode() + json.dumps(good()).encode(),
    ]
    one_at_a_time = [validate_event(raw, Settings(), now=now) for raw in raws]
    assert validate_events(raws, Settings(), now=now) == one_at_a_time
    assert sum(isinstance(r, Event) for r in one_at_a_time) >= 4  # both paths are exercised
