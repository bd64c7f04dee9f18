"""Privacy end to end: `forget` erases a user from every layer; raw ids are never stored or logged.

One real stack (broker, speed layer and serving processes over TCP), the archiver,
and the clean and train jobs on real Spark and real Delta tables: once with the lake and
models on the local disk, once with both on a real HDFS of the test's own (RECSYS_LAKE_URI,
RECSYS_MODELS_URI).
"""

import re
import signal
import time
from collections import Counter

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from serving_stack import TOKEN, call, get, start_stack, stop_stack, wait_for

from infra import hdfs, processes
from jobs.archiver import EVENTS, IMPRESSIONS, Archiver
from jobs.clean import clean
from jobs.train import train
from recsys import erasure
from recsys.contracts.tables import Tables
from recsys.io import lake, model_store
from recsys.io.kafka import end_offsets, read_to_end
from recsys.models.als import FoldIn
from recsys.privacy import is_pseudonym
from recsys.protocol import Topics, UpdateKey, VectorUpdate, parse_key
from recsys.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
RAW_ID = re.compile(r"user-\d+")  # the synthetic stream's raw ids, before pseudonymisation


@pytest.fixture(params=["local-disk", "hdfs"])
def stack(request, tmp_path, own_hdfs):
    storage: dict = {"vacuum_retention_hours": 0}  # vacuum at once, so old files must be gone too
    if request.param == "hdfs":
        on_hdfs = own_hdfs(Settings(state_dir=tmp_path))
        storage |= {
            "hdfs_port": on_hdfs.hdfs_port,
            "lake_uri": on_hdfs.lake_uri,
            "models_uri": hdfs.url(on_hdfs, "/recsys/models"),
        }
    stack = start_stack(tmp_path, **storage)
    yield stack
    stop_stack(stack)


def archive(s) -> None:
    """Both streams, events first: impressions shown before a request its marker records are then left out."""
    for stream in (EVENTS, IMPRESSIONS):
        archiver = Archiver(s, stream=stream)
        archiver.run(until_caught_up=True)
        archiver.close()


def user_rows(s, table: str, user: str) -> int:
    return lake.read(Tables.path(table, s), columns=["user_id"])["user_id"].to_pylist().count(user)


def users_in_files(s, table: str) -> Counter:
    """User ids in every parquet file of the table's folder, referenced by a version or not (none: no such column)."""
    fs, root = fsspec.core.url_to_fs(str(Tables.path(table, s)))
    found = Counter()
    for file in fs.find(root):
        if file.endswith(".parquet") and "user_id" in pq.read_schema(file, filesystem=fs).names:
            found.update(pq.read_table(file, columns=["user_id"], filesystem=fs)["user_id"].to_pylist())
    return found


def lake_tables(s) -> list[str]:
    """Every Delta table under the lake folder, by name: whatever wrote it."""
    fs, root = fsspec.core.url_to_fs(str(s.lake_root))
    return sorted({p.rstrip("/").split("/")[-2] for p in fs.find(root, withdirs=True) if p.endswith("/_delta_log")})


def files_under(folder: str) -> dict[str, tuple[int, float]]:
    """Every file under `folder` (a path or a URI) with its size and modification time: any write shows up."""
    fs, root = fsspec.core.url_to_fs(folder)
    files = fs.find(root, detail=True) if fs.exists(root) else {}
    return {name: (info["size"], info.get("mtime", info.get("modification_time"))) for name, info in files.items()}


def latest_user_update(s, user: str, after_offset: int = -1) -> VectorUpdate | None:
    """The user's newest UP on `model-updates` (only among those written after `after_offset`).

    None if there is none, or if the newest is a tombstone (what the speed layer sends on forgetting).
    """
    latest = None
    for records in read_to_end(Topics.MODEL_UPDATES, s):
        for r in records:
            if parse_key(r.key) == UpdateKey("UP", "user", user) and r.offset > after_offset:
                latest = None if r.value is None else VectorUpdate.model_validate_json(r.value)
    return latest


def model_updates_end(s) -> int:
    return end_offsets(Topics.MODEL_UPDATES, s)[0]


def post(stack, raw_user: str, item: str, etype: str = "purchase"):
    status, body = call(
        "POST", f"{stack.url}/events", {"user_id": raw_user, "item_id": item, "event_type": etype}, token=TOKEN
    )
    assert status == 202, body
    return body


