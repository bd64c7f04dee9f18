"""The model store on a real HDFS (RECSYS_MODELS_URI): upload, atomic promotion, serving from the URI, erasure.

Each test has its own NameNode and DataNode (the `models_on_hdfs` fixture, infra/hdfs.py), its own Kafka
broker, and a model store at hdfs://127.0.0.1:<port>/recsys/models.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from published_models import produce, publish_model, write_catalogue
from serving_stack import call, wait_for

from infra import hdfs, processes
from jobs.publish import announce
from recsys.erasure import erase_from_models
from recsys.io import model_store
from recsys.protocol import ForgetMessage
from recsys.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

V1, V2 = "m20260101T000000000000", "m20260102T000000000000"


def _store_entries(s: Settings) -> list[str]:
    """Every path under the model store, temporary ones included (what a reader could ever see)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(s.models_root)
    return sorted(fs.find(root, withdirs=True)) if fs.exists(root) else []


def test_a_replica_that_shares_only_the_uris_serves_each_model_published_on_hdfs(
    models_on_hdfs, tmp_path_factory, free_port
):
    trainer = models_on_hdfs
    events = produce(trainer, seed=1, n=3_000)
    write_catalogue(trainer)
    m1 = publish_model(trainer, events, V1)
    assert model_store.published_versions(trainer) == [V1]
    assert str(model_store.latest_published(trainer)).startswith("hdfs://")
    assert not trainer.models_dir.exists()  # the trainer's local disk holds no model
    assert not [e for e in _store_entries(trainer) if "/.tmp-" in e]

    # A replica with a state folder of its own: what it shares with the trainer is Kafka and the two URIs.
    replica = Settings(
        state_dir=tmp_path_factory.mktemp("replica"),
        kafka_bootstrap=trainer.kafka_bootstrap,
        pseudonym_key=trainer.pseudonym_key,
        serving_port=free_port(),
        speed_metrics_port=0,
        lake_uri=trainer.lake_uri,
        models_uri=trainer.models_uri,
    )
    proc = processes.start("serving", replica, log=replica.state_dir / "serving.log")
    try:
        ready = processes.wait_ready(replica, proc)
        url = processes.serving_url(replica)
        assert ready["model_version"] == V1, ready
        user = str(m1.user_ids[0])
        status, body = call("GET", f"{url}/recommend/{user}?k=5")
        assert status == 200 and len(body["items"]) == 5 and body["model_version"] == V1, body

        # A second model, published and announced by URI: the replica copies it from HDFS and swaps it in.
        publish_model(trainer, events + produce(trainer, seed=2, n=500), V2, rank=24)
        announce(V2, model_store.published(V2, trainer), trainer)
        wait_for(lambda: call("GET", f"{url}/models")[1]["model_version"] == V2)
        assert call("GET", f"{url}/models")[1]["params"]["rank"] == 24
        # It kept no copy: its local copies live only while a model loads.
        assert not list(replica.state_dir.glob(".model-*")) and not replica.models_dir.exists()
    finally:
        processes.stop(proc)


def test_erasure_reaches_every_model_on_hdfs_and_replaces_only_what_it_changed(models_on_hdfs):
    s = models_on_hdfs
    events = produce(s, seed=3, n=2_000)
    publish_model(s, events, V1)
    before = model_store.load_from(model_store.published(V1, s), s)
    victim = str(before.user_ids[3])
    others = [str(u) for u in before.user_ids if str(u) != victim]
    assert np.any(before.user_factors[3] != 0)

    # The request comes after everything in the model: it covers it.
    erased = erase_from_models([ForgetMessage(user_id=victim, partition=0, offset=10**9)], s)
    assert erased == 1

    after = model_store.load_from(model_store.published(V1, s), s)
    assert victim not in set(after.user_ids.tolist())
    assert [str(u) for u in after.user_ids if not str(u).startswith(model_store.ERASED_PREFIX)] == others
    assert not np.any(after.user_factors[3]) and after.interactions[3].nnz == 0
    assert not np.isin(3, after.data.events.user)
    np.testing.assert_array_equal(after.item_factors, before.item_factors)  # only the user's rows changed
    assert not [e for e in _store_entries(s) if "/.tmp-" in e]  # every replaced file was renamed into place


UPLOAD = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from published_models import produce, publish_model
    from recsys.settings import get_settings
    s = get_settings()
    print("uploading", flush=True)
    publish_model(s, produce(s, seed=5, n=20_000), sys.argv[1], rank=256)
""")


def _start_upload(s: Settings, version: str) -> subprocess.Popen:
    env = {**os.environ, **s.as_env()}
    return subprocess.Popen(
        [sys.executable, "-c", UPLOAD, version],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_until_uploading(s: Settings) -> None:
    """Until the candidate's first file shows in the store: its files are being written to HDFS."""
    wait_for(lambda: any(e.endswith(".npy") for e in _store_entries(s)), timeout_s=120, every_s=0.05)


def test_a_trainer_killed_mid_upload_leaves_no_model_and_the_next_upload_succeeds(models_on_hdfs):
    s = models_on_hdfs
    upload = _start_upload(s, V1)
    try:
        _wait_until_uploading(s)
        upload.send_signal(signal.SIGKILL)
        upload.wait(30)
    finally:
        if upload.poll() is None:
            upload.kill()
    assert model_store.published_versions(s) == [] and model_store.versions_in(model_store.candidates_dir(s)) == []
    with pytest.raises(model_store.ModelNotFound):
        model_store.find(V1, s)
    # The version was never taken: the same one uploads and publishes in full.
    publish_model(s, produce(s, seed=6, n=1_000), V1)
    assert model_store.published_versions(s) == [V1]
    assert model_store.load_from(model_store.published(V1, s), s).manifest.model_version == V1


def test_kill_9_of_the_datanode_mid_upload_leaves_no_half_visible_model(models_on_hdfs):
    s = models_on_hdfs
    upload = _start_upload(s, V1)
    try:
        _wait_until_uploading(s)
        os.kill(hdfs.running_pids(s)["datanode"], signal.SIGKILL)
        output, _ = upload.communicate(timeout=300)
    finally:
        if upload.poll() is None:
            upload.kill()
    # Either the upload failed (no DataNode to write to) and no version is visible, or it had finished its
    # blocks and the version is complete: never a folder under its final name without every file.
    hdfs.start(s)
    visible = model_store.published_versions(s)
    if upload.returncode != 0:
        assert visible == [], output.decode()[-2000:]
    else:
        assert visible == [V1]
        assert model_store.load_from(model_store.published(V1, s), s).manifest.model_version == V1
    # With the DataNode back, the next model uploads and publishes (the dead upload's leftovers stay hidden).
    publish_model(s, produce(s, seed=7, n=1_000), V2)
    assert model_store.published_versions(s)[-1] == V2
