"""The feature-engineering job on real Spark and real Delta tables, checked against a hand count."""

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from jobs.clean import clean
from jobs.features import build
from recsys.contracts.tables import BRONZE_SCHEMA, Tables
from recsys.data import catalog
from recsys.io import lake
from recsys.privacy import pseudonymise

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def bronze(rows: list[dict]) -> pa.Table:
    base = {"quantity": None, "price": None, "schema_version": 1, "ingested_at": NOW, "kafka_partition": 0}
    return pa.Table.from_pylist([{**base, "kafka_offset": n, **r} for n, r in enumerate(rows)], schema=BRONZE_SCHEMA)


def test_feature_tables_count_behaviour_and_carry_the_catalogue(spark, settings, tmp_path):
    s = settings.model_copy(update={"state_dir": tmp_path})
    ann, bob = (pseudonymise(u, s.pseudonym_key_bytes()) for u in ("ann", "bob"))
    rows = [
        {"event_id": "1", "user_id": ann, "item_id": "shoe", "event_type": "view", "ts": NOW - timedelta(days=3),
         "session_id": "s1"},
        {"event_id": "2", "user_id": ann, "item_id": "shoe", "event_type": "purchase", "ts": NOW - timedelta(days=3),
         "session_id": "s1", "price": 40.0},
        {"event_id": "3", "user_id": ann, "item_id": "hat", "event_type": "view", "ts": NOW - timedelta(days=1),
         "session_id": "s2"},
        {"event_id": "4", "user_id": bob, "item_id": "shoe", "event_type": "view", "ts": NOW, "session_id": "s3"},
    ]  # fmt: skip
    lake.write(Tables.path(Tables.BRONZE_EVENTS, s), bronze(rows))
    catalog.write(pa.table({"item_id": ["shoe", "hat", "cold"], "title": ["Red Running Shoe", "Wool Hat", "Scarf"],
                            "category": ["shoes", "hats", "hats"], "price": [40.0, 12.5, None],
                            "tags": ["sport|red", "winter", "winter"]}), s)  # fmt: skip
    clean(spark, settings=s)

    out = build(spark, settings=s)
    assert out[Tables.ITEM_FEATURES]["rows"] == 3 and out[Tables.USER_FEATURES]["rows"] == 2

    items = {r["item_id"]: r for r in lake.read(Tables.path(Tables.ITEM_FEATURES, s)).to_pylist()}
    assert (items["shoe"]["n_view"], items["shoe"]["n_purchase"], items["shoe"]["n_users"]) == (2, 1, 2)
    assert items["shoe"]["purchases_per_view"] == pytest.approx(0.5)
    assert items["shoe"]["price_band"] == 5 and items["hat"]["price_band"] == 3  # 32 <= 40 < 64, 8 <= 12.5 < 16
    assert items["shoe"]["title_tokens"] == ["red", "running", "shoe"] and items["shoe"]["tags"] == "sport|red"
    assert items["cold"]["n_view"] == 0 and items["cold"]["category"] == "hats"  # in the catalogue, never touched

    users = {r["user_id"]: r for r in lake.read(Tables.path(Tables.USER_FEATURES, s)).to_pylist()}
    a = users[ann]
    assert (a["n_view"], a["n_purchase"], a["n_items"], a["n_sessions"]) == (2, 1, 2, 2)
    assert a["recency_days"] == pytest.approx(1.0)
    assert dict(a["category_shares"]) == pytest.approx({"shoes": 2 / 3, "hats": 1 / 3})
    assert users[bob]["recency_days"] == pytest.approx(0.0) and users[bob]["price_band"] == 5
    assert lake.commit_metadata(Tables.path(Tables.USER_FEATURES, s), out[Tables.USER_FEATURES]["version"])