def test_forget_erases_a_user_from_every_layer_and_a_returning_user_starts_afresh(stack, spark):
    s = stack.s
    per_user = Counter(e.user_id for e in stack.events)
    gone_raw, back_raw = "user-3", "user-5"
    gone, back = stack.pseudonym(gone_raw), stack.pseudonym(back_raw)
    other_raw = next(f"user-{n}" for n in range(10, 300) if per_user[stack.pseudonym(f"user-{n}")] >= 5)
    assert per_user[gone] >= 5 and per_user[back] >= 5
    archive(s)
    clean(spark, settings=s)
    assert user_rows(s, Tables.SILVER_INTERACTIONS, gone) > 0
    post(stack, gone_raw, "i7")  # after the model's cut-off: only the speed layer knows it
    wait_for(lambda: get(stack, f"/recommend/{gone_raw}")[1]["source"] == "speed")
    get(stack, f"/recommend/{back_raw}")
    archive(s)  # what they were shown is in the lake too (personal data: erased with the rest)
    assert user_rows(s, Tables.IMPRESSIONS, gone) > 0 and user_rows(s, Tables.IMPRESSIONS, back) > 0

    # The admin endpoint needs the token; with it the servers forget at once.
    lake_before = files_under(str(s.lake_root))
    assert call("POST", f"{stack.url}/admin/forget/{gone_raw}")[0] == 401
    assert call("POST", f"{stack.url}/admin/forget/{gone_raw}", token="wrong")[0] == 403
    for raw in (gone_raw, back_raw):
        status, body = call("POST", f"{stack.url}/admin/forget/{raw}", token=TOKEN)
        assert status == 202 and body["user_id"] == stack.pseudonym(raw) and body["status"] == "requested"
    for raw in (gone_raw, back_raw):
        wait_for(lambda raw=raw: get(stack, f"/recommend/{raw}")[1]["source"] == "popular")
    assert get(stack, f"/recommend/{other_raw}")[1]["source"] == "batch"  # others untouched
    assert get(stack, f"/because/{gone_raw}/i7")[0] == 404
    # Serving only put the requests into the event log: it wrote nothing under the lake folder (no request row,
    # no delete, no vacuum), then or later, and nothing is recorded until the archiver reaches the markers.
    time.sleep(2)
    assert lake_before and files_under(str(s.lake_root)) == lake_before
    assert erasure.requests(s) == []

    # The archiver reaches the markers: it records the requests, deletes from bronze before its commit and, after
    # it, completes each request (silver, impressions and top-N deletes, vacuums, model files). What they were shown
    # after asking (above, waiting for `popular`) reaches the impressions table after that: left out.
    archive(s)
    wait_for(lambda: {m.user_id for m in erasure.requests(s, erasure.ERASED)} == {gone, back}, timeout_s=60)
    assert {m.user_id for m in erasure.requests(s)} == {gone, back} and not erasure.pending(s)
    for table in (Tables.BRONZE_EVENTS, Tables.SILVER_INTERACTIONS):
        assert user_rows(s, table, gone) == 0 and user_rows(s, table, back) == 0
        in_files = users_in_files(s, table)  # vacuumed: not even old, unreferenced files hold them
        assert in_files[gone] == 0 and in_files[back] == 0 and in_files[stack.pseudonym(other_raw)] > 0
    # Nor does any other table the system wrote, in any file (the forget log aside: it keeps the pseudonym as the
    # record that the request was carried out).
    tables = lake_tables(s)
    assert {Tables.BRONZE_EVENTS, Tables.SILVER_INTERACTIONS, Tables.FORGET_REQUESTS, Tables.IMPRESSIONS} <= set(
        tables
    ), tables
    for table in set(tables) - {Tables.FORGET_REQUESTS}:
        in_files = users_in_files(s, table)
        assert in_files[gone] == 0 and in_files[back] == 0, table
    m1 = model_store.load_from(model_store.published("m20260101T000000000000", s), s)
    assert gone not in set(m1.user_ids) and back not in set(m1.user_ids)
    erased_rows = [i for i, u in enumerate(m1.user_ids) if u.startswith(model_store.ERASED_PREFIX)]
    assert len(erased_rows) == 2 and not m1.user_factors[erased_rows].any()
    assert m1.interactions[erased_rows].nnz == 0 and m1.seen_types[erased_rows].nnz == 0

    # `back` returns: only what they do from now on counts, in the speed layer and after a replay.
    j = 5
    item = str(m1.item_ids[j])
    expected = FoldIn(m1.item_factors, m1.model.objective).vector(np.array([j]), np.array([s.event_weights["view"]]))
    accepted = post(stack, back_raw, item, "view")
    wait_for(lambda: get(stack, f"/recommend/{back_raw}")[1]["source"] == "speed")
    up = latest_user_update(s, back)
    assert up.strengths == {item: s.event_weights["view"]} and up.source_offset == accepted["offset"]
    np.testing.assert_allclose(up.vector, expected, rtol=1e-3, atol=1e-5)
    assert get(stack, f"/recommend/{gone_raw}")[1]["source"] == "popular"
    assert latest_user_update(s, gone) is None  # their last UP is followed by a tombstone (for log compaction)
    # A speed layer killed and restarted replays from m1's cut-off through the markers: same result.
    stack.procs["speed"].send_signal(signal.SIGKILL)
    stack.procs["speed"].wait()
    before = model_updates_end(s)
    stack.procs["speed"] = processes.start("speed_layer", s, "--instance-id", "speed-test", log=s.state_dir / "s2.log")
    replayed = wait_for(lambda: latest_user_update(s, back, after_offset=before - 1), timeout_s=60)
    np.testing.assert_allclose(replayed.vector, expected, rtol=1e-3, atol=1e-5)
    assert latest_user_update(s, gone, after_offset=before - 1) is None  # nothing of theirs after the marker
    assert get(stack, f"/recommend/{gone_raw}")[1]["source"] == "popular"

    # The next batch model: `gone` is absent, `back` holds exactly what they did after the request.
    archive(s)
    clean(spark, settings=s)
    m2 = model_store.load_from(train(spark, "m20260102T000000000000", "implicit_als", settings=s), s)
    assert gone not in set(m2.user_ids)
    row = int(np.flatnonzero(m2.user_ids == back)[0])
    assert m2.item_ids[m2.interactions[row].indices].tolist() == [item]

    # Nothing stored or logged holds a raw id.
    for table in (Tables.BRONZE_EVENTS, Tables.SILVER_INTERACTIONS, Tables.FORGET_REQUESTS, Tables.IMPRESSIONS):
        assert all(
            is_pseudonym(u) for u in lake.read(Tables.path(table, s), columns=["user_id"])["user_id"].to_pylist()
        )
    for artifact in (m1, m2):
        assert all(is_pseudonym(u) or u.startswith(model_store.ERASED_PREFIX) for u in artifact.user_ids)
    logs = [p for p in s.state_dir.rglob("*.log")]
    assert logs and not [p for p in logs if RAW_ID.search(p.read_text(errors="replace"))]
