"""The lake's tables: their names, where they live, and their Arrow schemas."""

from __future__ import annotations

import pyarrow as pa

from recsys.settings import Settings, get_settings


# --- tables ---------------------------------------------------------------------
class Tables:
    BRONZE_EVENTS = "bronze_events"  # every accepted event, with its Kafka partition and offset
    SILVER_INTERACTIONS = "silver_interactions"  # validated, deduplicated, bots dropped
    MODEL_REGISTRY = "model_registry"  # one row per trained model version
    FORGET_REQUESTS = "forget_requests"  # erasure requests and their completion (append-only)
    CATALOG = "catalog"  # item metadata for display, business filters and content models
    USER_TOP_N = "user_top_n"  # per user: the published model's top N items, replaced nightly (jobs/top_n)
    IMPRESSIONS = "impressions"  # one row per item of each answer shown (serving -> `impressions` -> archiver)

    @staticmethod
    def path(name: str, settings: Settings | None = None) -> str:
        """Where a table lives: a local path, or a URI (`hdfs://...`) when the lake is on HDFS."""
        return f"{(settings or get_settings()).lake_root}/{name}"

    @staticmethod
    def archiver_txn_id(topic: str, partition: int) -> str:
        """The Delta transaction id under which bronze records the next offset archived from a partition."""
        return f"archiver:{topic}:{partition}"


_TS = pa.timestamp("us", tz="UTC")

# The event's own fields, as columns (the wire format's `ts` becomes a UTC timestamp).
EVENT_COLUMNS = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("ts", _TS),
        ("session_id", pa.string()),
        ("quantity", pa.int32()),
        ("price", pa.float64()),
        ("schema_version", pa.int32()),
    ]
)

# Bronze: every accepted event as it arrived, and where from (backfilled rows have partition -1). `request_id`
# (the answer a click or purchase came from) came later: appended last, so older tables merge it in.
BRONZE_SCHEMA = pa.schema(
    [
        *EVENT_COLUMNS,
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("ingested_at", _TS),
        ("request_id", pa.string()),
    ]
)

# Impressions: one row per (answer, position), so a click joins its list on (request_id, item_id). Written by the
# archiver exactly once, like bronze (where from: the `impressions` topic's partition and offset).
IMPRESSIONS_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("position", pa.int32()),
        ("model_version", pa.string()),
        ("variant", pa.string()),
        ("surface", pa.string()),
        ("shown_at", _TS),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("ingested_at", _TS),
    ]
)

# Silver: what training reads. One row per distinct event, user ids pseudonymised, bots dropped.
SILVER_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("weight", pa.float64()),
        ("ts", _TS),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("session_id", pa.string()),
        ("quantity", pa.int32()),
        ("price", pa.float64()),
    ]
)

# The catalogue: one row per item, overwritten whole by whoever owns the product data.
CATALOG_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("price", pa.float64()),  # null where the shop gives none
        ("tags", pa.string()),  # '|'-separated attributes beyond the category (MovieLens: every genre)
    ]
)

# The model registry: append-only; the last row of a version is its current status.
REGISTRY_SCHEMA = pa.schema(
    [
        ("model_version", pa.string()),
        ("status", pa.string()),
        ("engine", pa.string()),
        ("recorded_at", _TS),
        ("silver_table_version", pa.int64()),
        ("path", pa.string()),
        ("metrics_json", pa.string()),
        ("reason", pa.string()),
    ]
)


# of the user from before the request. Keyed by where the request's marker sits in `events`.
FORGET_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("status", pa.string()),
        ("recorded_at", _TS),
    ]
)

# The nightly top N per user (jobs/top_n.py, docs/top_n.md): one row per (user, rank), replaced whole each night.
TOP_N_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float64()),
        ("model_version", pa.string()),
        ("generated_at", _TS),
    ]
)
TOP_N_SPARK_SCHEMA = (
    "user_id string, rank int, item_id string, score double, model_version string, generated_at timestamp"
)
