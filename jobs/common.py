"""What every batch job shares: logging, the Spark session, the registry table, a run summary."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pyarrow as pa
import typer

from recsys.contracts.tables import REGISTRY_SCHEMA, Tables
from recsys.io import lake
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs")


def run_cli(main: Callable[..., None]) -> None:
    """Run a job's typer `main` as its command line (plain tracebacks: they end up in Airflow's logs)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)


@contextmanager
def timed(what: str) -> Iterator[None]:
    started = time.monotonic()
    log.info("%s ...", what)
    yield
    log.info("%s done in %.1fs", what, time.monotonic() - started)


def spark_session(job: str, settings: Settings | None = None):
    from recsys.io.spark import get_spark

    spark = get_spark(f"recsys-{job}", settings)
    spark.sparkContext.setLogLevel("WARN")
    return spark


def blas_in_use(spark) -> str:
    """Which BLAS Spark's ML linear algebra runs on (NativeBLAS = the system's, e.g. OpenBLAS)."""
    try:
        return spark._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName()
    except Exception as e:  # the JVM classes are an implementation detail of Spark
        return f"unknown ({type(e).__name__})"


def record_in_registry(
    model_version: str,
    status: str,
    *,
    engine: str,
    silver_version: int | None,
    path: str,
    metrics: dict | None = None,
    reason: str = "",
    settings: Settings | None = None,
) -> None:
    """Append one status row for a model version (the registry is append-only; the last row wins)."""
    row = {
        "model_version": [model_version],
        "status": [status],
        "engine": [engine],
        "recorded_at": [datetime.now(UTC)],
        "silver_table_version": [silver_version],
        "path": [path],
        "metrics_json": [json.dumps(metrics or {}, sort_keys=True)],
        "reason": [reason],
    }
    lake.write(Tables.path(Tables.MODEL_REGISTRY, settings or get_settings()), pa.table(row, schema=REGISTRY_SCHEMA))


def registry_status(settings: Settings | None = None) -> dict[str, dict]:
    """Latest row per model version."""
    path = Tables.path(Tables.MODEL_REGISTRY, settings or get_settings())
    if not lake.exists(path):
        return {}
    rows = lake.read(path).sort_by("recorded_at").to_pylist()
    return {r["model_version"]: r for r in rows}
