"""Fuzzing with hypothesis: thousands of malformed events through the real broker and through `POST /events`.

Every malformed message ends in the DLQ (broker) or gets a 4xx with a reason (HTTP); nothing crashes;
the valid events mixed in are stored, each exactly once.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from published_models import produce, publish_model
from serving_stack import TOKEN, call, get, start_stack, stop_stack
from speed_checks import run_until_idle

from jobs.archiver import Archiver
from recsys.contracts.events import CONTROL_HEADER, FORGET_CONTROL, DeadLetter
from recsys.contracts.tables import Tables
from recsys.io import lake
from recsys.io.kafka import producer, read_to_end
from recsys.privacy import pseudonymise
from recsys.protocol import Topics

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
# Examples are fixed (derandomize) so CI is repeatable; no shrinking: each step re-sends over the network.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=40)
now_ms = int(datetime.now(UTC).timestamp() * 1000)


@st.composite
def valid_events(draw, raw_users: bool = False) -> dict:
    user = draw(ids) if raw_users else pseudonymise(draw(ids), b"fuzz-key")
    event = {
        "event_id": draw(ids),
        "user_id": user,
        "item_id": draw(ids),
        "event_type": draw(st.sampled_from(["view", "add_to_cart", "purchase"])),
        "ts": draw(st.integers(now_ms - 5 * 365 * 86_400_000, now_ms)),
    }
    if draw(st.booleans()):
        event["quantity"] = draw(st.integers(1, 100))
        event["price"] = draw(st.floats(0, 1e6))
    return event


FIELDS = {"event_id", "user_id", "item_id", "event_type", "ts", "session_id", "quantity", "price", "schema_version"}


def _mutations(event: dict, over_http: bool) -> st.SearchStrategy[bytes]:
    """Ways to break one valid event, each something a broken client really sends.

    Over HTTP the server fills in a missing `event_id` or `ts` and pseudonymises raw user ids,
    so there those are not faults.
    """
    wrong_value = st.one_of(
        st.integers(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        *([] if over_http else [st.none()]),
    )
    required = ["user_id", "item_id", "event_type"] + ([] if over_http else ["event_id", "ts"])
    far_future_or_past = [st.integers(now_ms + 2 * 86_400_000, 10**13), st.integers(-(10**12), 0), st.just(10**30)]
    not_a_time = st.sampled_from(["2200-01-01T00:00:00", "1900-01-01", "yesterday", "", "NaN"])
    bad_ts = st.one_of(*far_future_or_past, not_a_time, st.floats(allow_nan=True))
    unknown_keys = st.text(min_size=1, max_size=8).filter(lambda k: k not in FIELDS)
    extra_fields = st.dictionaries(unknown_keys, st.integers(), min_size=1, max_size=2)

    def with_(**changes) -> bytes:
        return json.dumps({**event, **changes}).encode()

    return st.one_of(
        st.sampled_from(required).map(lambda k: json.dumps({f: v for f, v in event.items() if f != k}).encode()),
        st.tuples(st.sampled_from(["event_id", "user_id", "item_id", "event_type"]), wrong_value).map(
            lambda kv: with_(**{kv[0]: kv[1]})
        ),
        st.text(min_size=1, max_size=20)
        .filter(lambda t: t not in ("view", "add_to_cart", "purchase"))
        .map(lambda t: with_(event_type=t)),
        st.integers(20_000, 40_000).map(lambda n: with_(item_id="x" * n)),  # huge: over the 16 KiB limit
        st.integers(129, 2_000).map(lambda n: with_(event_id="e" * n)),  # longer than the id limit
        st.sampled_from(["\x00", "\n", "\x1b[31m", "\x7f", "\r\n"]).map(lambda c: with_(item_id=f"a{c}b")),
        bad_ts.map(lambda ts: with_(ts=ts)),
        st.sampled_from([{"quantity": 0}, {"quantity": -3}, {"quantity": 2.5}, {"price": -1}]).map(
            lambda c: with_(**c)
        ),
        extra_fields.map(lambda extra: with_(**extra)),
        *([] if over_http else [ids.map(lambda raw: with_(user_id=raw))]),  # a producer that forgot to pseudonymise
    )


garbage = st.one_of(
    st.binary(max_size=200).filter(lambda b: not _is_json_object(b)),  # bad JSON, invalid UTF-8, empty
    st.sampled_from([b"[]", b"42", b'"event"', b"null", b"true", b'{"event_id": ', b"{}{}"]),
)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def malformed(raw_users: bool = False) -> st.SearchStrategy[bytes]:
    return st.one_of(valid_events(raw_users).flatmap(lambda e: _mutations(e, over_http=raw_users)), garbage)


def messages(raw_users: bool = False) -> st.SearchStrategy[list[tuple[bool, bytes]]]:
    """A mix of (True, valid event) and (False, malformed message), malformed ones the majority."""
    valid = valid_events(raw_users).map(lambda e: (True, json.dumps(e).encode()))
    bad = malformed(raw_users).map(lambda raw: (False, raw))
    return st.lists(st.one_of(bad, bad, valid), min_size=20, max_size=80)


# --- through the broker: the archiver and the speed layer ----------------------------------------------------
def test_malformed_events_through_the_broker_end_in_the_dlq_and_valid_ones_in_bronze(isolated_stack):
    s = isolated_stack
    # The speed layer needs a model to fold into.
    publish_model(s, produce(s, seed=1, n=1_000), "m20260101T000000000000")
    sent: dict[tuple[int, int], bool] = {}  # (partition, offset) -> valid?
    raws: dict[tuple[int, int], bytes] = {}
    prod = producer(s)

    @FUZZ
    @given(batch=messages(), forged_markers=st.lists(st.binary(max_size=40), max_size=2))
    def send(batch: list[tuple[bool, bytes]], forged_markers: list[bytes]) -> None:
        futures = [(ok, raw, prod.send(Topics.EVENTS, key=b"fuzz", value=raw)) for ok, raw in batch]
        # Control records that are not well-formed FORGET markers are malformed messages too.
        control = [(CONTROL_HEADER, FORGET_CONTROL)]
        futures += [
            (False, raw, prod.send(Topics.EVENTS, key=b"f", value=raw, headers=control)) for raw in forged_markers
        ]
        prod.flush()
        for ok, raw, future in futures:
            md = future.get(timeout=30)
            sent[(md.partition, md.offset)] = ok
            raws[(md.partition, md.offset)] = raw

    send()
    prod.close()
    n_valid, n_bad = sum(sent.values()), sum(not ok for ok in sent.values())
    assert n_bad >= 2_000 and n_valid >= 300  # enough of each (hypothesis decides the exact mix)

    archiver = Archiver(s)
    archiver.run(until_caught_up=True)
    archiver.close()
    bronze = lake.read(Tables.path(Tables.BRONZE_EVENTS, s))
    archived = Counter(zip(bronze["kafka_partition"].to_pylist(), bronze["kafka_offset"].to_pylist(), strict=True))
    letters = [DeadLetter.model_validate_json(r.value) for rs in read_to_end(Topics.DLQ, s) for r in rs]
    dead = Counter((d.source_partition, d.source_offset) for d in letters)
    assert all(n == 1 for n in archived.values()) and all(n == 1 for n in dead.values()), "stored twice"
    lost = {pos for pos, ok in sent.items() if ok} - set(archived)
    assert not lost, [raws[p] for p in sorted(lost)[:5]]  # every valid event in bronze ...
    not_dead = {pos for pos, ok in sent.items() if not ok} - set(dead)
    assert not not_dead, [
        (p, p in archived, raws[p][:300]) for p in sorted(not_dead)[:5]
    ]  # ... every bad one in the DLQ
    assert not set(archived) & set(dead)
    assert all(d.reason and d.detail for d in letters)
    reasons = {
        "invalid_json",
        "invalid_field",
        "too_large",
        "ts_out_of_range",
        "unknown_event_type",
        "not_an_object",
        "invalid_control",
        "not_pseudonymised",
    }
    assert {d.reason for d in letters} == reasons

    # The speed layer reads the same topic: it skips what it cannot use and folds in the rest.
    layer = run_until_idle(s, "speed-fuzz")
    assert layer.state is not None and layer.state.user_delta


# --- through HTTP: POST /events -----------------------------------------------------------------------------
@pytest.fixture
def stack(tmp_path):
    stack = start_stack(tmp_path, n_events=1_000)
    yield stack
    stop_stack(stack)


def test_malformed_posts_get_a_4xx_with_a_reason_and_valid_ones_are_stored_once(stack):
    accepted: dict[tuple[int, int], str] = {}  # where Kafka put each accepted event -> its event id
    refused = Counter()

    @FUZZ
    @given(batch=messages(raw_users=True), oversized=st.booleans())
    def post(batch: list[tuple[bool, bytes]], oversized: bool) -> None:
        if oversized:  # bigger than the server's body limit: refused before it is read whole
            batch = [*batch, (False, json.dumps({"item_id": "x" * 100_000}).encode())]
        for ok, raw in batch:
            status, body = call("POST", f"{stack.url}/events", raw=raw, token=TOKEN)
            if ok:
                assert status == 202, (raw, body)
                accepted[(body["partition"], body["offset"])] = body["event_id"]
            else:
                assert 400 <= status < 500, (raw, status, body)
                assert isinstance(body, dict) and body["detail"], (raw, body)
                refused[status] += 1

    post()
    assert sum(refused.values()) >= 2_000 and len(accepted) >= 300 and refused[413] > 0
    assert get(stack, "/health")[0] == 200 and stack.procs["serving"].poll() is None
    stored = {
        (r.partition, r.offset): json.loads(r.value)["event_id"]
        for rs in read_to_end(Topics.EVENTS, stack.s)
        for r in rs
    }
    assert all(stored[pos] == event_id for pos, event_id in accepted.items())  # each accepted event is in the log
    assert len(stored) == len(stack.events) + len(accepted)  # ... once, and nothing refused got in
