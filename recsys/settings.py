"""The one settings module: every knob of every layer, read from `RECSYS_*` variables.

Each field's environment variable is its name upper-cased with the `RECSYS_`
prefix (for example `kafka_bootstrap` <- `RECSYS_KAFKA_BOOTSTRAP`). Dict and
list fields take JSON (`RECSYS_EVENT_WEIGHTS='{"view": 1, "like": 2}'`).
The configuration table in docs/configuration.md is generated from this class
(`python -m recsys.settings --write-docs`), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys import registry

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "RECSYS_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # --- where state lives -------------------------------------------------
    state_dir: Path = Field(
        PROJECT_ROOT / ".state",
        description="Root of all local state (broker data, Delta tables, models, keys). Git-ignored.",
    )

    # --- event log -----------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers. Point at a real Kafka cluster and nothing else changes. The local "
        "Kafka (`infra/broker.py`) listens on exactly these addresses (127.0.0.1 only), one node per address.",
    )
    events_partitions: int = Field(4, ge=1, description="Partitions of the `events` topic when we create it.")
    impressions_partitions: int = Field(
        4, ge=1, description="Partitions of the `impressions` topic (what serving showed) when we create it."
    )
    kafka_controller_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="KRaft controller port of the local Kafka (`infra/broker.py`) on 127.0.0.1; "
        "node i of a local cluster uses this + i. 0 = the ports right after the client ports (9093 for the default "
        "bootstrap). The local broker's client ports are the bootstrap's: there is no separate setting for them.",
    )
    kafka_replication_factor: int = Field(
        1, ge=1, description="Replication factor of the topics we create (3 on the local three-broker cluster)."
    )
    updates_segment_ms: int = Field(
        3_600_000,
        ge=1_000,
        description="Segment roll time of the compacted `model-updates` topic: compaction "
        "only cleans closed segments, so this bounds how long superseded UPs stay readable.",
    )

    # --- distributed storage (optional) ---------------------------------------
    lake_uri: str = Field(
        "",
        description="Where the Delta tables live, as a URI: empty = `<state_dir>/lake` on the local disk; "
        "`hdfs://127.0.0.1:8020/recsys/lake` puts them on HDFS (`make hdfs`), read and written by delta-spark in "
        "the Spark jobs and by delta-rs in the archiver and serving.",
    )
    models_uri: str = Field(
        "",
        description="Where published and candidate models live, as a URI: empty = `<state_dir>/models` on the local "
        "disk; `hdfs://127.0.0.1:8020/recsys/models` puts them on HDFS, where a version appears by one atomic "
        "rename and MODEL messages carry its URI. The speed layer and serving copy a model from there to a "
        "temporary local folder, load it and delete the copy.",
    )
    hdfs_replication: int = Field(
        1,
        ge=1,
        description="Block replication Spark asks for when it writes to HDFS (`spark.hadoop.dfs.replication`): 1 for "
        "the local single-DataNode HDFS; 3 on a real cluster.",
    )
    hdfs_port: int = Field(
        8020,
        ge=1,
        le=65534,
        description="NameNode RPC port of the local HDFS (`infra/hdfs.py`, `make hdfs`) on 127.0.0.1: its URLs are "
        "`hdfs://127.0.0.1:<port>/...`; its web UI and JMX are on the next port.",
    )

    # --- compute -------------------------------------------------------------
    spark_master: str = Field("local[*]", description="Spark master URL (ignored under spark-submit, which sets it).")
    spark_driver_host: str = Field(
        "127.0.0.1",
        description="Address the Spark driver binds to and advertises. Keep 127.0.0.1 for local[*] and a "
        "cluster on this machine; set the driver machine's cluster address when executors run elsewhere.",
    )
    spark_driver_memory: str = Field("4g", description="Driver memory for local Spark sessions.")
    spark_shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions; small on one machine.")
    spark_count_min_events: int = Field(
        20_000_000,
        ge=0,
        description="From this many training events, item-KNN's co-occurrences and the transitions are counted by "
        "Spark tasks (recsys/io/spark_counts.py) instead of on the driver (0: always, when a session is given).",
    )
    spark_ui: bool = Field(False, description="Start the Spark web UI (bound to 127.0.0.1).")
    spark_cluster_port: int = Field(
        7077, description="Master port of the local Spark standalone cluster (`make spark-cluster`)."
    )
    spark_cluster_webui_port: int = Field(
        8090, description="Master web UI port of the local Spark cluster (8080 is Airflow's)."
    )
    spark_cluster_workers: int = Field(1, ge=1, description="Workers of the local Spark cluster.")
    spark_worker_memory: str = Field("2g", description="Memory each local Spark worker offers to executors.")

    # --- events and their meaning -------------------------------------------
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0},
        description="Event types and the strength each adds to a (user, item) pair. Keys are the accepted types.",
    )
    max_event_bytes: int = Field(16_384, ge=256, description="Events larger than this go to the DLQ.")
    max_id_length: int = Field(128, ge=8, description="Longest accepted user, item, event or session id.")
    max_future_skew_s: int = Field(
        86_400, ge=0, description="Events timestamped further than this in the future are rejected."
    )
    min_event_year: int = Field(1995, description="Events timestamped before this year are rejected.")

    # --- batch layer -------------------------------------------------------------
    archiver_group: str = Field("archiver", description="Consumer group of the archiver (events -> bronze).")
    archiver_instance_id: str = Field(
        "archiver-0", description="Static group membership id of this archiver instance (unique per instance)."
    )
    archiver_batch_max: int = Field(20_000, ge=1, description="Most events the archiver writes in one Delta commit.")
    archiver_batch_ms: int = Field(1_000, ge=10, description="Longest the archiver waits to fill a batch.")
    bot_max_events_per_minute: int = Field(
        600, ge=1, description="The clean job drops users who ever exceed this many events in one minute."
    )
    decay_half_life_days: float = Field(
        0.0, ge=0, description="Half-life of the time decay of event strengths; 0 turns decay off."
    )
    model: str = Field(
        "spark_als", description="The recommender `train` fits when none is named (a name in recsys.registry)."
    )
    candidates: list[str] = Field(
        ["spark_als", "hybrid"],
        description="Recommenders the nightly DAG trains and evaluates; the gate publishes the best of them "
        "(on MovieLens-100K: the hybrid, whose lists react to each click).",
    )
    als_rank: int = Field(64, ge=1, description="Number of latent factors.")
    als_iterations: int = Field(15, ge=1, description="ALS iterations.")
    als_reg: float | None = Field(
        None, ge=0, description="Regularisation lambda; unset = the engine's tuned default (Spark scales it by |I(u)|)."
    )
    als_alpha: float | None = Field(None, gt=0, description="Confidence scale alpha; unset = the engine's default.")
    als_seed: int = Field(42, description="Random seed for the factor initialisation.")
    eval_test_share: float = Field(0.2, gt=0, lt=1, description="Per user, the latest share of events held out.")
    eval_k: int = Field(10, ge=1, description="Cut-off k of the ranking metrics.")
    eval_max_users: int = Field(20_000, ge=1, description="Evaluate on at most this many (seeded, sampled) users.")
    gate_min_lift: float = Field(0.10, description="Publish only if NDCG@k >= (1 + this) x the popularity baseline's.")
    gate_max_regression: float = Field(
        0.05, ge=0, description="...and NDCG@k >= (1 - this) x the current published model's."
    )
    top_n_k: int = Field(
        50, ge=1, description="Items per user in the nightly `user_top_n` table (jobs/top_n.py, after publish)."
    )
    airflow_port: int = Field(8080, description="Port of the local Airflow UI / API server (bound to 127.0.0.1).")
    vacuum_retention_hours: int = Field(168, ge=0, description="Files older than this are vacuumed after compaction.")
    lake_lock_timeout_s: float = Field(
        1800.0,
        ge=0,
        description="Longest a writer waits for another writer of the same Delta table to finish "
        "(one writer per table at a time; then it fails, naming the holder).",
    )

    # --- speed layer -------------------------------------------------------------
    speed_group: str = Field("speed-layer", description="Consumer group of the speed layer instances.")
    speed_instance_id: str = Field("speed-0", description="Static member id of this speed-layer instance.")
    # Only a backlog fills a batch (at 1,000 events/s one holds ~20): there, the larger the batch, the fewer UPs per
    # event, since a user's events of one batch make one UP (synthetic stream: 0.33 per event at 5,000, 0.17 at
    # 20,000), and each UP costs its context, solve, encoding and send (docs/speed.md).
    speed_batch_max: int = Field(20_000, ge=1, description="Most events folded in per micro-batch.")
    speed_batch_ms: int = Field(20, ge=1, description="Longest a micro-batch waits for events.")
    speed_metrics_port: int = Field(9102, ge=0, description="Prometheus metrics port on 127.0.0.1 (0 = off).")

    # --- serving layer -----------------------------------------------------------
    serving_host: str = Field("127.0.0.1", description="Interface the HTTP service binds to (loopback by default).")
    serving_port: int = Field(8000, ge=0, le=65535, description="Port of the HTTP service.")
    serving_workers: int = Field(
        1, ge=1, description="Worker processes of the HTTP service, each a full replica sharing the port."
    )
    serving_default_k: int = Field(10, ge=1, description="Recommendations returned when `k` is not given.")
    serving_max_k: int = Field(100, ge=1, description="Largest `k` a request may ask for.")
    serving_max_batch_users: int = Field(1_000, ge=1, description="Most users one `POST /recommend/batch` may ask for.")
    serving_exclude_event_types: list[str] = Field(
        ["purchase"],
        description="`/recommend?exclude_seen=true` (the default) leaves out items the user had these events on.",
    )
    serving_recent_exclude_types: list[str] = Field(
        ["view", "add_to_cart"],
        description="Items the user had these events on within `RECSYS_SERVING_RECENT_EXCLUDE_S` before their latest "
        "event are not recommended again (the shopper just saw them).",
    )
    serving_recent_exclude_s: int = Field(
        3600, ge=0, description="The cool-down of recently viewed or carted items, in seconds; 0 turns it off."
    )
    serving_index: Literal["exact", "approximate", "full_sort"] = Field(
        "exact",
        description="Top-k retrieval: `exact` (a norm-bounded block scan for ALS, a vectorised scan + partial "
        "sort otherwise), `approximate` (faiss IVF index, "
        "for large catalogues; recall measured by `make bench`), `full_sort` (the naive baseline, for benchmarks).",
    )
    serving_fast_path: bool = Field(
        True,
        description="Answer plain `GET /recommend` at the ASGI level (`serving/fast.py`), skipping FastAPI's "
        "route machinery; false sends every request through the route (the same answers; `make bench`'s serving "
        "section measures both).",
    )
    serving_ann_lists: int = Field(0, ge=0, description="IVF cells of the approximate index; 0 = 4 x sqrt(items).")
    serving_ann_probes: int = Field(64, ge=1, description="IVF cells searched per query (recall vs speed).")
    serving_max_body_bytes: int = Field(
        65_536, ge=1_024, description="Larger request bodies are refused with 413 before they are read whole."
    )
    ab_challenger_version: str = Field(
        "",
        description="A/B test: the challenger model version (published with `jobs.publish --as-challenger`); empty = "
        "no test, every shopper gets the champion. The split's hash is salted with it, so a new test reshuffles "
        "the shoppers. Set it for serving and for the speed layer, which then folds events into a challenger with "
        "a real-time state too (docs/ab-tests.md).",
    )
    ab_challenger_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A/B test: the share of shoppers (by a stable hash of their pseudonym) answered by the challenger.",
    )
    serving_impressions_buffer: int = Field(
        10_000,
        ge=1,
        description="Answers whose impressions wait to be produced; beyond this (Kafka away) they are dropped and "
        "counted (`serving_impressions_lost_total`), never holding an answer back.",
    )
    attribution_click_type: str = Field(
        "view", description="The event type that counts as a click on a recommended item (CTR's numerator)."
    )
    attribution_conversion_type: str = Field(
        "purchase", description="The event type that counts as a conversion of a recommended item."
    )
    ops_attribution_hours: int = Field(
        48, ge=1, description="`/ops/attribution` (CTR, conversion) covers the answers of this many latest hours."
    )
    ops_attribution_cache_s: float = Field(
        30.0, ge=0, description="`/ops/attribution` is recomputed from the lake at most this often."
    )
    serving_write_token: SecretStr | None = Field(
        None,
        description="Bearer token for write and admin endpoints (`POST /events`, `POST /admin/forget`). "
        "If unset, a random one is created once "
        "in `<state_dir>/secrets/serving.token` (mode 600).",
    )

    # --- privacy and security -------------------------------------------------
    pseudonym_key: SecretStr | None = Field(
        None,
        description="HMAC key for user-id pseudonyms. If unset, a random key is created once in "
        "`<state_dir>/secrets/pseudonym.key` (mode 600). Never commit it.",
    )

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, v: Path) -> Path:
        # Resolved once, here: a relative RECSYS_STATE_DIR (as `make demo` prints it) would otherwise mean different
        # folders to processes started elsewhere, and Airflow refuses a relative SQLite path outright.
        return Path(v).expanduser().resolve()

    @field_validator("lake_uri", "models_uri")
    @classmethod
    def _storage_uri_scheme(cls, v: str, info: ValidationInfo) -> str:
        if v and not (v.startswith("hdfs://") or v.startswith("file:///")):
            raise ValueError(
                f"{info.field_name} must be empty, hdfs://<host>:<port>/<path> or file:///<path>, got {v!r}"
            )
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in registry.names():
            raise ValueError(f"unknown recommender {v!r}; choose one of {', '.join(registry.names())}")
        return v

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, v: list[str]) -> list[str]:
        for name in v:
            cls._known_model(name)
        if not v:
            raise ValueError("name at least one candidate recommender")
        return v

    @field_validator("event_weights")
    @classmethod
    def _weights_positive(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("event_weights must name at least one event type")
        bad = {k: w for k, w in v.items() if not (w > 0)}
        if bad:
            raise ValueError(f"event weights must be > 0, got {bad}")
        return v

    # --- derived paths (one place says where each thing lives) ----------------
    @property
    def broker_dir(self) -> Path:
        return self.state_dir / "broker"

    @property
    def hdfs_dir(self) -> Path:
        return self.state_dir / "hdfs"

    @property
    def lake_root(self) -> str:
        """The lake's root: a local folder's path, or a URI (`hdfs://...`) when `lake_uri` says so."""
        return _storage_root(self.lake_uri, self.state_dir / "lake")

    @property
    def models_root(self) -> str:
        """The model store's root: a local folder's path, or a URI (`hdfs://...`) when `models_uri` says so."""
        return _storage_root(self.models_uri, self.models_dir)

    @property
    def models_dir(self) -> Path:
        """The local model folder (the store itself unless `models_uri` is a remote URI)."""
        return self.state_dir / "models"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    def pseudonym_key_bytes(self) -> bytes:
        """The HMAC key: from the environment, else from (or newly into) the state folder."""
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        return _key_file(self.secrets_dir / "pseudonym.key")

    def as_env(self) -> dict[str, str]:
        """These settings as RECSYS_* environment variables, for starting another process with the same view."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, dict | list | bool):
                value = json.dumps(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env

    def write_token(self) -> str:
        """The bearer token of write endpoints: from the environment, else from (or newly into) the state folder."""
        if self.serving_write_token is not None:
            return self.serving_write_token.get_secret_value()
        return _key_file(self.secrets_dir / "serving.token").decode()


def _storage_root(uri: str, local_default: Path) -> str:
    if uri.startswith("file://"):  # a local folder, which keeps local locks and renames
        return uri.removeprefix("file://").rstrip("/")
    return uri.rstrip("/") or str(local_default)


def _key_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting together must not each write their own key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"key file {path} holds fewer than 32 characters; delete it to regenerate")
    return key.encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings. Tests that change the environment call `get_settings.cache_clear()`."""
    return Settings()


def markdown_table() -> str:
    """The configuration table of docs/configuration.md, generated from the fields above."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            default = str(default).replace(str(PROJECT_ROOT), ".")
        elif default is None:
            default = "(unset)"
        elif isinstance(default, dict | list | bool):
            default = json.dumps(default)  # the form the environment variable takes
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


CONFIGURATION_DOC = PROJECT_ROOT / "docs" / "configuration.md"


def write_table(doc: Path = CONFIGURATION_DOC) -> None:
    """Replace the table between the doc's settings-table markers with the generated one."""
    text = doc.read_text()
    start = text.index("<!-- settings-table")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /settings-table -->")
    doc.write_text(text[:start] + markdown_table() + "\n" + text[end:])


if __name__ == "__main__":
    import sys

    if "--write-docs" in sys.argv or "--write-readme" in sys.argv:  # the old flag's name, from when the README held it
        write_table()
    else:
        print(markdown_table())
