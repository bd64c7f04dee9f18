"""The nightly DAG: parsed by real Airflow without a database, then run whole with `airflow dags test`."""

import json
import os
import subprocess
import sys

import pytest

from jobs.common import registry_status
from recsys.contracts.tables import Tables
from recsys.data import movielens
from recsys.io import lake, model_store
from recsys.io.kafka import end_offsets, read_to_end
from recsys.protocol import ModelMessage, Topics
from recsys.replay import replay
from recsys.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration
# One train/evaluate pair per candidate (the settings' default: spark_als and the hybrid), then one publish.
CANDIDATES = ("spark_als", "hybrid")
PAIRS = [(f"train_{c}", f"evaluate_{c}") for c in CANDIDATES]
# Lighter than the nightly defaults to keep CI short: the hybrid with its default weights (no validation search).
OVERRIDES = {"overrides": {"spark_als": {"iterations": 10}, "hybrid": {"tune": False}}}
TASKS = ["archive_compact", "clean", *(task for pair in PAIRS for task in pair), "publish", "top_n"]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))  # examples are off in the environment
    assert bag.import_errors == {}
    return bag.dags["recsys_nightly"]


def test_tasks_run_in_order_without_cycles(dag):
    from airflow.utils.dag_cycle_tester import check_cycle

    check_cycle(dag)
    assert sorted(dag.task_ids) == sorted(TASKS)
    assert dag.get_task("archive_compact").upstream_task_ids == set()
    assert dag.get_task("clean").upstream_task_ids == {"archive_compact"}
    for train, evaluate in PAIRS:
        assert dag.get_task(train).upstream_task_ids == {"clean"}
        assert dag.get_task(evaluate).upstream_task_ids == {train}
    assert dag.get_task("publish").upstream_task_ids == {evaluate for _, evaluate in PAIRS}
    assert dag.get_task("top_n").upstream_task_ids == {"publish"}  # the lists of the model just published


def test_schedule_retries_and_no_catch_up_storm(dag):
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.get_task("clean").retries == 2
    assert dag.get_task("publish").retries == 0  # a failed gate is not retried
    assert set(dag.params.keys()) >= {"overrides", "drain_events", "as_challenger"}
    assert dag.params["as_challenger"] is False  # a night publishes a champion unless asked for a challenger
    args = dag.get_task("publish").application_args
    assert "{{ '--as-challenger' if params.as_challenger else '--no-as-challenger' }}" in args


def test_spark_steps_submit_job_files_through_one_connection(dag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from recsys.io.spark import DELTA_EXTENSION, delta_jars

    spark_tasks = [t for t in dag.tasks if isinstance(t, SparkSubmitOperator)]
    assert sorted(t.task_id for t in spark_tasks) == sorted(TASKS)
    for t in spark_tasks:
        assert t._conn_id == "spark_recsys"
        assert os.path.exists(t.application) and t.application.startswith(str(PROJECT_ROOT / "jobs"))
        # Delta natively: the fetched jars as local paths (never spark.jars.packages) and Delta's extension.
        assert t.conf["spark.jars"].split(",") == delta_jars() and "spark.jars.packages" not in t.conf
        assert t.conf["spark.sql.extensions"] == DELTA_EXTENSION


def test_airflow_cli_reports_no_import_errors():
    result = subprocess.run([sys.executable, "-m", "infra.airflow", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(1200)  # the slowest test in the suite: ~5 min quiet, twice that on a busy CI
def test_nightly_dag_runs_end_to_end_on_movielens_with_the_lake_and_models_on_hdfs(models_on_hdfs):
    """Every table (bronze, silver, registry) and every model on a real HDFS: the Spark tasks read and
    write the tables over hdfs:// with delta-spark, this test reads them back with delta-rs; the candidates are
    uploaded, evaluated and published there, and the MODEL message carries the hdfs:// URI. (Most other tests
    keep the lake and models on the local disk, the default.)"""
    s = models_on_hdfs
    events = ((e.key(), e.to_wire()) for e in movielens.iter_events(s.pseudonym_key_bytes()))
    assert replay(events, settings=s, progress=False).sent == movielens.N_RATINGS
    env = {
        **os.environ,
        "RECSYS_STATE_DIR": str(s.state_dir),
        "RECSYS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "RECSYS_LAKE_URI": s.lake_uri,
        "RECSYS_MODELS_URI": s.models_uri,
    }
    run = subprocess.run(
        [sys.executable, "-m", "infra.airflow", "run-dag", "--conf", json.dumps(OVERRIDES)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]

    [version] = model_store.published_versions(s)
    manifest = model_store.read_manifest(model_store.published(version, s))
    # The gate published the better candidate; the other is in the registry, not chosen, with its metrics.
    assert manifest.engine == "hybrid" and manifest.n_users == movielens.N_USERS
    status = registry_status(s)
    [als] = [row for v, row in status.items() if row["engine"] == "spark_als"]
    assert als["status"] == "not_chosen" and json.loads(als["metrics_json"])["ndcg@10"] < manifest.metrics["ndcg@10"]
    assert manifest.metrics["ndcg@10"] >= 1.3 * manifest.baseline_metrics["ndcg@10"]
    assert manifest.kafka_offsets == end_offsets(Topics.EVENTS, s)
    assert lake.read(Tables.path(Tables.SILVER_INTERACTIONS, s), columns=["event_id"]).num_rows == movielens.N_RATINGS
    top = lake.read(Tables.path(Tables.USER_TOP_N, s), columns=["user_id", "rank", "model_version"])  # after publish
    assert set(top.column("model_version").to_pylist()) == {version} and max(top.column("rank").to_pylist()) == 50
    assert len(set(top.column("user_id").to_pylist())) == movielens.N_USERS
    assert not (s.state_dir / "lake").exists() and not (s.state_dir / "models").exists()  # nothing on local disk
    assert not [p for p in s.state_dir.glob(".model-*")]  # the local copies of the models were deleted

    records = [r for batch in read_to_end(Topics.MODEL_UPDATES, s) for r in batch]
    [message] = [ModelMessage.model_validate_json(r.value) for r in records]
    assert message.model_version == version and message.path == str(model_store.published(version, s))
    assert message.path.startswith("hdfs://127.0.0.1:")
