"""A real single-node HDFS (infra/hdfs.py: a NameNode and a DataNode from the Hadoop 3.5.0 jars on Maven
Central) shared by both Delta engines over hdfs://: Spark (delta-spark, PySpark's own Hadoop 3.5.0 client)
and delta-rs (its built-in hdfs-native client, no JVM).

HDFS runs in a state folder of this module's own, on free ports, started once for the module and stopped in
the fixture's teardown whatever happens. The tests run in order: Spark creates the table, delta-rs reads
and appends, Spark sees the append, then a stop/start keeps all of it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import psutil
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from infra import hdfs
from infra.broker import free_port
from infra.daemon import alive
from recsys.settings import Settings

pytestmark = pytest.mark.integration
TABLE = "/lake/t"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Settings]:
    s = Settings(
        state_dir=tmp_path_factory.mktemp("hdfs-state"),
        hdfs_port=free_port(),  # and the next port
        pseudonym_key=os.environ["RECSYS_PSEUDONYM_KEY"],
    )
    try:
        hdfs.start(s)
        yield s
    finally:
        hdfs.stop(s)


@pytest.fixture(scope="module")
def hspark(spark, cluster):
    """The test session's Spark: `recsys.io.spark` asks for RECSYS_HDFS_REPLICATION (1) replicas, as many as
    this HDFS has DataNodes (Hadoop's client would ask for 3)."""
    assert spark.conf.get("spark.hadoop.dfs.replication") == "1"
    return spark


@pytest.fixture(scope="module")
def table(cluster) -> str:
    return hdfs.url(cluster, TABLE)


def spark_ids(spark, url: str, version: int | None = None) -> list[int]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return sorted(r["id"] for r in reader.load(url).collect())


def spark_version(spark, url: str) -> int:
    from delta.tables import DeltaTable as SparkDeltaTable

    [row] = SparkDeltaTable.forPath(spark, url).history(1).select("version").collect()
    return row["version"]


def hadoop_files(spark, url: str) -> dict[str, int]:
    """Every file under `url` (recursively) -> its replication, through the JVM's Hadoop client."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(url)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    files, it = {}, fs.listFiles(path, True)
    while it.hasNext():
        status = it.next()
        files[status.getPath().toUri().getPath()] = status.getReplication()
    return files


def after_restart(call):
    """`call()`, once more if it met a connection the old NameNode closed.

    Hadoop's IPC client keeps an idle NameNode connection open for 10 s (ipc.client.connection.maxidletime)
    and only notices that the server closed it when it next reads from it: that one call fails with an
    EOFException and the next one reconnects. (Any long-lived Hadoop client sees this across a NameNode
    restart; delta-rs opens a connection per DeltaTable.)
    """
    from py4j.protocol import Py4JJavaError

    try:
        return call()
    except Py4JJavaError as e:
        assert "java.io.EOFException" in str(e), e
        return call()


def listening(pid: int) -> set[str]:
    return {
        f"{c.laddr.ip}:{c.laddr.port}"
        for c in psutil.Process(pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_both_daemons_run_from_the_fetched_jars_on_loopback_only(cluster):
    pids = hdfs.running_pids(cluster)
    assert all(pids.values()), pids
    state = hdfs.namenode_state(cluster)
    assert (state["FSState"], state["NumLiveDataNodes"]) == ("Operational", 1)
    namenode = listening(pids[hdfs.NAMENODE])
    assert namenode == {f"127.0.0.1:{cluster.hdfs_port}", f"127.0.0.1:{hdfs.http_port(cluster)}"}
    datanode = listening(pids[hdfs.DATANODE])
    assert len(datanode) >= 3 and all(a.startswith("127.0.0.1:") for a in datanode), datanode  # data, IPC, HTTP
    paths = hdfs.HdfsPaths(cluster.hdfs_dir)
    log = paths.log(hdfs.NAMENODE).read_text(errors="replace")
    assert "version = 3.5.0" in log  # the startup banner: the jars of infra/maven/hdfs/pom.xml
    assert "SLF4J" not in paths.console_log(hdfs.NAMENODE).read_text(errors="replace")  # logging has a binding


def test_spark_writes_a_delta_table_to_hdfs_and_reads_it_back(hspark, table):
    hspark.range(0, 5).write.format("delta").save(table)
    assert spark_ids(hspark, table) == [0, 1, 2, 3, 4]
    assert spark_version(hspark, table) == 0
    files = hadoop_files(hspark, table)
    assert f"{TABLE}/_delta_log/00000000000000000000.json" in files
    assert any(f.endswith(".parquet") for f in files)
    assert set(files.values()) == {1}, files  # one replica per block, as many as there are DataNodes


def test_delta_rs_reads_the_spark_table_over_hdfs_and_appends_to_it(hspark, table):
    dt = DeltaTable(table)
    assert dt.version() == 0
    assert sorted(dt.to_pyarrow_table()["id"].to_pylist()) == [0, 1, 2, 3, 4]
    write_deltalake(table, pa.table({"id": pa.array([100, 101], pa.int64())}), mode="append")
    dt = DeltaTable(table)
    assert dt.version() == 1
    assert sorted(dt.to_pyarrow_table()["id"].to_pylist()) == [0, 1, 2, 3, 4, 100, 101]
    assert set(hadoop_files(hspark, table).values()) == {1}  # delta-rs takes the server's default replication


def test_spark_sees_the_delta_rs_append(hspark, table):
    assert spark_version(hspark, table) == 1
    assert spark_ids(hspark, table) == [0, 1, 2, 3, 4, 100, 101]
    assert spark_ids(hspark, table, version=0) == [0, 1, 2, 3, 4]  # time travel across engines


def test_both_engines_commit_at_once_without_a_lock_and_lose_nothing(hspark, cluster):
    """On HDFS each engine's commit is a rename that fails if the version exists (delta-spark's HDFSLogStore,
    delta-rs' hdfs-native object store): a writer that loses the race retries on the next version. No lock file
    is needed there (recsys.io.lake takes none for paths with a scheme).

    delta-rs appends in a loop for as long as Spark appends, so Spark's commits race with them.
    """
    table = hdfs.url(cluster, "/lake/concurrent")
    hspark.range(0, 1).write.format("delta").save(table)
    spark_done, rs_ids, errors = threading.Event(), [], []

    def delta_rs_appends() -> None:
        try:
            while not spark_done.is_set() and len(rs_ids) < 100:
                i = 1000 + len(rs_ids)
                write_deltalake(table, pa.table({"id": pa.array([i], pa.int64())}), mode="append")
                rs_ids.append(i)
        except Exception as e:  # reported below: a lost race must never surface as an error
            errors.append(e)

    writer = threading.Thread(target=delta_rs_appends)
    writer.start()
    try:
        for i in range(3):
            hspark.createDataFrame([(2000 + i,)], "id long").write.format("delta").mode("append").save(table)
    finally:
        spark_done.set()
        writer.join()
    assert not errors, errors
    commits = 1 + len(rs_ids) + 3
    history = DeltaTable(table).history()
    assert sorted(h["version"] for h in history) == list(range(commits))  # one version per commit, none lost
    assert spark_ids(hspark, table) == sorted([0, *rs_ids, 2000, 2001, 2002])
    spark_commits = [h for h in history if h.get("engineInfo", "").startswith("Apache-Spark") and h["version"] > 0]
    # A Spark commit that read version r and landed after r + 1 found r + 1 taken by delta-rs and retried.
    assert any(h["readVersion"] < h["version"] - 1 for h in spark_commits), history


def test_a_folder_moves_in_one_rename_that_never_replaces_an_existing_one(hspark, cluster):
    """What publishing a model folder on HDFS relies on: write it under a staging name, then one NameNode
    operation (rename2, as hdfs-native's rename) gives it its final name, and fails if that name is taken."""
    sc = hspark.sparkContext
    fs_api = sc._jvm.org.apache.hadoop.fs
    fs = fs_api.Path(hdfs.url(cluster)).getFileSystem(sc._jsc.hadoopConfiguration())
    for name in ("v1", "v2"):
        for part in ("factors.bin", "meta/model.json"):
            out = fs.create(fs_api.Path(f"/models/.staging-{name}/{part}"))
            out.write(name.encode())
            out.close()
    no_overwrite = sc._gateway.new_array(fs_api.Options.Rename, 1)
    no_overwrite[0] = fs_api.Options.Rename.NONE
    fs.rename(fs_api.Path("/models/.staging-v1"), fs_api.Path("/models/v1"), no_overwrite)
    assert sorted(hadoop_files(hspark, hdfs.url(cluster, "/models"))) == [
        "/models/.staging-v2/factors.bin",
        "/models/.staging-v2/meta/model.json",
        "/models/v1/factors.bin",
        "/models/v1/meta/model.json",
    ]
    with pytest.raises(Exception, match="FileAlreadyExistsException"):
        fs.rename(fs_api.Path("/models/.staging-v2"), fs_api.Path("/models/v1"), no_overwrite)
    assert sorted(hadoop_files(hspark, hdfs.url(cluster, "/models/v1"))) == [
        "/models/v1/factors.bin",
        "/models/v1/meta/model.json",
    ]


def test_a_restart_keeps_the_table(hspark, cluster, table):
    before = hdfs.running_pids(cluster)
    assert hdfs.start(cluster) == before  # start while running starts nothing
    assert hdfs.stop(cluster) is True
    assert not any(alive(p) for p in before.values() if p)
    assert hdfs.running_pids(cluster) == {hdfs.NAMENODE: None, hdfs.DATANODE: None}
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", cluster.hdfs_port)) != 0  # nobody answers: the data is not cached
    after = hdfs.start(cluster)
    assert after[hdfs.NAMENODE] != before[hdfs.NAMENODE]
    dt = DeltaTable(table)
    assert dt.version() == 1
    assert sorted(dt.to_pyarrow_table()["id"].to_pylist()) == [0, 1, 2, 3, 4, 100, 101]
    assert after_restart(lambda: spark_ids(hspark, table)) == [0, 1, 2, 3, 4, 100, 101]
    write_deltalake(table, pa.table({"id": pa.array([200], pa.int64())}), mode="append")
    assert spark_version(hspark, table) == 2  # and both engines still write after the restart


def test_stop_never_kills_a_process_that_is_not_our_hdfs(tmp_path):
    s = Settings(state_dir=tmp_path, hdfs_port=free_port(), pseudonym_key=os.environ["RECSYS_PSEUDONYM_KEY"])
    paths = hdfs.HdfsPaths(s.hdfs_dir)
    paths.root.mkdir(parents=True)
    for daemon in hdfs.MAIN_CLASSES:
        paths.pid_file(daemon).write_text(str(os.getpid()))  # stale PID files naming some other live process
    assert hdfs.running_pids(s) == {hdfs.NAMENODE: None, hdfs.DATANODE: None}
    assert hdfs.stop(s) is False  # nothing was signalled: this test process is still here
