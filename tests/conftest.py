"""Shared fixtures: an isolated state folder, a real Kafka (KRaft, from the fetched jars) on a free port,
one Spark session.

The environment is set before anything reads settings, so no test touches `.state/`
or a broker the developer has running.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_KEY = "test-pseudonym-key-0123456789abcdef0123456789"


def pytest_unconfigure(config: pytest.Config) -> None:
    # Kafka and py4j clients log from __del__ at exit, after pytest closed the streams.
    import logging

    logging.raiseExceptions = False


def pytest_configure(config: pytest.Config) -> None:
    state = Path(tempfile.mkdtemp(prefix="recsys-test-"))
    from infra.broker import free_port

    port = free_port()  # the session's Kafka: clients on `port`, its controller on `port + 1`
    os.environ.pop("RECSYS_BROKER_PORT", None)  # a developer's stale variable (no longer a setting)
    os.environ.pop("RECSYS_KAFKA_CONTROLLER_PORT", None)
    os.environ.update(
        {
            "RECSYS_STATE_DIR": str(state),
            "RECSYS_PSEUDONYM_KEY": TEST_KEY,
            "RECSYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
            "RECSYS_SPARK_DRIVER_MEMORY": "2g",
            "RECSYS_SPARK_SHUFFLE_PARTITIONS": "4",
            "SPARK_LOCAL_IP": "127.0.0.1",
            # Every JVM the tests start (Kafka, Spark drivers and executors, HDFS, spark-submit) lives seconds to
            # minutes on small data, so the optimising JIT compiler's work never pays back: C1 only. Measured
            # (2026-12-08, 2 cores): a broker's start plus 20k messages 5.1-5.7 -> 3.5 CPU s, a small
            # spark-submit job 22-27 -> 16-17 CPU s, test_delta_interop + test_spark_cluster 242 -> 180 s. The
            # installation's own JVMs keep the default (long-lived, large data).
            "JDK_JAVA_OPTIONS": os.environ.get("JDK_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1"),
        }
    )
    # Airflow reads its configuration once, at first import: point it at this run's state first.
    from infra.airflow import airflow_env
    from recsys.settings import Settings

    os.environ.update(airflow_env(Settings()))


@pytest.fixture(scope="session")
def free_port():
    """A function giving a port on 127.0.0.1 that was free a moment ago."""
    from infra.broker import free_port as find

    return find


@pytest.fixture(scope="session")
def settings():
    from recsys.settings import get_settings

    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def broker(settings) -> Iterator[object]:
    """The real local Kafka (one KRaft node over TCP), started once for the session and stopped after."""
    from infra import broker as broker_process

    broker_process.start(settings)
    yield settings
    broker_process.stop(settings)


@pytest.fixture(scope="session")
def spark(settings):
    from recsys.io.spark import get_spark

    session = get_spark("recsys-tests", settings)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session", autouse=True)
def _spark_before_other_threads(request) -> None:
    """Start the test session's Spark JVM first, if any test collected here needs it.

    PySpark launches its JVM with a `preexec_fn`, so Python forks the whole process and runs Python code in
    the child before exec. Once delta-rs (a tokio runtime) and the Kafka clients have started their threads,
    that child can wait forever on a lock one of them held at the fork: seen once, a test setup hung in
    `subprocess` until pytest-timeout, with the forked copy of pytest asleep on a futex. Forking while this
    process has none of their threads yet avoids it.
    """
    if any("spark" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("spark")


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    return tmp_path / "table"


@pytest.fixture
def unique_topic(broker) -> Iterator[str]:
    """A fresh topic name per test, so tests never see each other's messages."""
    import uuid

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from recsys.io.kafka import bootstrap

    name = f"t-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(broker))
    admin.create_topics([NewTopic(name, 3, 1)])
    admin.close()
    yield name


@pytest.fixture
def isolated_stack(tmp_path, free_port):
    """A broker and a state folder of this test's own: the fixed topic names hold only what the test produced."""
    from infra import broker as broker_process
    from recsys.settings import Settings

    port = free_port()
    s = Settings(
        state_dir=tmp_path,
        kafka_bootstrap=f"127.0.0.1:{port}",
        pseudonym_key=os.environ["RECSYS_PSEUDONYM_KEY"],
        speed_metrics_port=0,
    )
    broker_process.start(s)
    yield s
    broker_process.stop(s)


@pytest.fixture
def own_hdfs(request, free_port):
    """`own_hdfs(s)` starts a real HDFS for this test alone (a NameNode and a DataNode, infra/hdfs.py; stopped
    after the test) and returns `s` with its port, and with the lake on it."""
    from infra import hdfs

    def start(s):
        s = s.model_copy(update={"hdfs_port": free_port()})  # its web UI takes the next port
        hdfs.start(s)
        request.addfinalizer(lambda: hdfs.stop(s))
        return s.model_copy(update={"lake_uri": hdfs.url(s, "/recsys/lake")})

    return start


@pytest.fixture
def lake_on_hdfs(isolated_stack, own_hdfs):
    """`isolated_stack` with its lake on a real HDFS of its own."""
    return own_hdfs(isolated_stack)


@pytest.fixture
def models_on_hdfs(lake_on_hdfs):
    """`lake_on_hdfs` with the model store on the same HDFS too (RECSYS_MODELS_URI)."""
    from infra import hdfs

    return lake_on_hdfs.model_copy(update={"models_uri": hdfs.url(lake_on_hdfs, "/recsys/models")})
