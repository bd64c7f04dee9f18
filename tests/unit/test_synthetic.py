"""The synthetic stream: deterministic, exact counts, realistic shape, streamable, and its faults are all caught."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from recsys.contracts.events import Event, validate_event
from recsys.data.synthetic import (
    BATCH_SCHEMA,
    EVENT_TYPES,
    MALFORMED_KINDS,
    SyntheticConfig,
    item_category,
    item_popularity,
    iter_batches,
    iter_messages,
    n_valid_events,
)
from recsys.privacy import is_pseudonym, pseudonymise

KEY = b"k" * 32
SMALL = SyntheticConfig(n_users=500, n_items=1_000, n_events=20_000)


def frame(config: SyntheticConfig, batch_size: int = 100_000) -> pd.DataFrame:
    """The stream as a DataFrame, with each event's item category (small configs only)."""
    df = pa.Table.from_batches(list(iter_batches(config, batch_size, key=KEY))).to_pandas()
    df["category"] = item_category(config)[df["item_id"].str.removeprefix("item-").astype(int)]
    return df


def digest(messages: Iterable[tuple[bytes, bytes]]) -> str:
    h = hashlib.sha256()
    for key, value in messages:
        h.update(key + b"\0" + value + b"\n")
    return h.hexdigest()


# --- config -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [{"malformed_share": 1.0}, {"malformed_share": -0.1}, {"n_items": 5, "n_categories": 10}, {"drift_prob": 2}],
)
def test_config_rejects_out_of_range_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SyntheticConfig(**bad)


# --- determinism and counts --------------------------------------------------------------
def test_same_seed_gives_a_byte_identical_stream_and_another_seed_does_not() -> None:
    config = SMALL.model_copy(update={"n_events": 5_000, "malformed_share": 0.1})
    first, again = digest(iter_messages(config, key=KEY)), digest(iter_messages(config, key=KEY))
    other = digest(iter_messages(config.model_copy(update={"seed": 1}), key=KEY))
    assert first == again != other


def test_a_shorter_stream_is_a_prefix_of_a_longer_one() -> None:
    config = SMALL.model_copy(update={"n_events": 3_000, "malformed_share": 0.1})
    short = list(iter_messages(config, key=KEY))
    longer = list(iter_messages(config.model_copy(update={"n_events": 70_000}), key=KEY))
    assert longer[: len(short)] == short


def test_batches_do_not_depend_on_batch_size() -> None:
    a = pa.Table.from_batches(list(iter_batches(SMALL, 1_000, key=KEY)))
    b = pa.Table.from_batches(list(iter_batches(SMALL, 7_777, key=KEY)))
    assert a.equals(b)


@pytest.mark.parametrize("n_events", [0, 1, 65_535, 65_537, 70_001])
def test_exact_row_and_message_counts(n_events: int) -> None:
    config = SMALL.model_copy(update={"n_events": n_events})
    batches = list(iter_batches(config, 10_000, key=KEY))
    assert sum(b.num_rows for b in batches) == n_events == n_valid_events(config)
    assert all(b.num_rows == 10_000 for b in batches[:-1])
    assert sum(1 for _ in iter_messages(config, key=KEY)) == n_events


def test_arrow_batches_have_the_bronze_schema() -> None:
    df = frame(SMALL, 3_000)
    batch = next(iter_batches(SMALL, 3_000, key=KEY))
    assert batch.schema.equals(BATCH_SCHEMA)
    assert batch.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert df["event_id"].is_unique and df["event_id"].str.startswith("syn-0-").all()
    assert set(df["event_type"]) == set(EVENT_TYPES)
    assert df["user_id"].map(is_pseudonym).all()
    assert df["item_id"].str.fullmatch(r"item-\d+").all()
    assert (df["schema_version"] == 1).all()
    purchases = df["event_type"] == "purchase"
    assert df.loc[purchases, "quantity"].ge(1).all() and df.loc[~purchases, "quantity"].isna().all()
    assert (
        df.loc[df["event_type"] != "view", "price"].gt(0).all()
        and df.loc[df["event_type"] == "view", "price"].isna().all()
    )
    assert str(df["ts"].min()) >= "2026-01-01"


def test_user_ids_are_the_pseudonyms_of_user_numbers() -> None:
    config = SMALL.model_copy(update={"n_users": 3, "n_events": 200})
    users = set(frame(config)["user_id"])
    assert users <= {pseudonymise(f"user-{i}", KEY) for i in range(3)}


def test_timestamps_never_decrease_across_generation_chunks() -> None:
    config = SMALL.model_copy(update={"n_events": 300_000})  # several chunks of sessions
    ts = np.concatenate([b.column("ts").to_numpy() for b in iter_batches(config, 33_333, key=KEY)])
    assert (np.diff(ts.astype(np.int64)) >= 0).all()
    span_s = (ts[-1] - ts[0]) / np.timedelta64(1, "s")
    expected_s = config.n_events / config.events_per_second
    assert 0.9 * expected_s < span_s < 1.1 * expected_s


