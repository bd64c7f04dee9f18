"""Nightly rebuild of the batch models: archive-compact -> clean -> (train -> evaluate) per candidate -> publish
-> top_n.

Thin on purpose: the work lives in `jobs/`. Each step is a spark-submit of a
job file through the `spark_recsys` connection (local[*] by default; point the
connection at spark://..., yarn or k8s://... to run on a cluster; nothing else
changes), with the delta-spark jars and Delta's extension and catalog
(`recsys.io.spark.delta_conf`: local jar paths fetched at set-up, nothing downloaded
at run time). archive-compact is a Spark job too: it drains `events` into bronze,
completes pending erasures (Delta DELETE, VACUUM) and compacts (OPTIMIZE, VACUUM).
Every recommender in RECSYS_CANDIDATES is trained and evaluated; publish puts the
best of them through the quality gate, and the registry keeps every candidate's
metrics. top_n then writes every user's top N of the published model to the
`user_top_n` table for downstream jobs (docs/bulk.md); on a night the gate
publishes nothing it does not run, and the table keeps the lists of the model
still served. With the `as_challenger` param, publish makes the best candidate an A/B test's challenger
instead of the champion (docs/ab-tests.md).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param

from recsys import protocol
from recsys.io.spark import delta_conf
from recsys.settings import get_settings

JOBS = Path(__file__).resolve().parent.parent / "jobs"
SPARK_CONN_ID = "spark_recsys"

settings = get_settings()


def spark_job(job: str, args: list[str], task_id: str | None = None, **kwargs) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id or job,
        application=str(JOBS / f"{job}.py"),
        application_args=args,
        conn_id=SPARK_CONN_ID,
        name=f"recsys-{task_id or job}",
        driver_memory=settings.spark_driver_memory,
        conf={
            # Driver and Python workers use the interpreter (and virtualenv) Airflow runs in.
            "spark.pyspark.python": sys.executable,
            "spark.pyspark.driver.python": sys.executable,
            # Delta natively: spark-submit puts `spark.jars` on the driver's classpath and ships them to executors.
            **delta_conf(settings),
        },
        env_vars={"OPENBLAS_NUM_THREADS": "1"},
        **kwargs,
    )


with DAG(
    dag_id="recsys_nightly",
    description="Rebuild the recommenders from the Delta master dataset and publish the best if it passes the gate",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,  # a missed night is made up by the next one: every run trains on all history
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": True},
    dagrun_timeout=timedelta(hours=4),
    params={
        "overrides": Param(
            {}, type="object", description='Hyper-parameters per recommender, e.g. {"spark_als": {"rank": 32}}'
        ),
        "drain_events": Param(True, type="boolean", description="Archive the events topic before cleaning"),
        "as_challenger": Param(
            False,
            type="boolean",
            description="Publish the best candidate as an A/B test's challenger, keep the champion (docs/ab-tests.md)",
        ),
    },
    tags=["recsys"],
) as dag:
    archive_compact = spark_job("archive_compact", ["{{ '--drain' if params.drain_events else '--no-drain' }}"])
    clean = spark_job("clean", [])
    versions = {name: protocol.version_template(name) for name in settings.candidates}
    candidates = []
    for name, version in versions.items():
        overrides = f"{{{{ (params.overrides.get('{name}') or {{}}) | tojson }}}}"
        train = spark_job(
            "train", ["--model-version", version, "--model", name, "--params", overrides], task_id=f"train_{name}"
        )
        evaluate = spark_job("evaluate", ["--model-version", version], task_id=f"evaluate_{name}")
        train >> evaluate
        candidates.append((train, evaluate))
    # A failed quality gate is an answer, not a glitch: retrying would give the same one.
    publish = spark_job(
        "publish",
        [
            *(arg for v in versions.values() for arg in ("--model-version", v)),
            "{{ '--as-challenger' if params.as_challenger else '--no-as-challenger' }}",
        ],
        retries=0,
    )
    top_n = spark_job("top_n", [])

    archive_compact >> clean
    for train, evaluate in candidates:
        clean >> train
        evaluate >> publish
    publish >> top_n
