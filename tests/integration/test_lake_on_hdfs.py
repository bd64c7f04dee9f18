"""A Delta table on a real HDFS survives kill -9 of its DataNode mid-write: no version is half visible.

The archiver's exactly-once tests (test_archiver.py) and the erasure test (test_privacy_end_to_end.py) run
with their lake on HDFS too; this file holds what only HDFS has: a DataNode to lose while a commit is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from serving_stack import wait_for

from infra import hdfs
from recsys.io import lake
from recsys.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

ROWS = 400_000  # per append: a few MB of parquet, long enough to be written while the DataNode dies

# Appends ROWS rows at a time, each append one commit whose rows all carry its number, until it fails.
APPENDS = textwrap.dedent("""
    import sys
    import numpy as np
    import pyarrow as pa
    from recsys.io import lake
    table, rows = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    for n in range(10_000):
        batch = pa.table({"append": np.full(rows, n, np.int64), "noise": rng.random(rows)})
        print("committed version", lake.write(table, batch), flush=True)
""")


def test_kill_9_of_the_datanode_mid_append_leaves_every_visible_version_whole(lake_on_hdfs):
    s = lake_on_hdfs
    table = f"{s.lake_uri}/kill_test"
    cmd = [sys.executable, "-c", APPENDS, table, str(ROWS)]
    env = {**os.environ, **s.as_env()}
    writer = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: lake.exists(table) and (lake.version(table) or 0) >= 2, timeout_s=120, every_s=0.05)
        os.kill(hdfs.running_pids(s)[hdfs.DATANODE], signal.SIGKILL)  # while the next append writes its file
        output, _ = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode != 0, "the writer never noticed its DataNode was gone"

    hdfs.start(s)  # the DataNode back, with the blocks it had on disk
    version = lake.version(table)
    assert version is not None and version >= 2
    committed = output.decode().count("committed version")
    assert version in (committed - 1, committed), output.decode()[-2000:]  # the last one may be cut off mid-print
    # Every visible version is whole: all its files read back, with exactly the rows of the appends it holds.
    for v in range(version + 1):
        rows = lake.read(table, version=v, columns=["append"])["append"].to_pylist()
        assert sorted(set(rows)) == list(range(v + 1)) and len(rows) == ROWS * (v + 1)
    # And the table takes the next append (a dead append's leftover files stay unreferenced).
    assert lake.write(table, lake.read(table, version=0)) == version + 1