# --- shape of the data ------------------------------------------------------------------------
def test_item_popularity_is_a_power_law() -> None:
    config = SyntheticConfig(n_events=100_000)
    counts = frame(config)["item_id"].value_counts()
    top = counts.iloc[: config.n_items // 100].sum() / counts.sum()
    assert top > 0.10, f"top 1% of items get only {top:.1%} of events"
    weights = np.sort(item_popularity(config))[::-1]
    assert weights[0] / weights[99] == pytest.approx(100**1.1)


def test_sessions_mostly_stay_in_one_category() -> None:
    df = frame(SMALL)
    modal = df.groupby("session_id")["category"].agg(lambda s: s.value_counts().iloc[0])
    assert modal.sum() / len(df) > 0.9
    sizes = df.groupby("session_id").size()
    assert 3 < sizes.mean() < 10  # about session_mean_events


def test_funnel_is_ordered_within_a_session() -> None:
    df = frame(SMALL)
    counts = df["event_type"].value_counts()
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > 0
    first_seen = df.groupby(["session_id", "item_id", "event_type"])["ts"].min().unstack()
    bought = first_seen.dropna(subset=["purchase"])
    assert (bought["view"] <= bought["add_to_cart"]).all() and (bought["add_to_cart"] <= bought["purchase"]).all()


def share_with_changed_taste(drift_prob: float) -> float:
    """Share of users whose dominant category differs between the first and last third of the stream."""
    config = SyntheticConfig(
        n_users=200, n_items=2_000, n_events=120_000, drift_prob=drift_prob, user_activity_sigma=0.0
    )
    df = frame(config)
    third = len(df) // 3
    early, late = (
        part.groupby("user_id")["category"].agg(lambda s: s.value_counts().index[0])
        for part in (df.iloc[:third], df.iloc[-third:])
    )
    common = early.index.intersection(late.index)
    assert len(common) > 150
    return float((early[common] != late[common]).mean())


def test_interests_drift_only_when_asked() -> None:
    assert share_with_changed_taste(0.05) > 0.5
    assert share_with_changed_taste(0.0) < 0.1


# --- streaming -----------------------------------------------------------------------------------
def test_streaming_a_million_events_keeps_memory_bounded() -> None:
    config = SyntheticConfig(n_events=1_000_000, malformed_share=0.01)
    tracemalloc.start()
    try:
        n_messages = sum(1 for _ in iter_messages(config, key=KEY))
        _, message_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        start_arrow = pa.total_allocated_bytes()
        n_rows, arrow_peak = 0, 0
        for batch in iter_batches(config, key=KEY):
            n_rows += batch.num_rows
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - start_arrow)
        _, batch_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_messages == 1_000_000 and n_rows == n_valid_events(config)
    # Holding them would take ~300 MB of messages or ~120 MB of Arrow data.
    assert message_peak < 100e6 and batch_peak < 100e6, (message_peak, batch_peak)
    assert arrow_peak < 60e6, arrow_peak


# --- messages and malformed events -------------------------------------------------------------
@pytest.fixture(scope="module")
def faulty() -> tuple[SyntheticConfig, list[tuple[bytes, bytes]]]:
    config = SMALL.model_copy(update={"n_events": 4_000, "malformed_share": 0.2})
    return config, list(iter_messages(config, key=KEY))


def test_valid_messages_are_exactly_event_to_wire(faulty: tuple[SyntheticConfig, list]) -> None:
    _, messages = faulty
    valid = [(k, v, r) for k, v in messages if isinstance(r := validate_event(v), Event)]
    assert valid
    for key, value, event in valid:
        assert event.to_wire() == value
        assert key == event.key()


def test_malformed_messages_are_all_rejected_with_every_reason(faulty: tuple[SyntheticConfig, list]) -> None:
    config, messages = faulty
    results = [validate_event(v) for _, v in messages]
    accepted = sum(isinstance(r, Event) for r in results)
    reasons = Counter(r.reason for r in results if not isinstance(r, Event))
    assert accepted == n_valid_events(config)
    assert 0.15 < sum(reasons.values()) / len(messages) < 0.25
    assert set(reasons) == set(MALFORMED_KINDS.values()), reasons
    assert min(reasons.values()) >= 10, reasons
    assert all(isinstance(k, bytes) and is_pseudonym(k.decode()) for k, _ in messages)


def test_batches_hold_exactly_the_valid_messages(faulty: tuple[SyntheticConfig, list]) -> None:
    config, messages = faulty
    accepted = [r for _, v in messages if isinstance(r := validate_event(v), Event)]
    table = pa.Table.from_batches(list(iter_batches(config, 1_000, key=KEY)))
    assert table.num_rows == len(accepted) == n_valid_events(config) < config.n_events
    assert table.column("event_id").to_pylist() == [e.event_id for e in accepted]
    assert table.column("user_id").to_pylist() == [e.user_id for e in accepted]
    assert [t // 1000 for t in table.column("ts").cast(pa.int64()).to_pylist()] == [e.ts_ms for e in accepted]
