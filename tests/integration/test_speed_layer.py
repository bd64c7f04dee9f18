"""The speed layer against the real broker: exact fold-in, replay after a new model, crashes, bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client import REGISTRY
from published_models import CATALOGUE, produce, publish_model, write_catalogue
from speed_checks import run_until_idle

from infra import broker as broker_process
from infra.chaos import (
    check_ups_follow_their_offsets,
    check_user_vectors,
    expected_user_vectors,
    latest_updates,
    updates_end,
)
from jobs.archiver import Archiver
from jobs.publish import announce
from recsys.contracts.events import Event
from recsys.data.synthetic import SyntheticConfig, item_category
from recsys.io import model_store
from recsys.io.kafka import count_messages, read_to_end
from recsys.protocol import Topics, parse_key
from recsys.replay import replay
from recsys.settings import PROJECT_ROOT
from recsys.topk import top_k
from serving.follower import ModelFollower
from speed_layer import service
from speed_layer.service import SpeedLayer

pytestmark = pytest.mark.integration


def test_streamed_users_get_exactly_folded_vectors_and_bad_events_are_skipped(isolated_stack):
    s = isolated_stack
    artifact = publish_model(s, produce(s, seed=1, n=4_000), "m20260101T000000000000")
    stream = produce(s, seed=2, n=1_500, malformed=0.05)
    before = REGISTRY.get_sample_value("speed_events_total") or 0
    run_until_idle(s)
    assert check_user_vectors(s, artifact, stream) > 50
    assert (REGISTRY.get_sample_value("speed_events_total") or 0) - before == len(stream)
    skipped = sum(
        REGISTRY.get_sample_value("speed_invalid_events_total", {"reason": r}) or 0
        for r in (
            "invalid_json",
            "invalid_field",
            "not_an_object",
            "unknown_event_type",
            "ts_out_of_range",
            "not_pseudonymised",
            "too_large",
        )
    )
    assert skipped >= 1500 - len(stream)
    new_items = {e.item_id for e in stream} - set(artifact.item_ids)
    updates = latest_updates(s)
    assert all(("item", it) in updates for it in new_items)
    # The malformed events end up in the DLQ once, through the archiver that owns it.
    archiver = Archiver(s)
    archiver.run(until_caught_up=True)
    archiver.close()
    assert count_messages([Topics.DLQ], s)[Topics.DLQ] == 1_500 - len(stream)


def test_metrics_are_served_on_loopback_and_sigterm_stops_cleanly(isolated_stack, free_port):
    s = isolated_stack
    publish_model(s, produce(s, seed=12, n=2_000), "m20260101T000000000000")
    produce(s, seed=13, n=500)
    port = free_port()
    env = {
        **os.environ,
        "RECSYS_STATE_DIR": str(s.state_dir),
        "RECSYS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "RECSYS_SPEED_METRICS_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "speed_layer", "--instance-id", "speed-metrics"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _events_metric(port) >= 500)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for name in ("speed_foldins_total", "speed_consumer_lag", "speed_event_to_publish_seconds_bucket"):
            assert name in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    last = json.loads(err.strip().splitlines()[-1])
    assert last["message"] == "stopped cleanly" and last["level"] == "info"


def _events_metric(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    lines = [line for line in text.splitlines() if line.startswith("speed_events_total ")]
    return float(lines[0].split()[1]) if lines else 0.0


@pytest.mark.parametrize("engine", ["implicit_als", "spark_als"])
def test_a_batch_users_unchanged_history_reproduces_the_batch_vector(isolated_stack, spark, engine):
    """An event on an item nobody else knows leaves the solvable history as trained: the UP is the batch vector."""
    s = isolated_stack
    artifact = publish_model(s, produce(s, seed=14, n=3_000), "m20260101T000000000000", engine, spark)
    users = artifact.user_ids[:20]
    touches = [
        Event(event_id=f"t-{n}", user_id=u, item_id=f"unseen-{n}", event_type="view", ts=1_767_225_600_000)
        for n, u in enumerate(users)
    ]
    replay(((e.key(), e.to_wire()) for e in touches), settings=s, progress=False)
    run_until_idle(s)
    updates = latest_updates(s)
    for row, user in enumerate(users):
        up, batch = np.array(updates[("user", user)].vector), artifact.user_factors[row]
        cosine = up @ batch / (np.linalg.norm(up) * np.linalg.norm(batch))
        if engine == "spark_als":  # Spark's last half-iteration updated the users: the same solve
            np.testing.assert_allclose(up, batch, rtol=1e-3, atol=1e-4)
        else:  # implicit's last half-iteration updated the items: users are one step behind
            assert cosine > 0.99, cosine


def test_a_user_buying_in_one_category_moves_towards_it(isolated_stack):
    s = isolated_stack
    history = produce(s, seed=9, n=5_000)
    artifact = publish_model(s, history, "m20260101T000000000000")
    category = item_category(SyntheticConfig(n_events=1, seed=9, **CATALOGUE))
    user_row = 0
    user = artifact.user_ids[user_row]
    in_model = {it: j for j, it in enumerate(artifact.item_ids)}
    # The category this user has bought least from, among items the model knows.
    owned = [category[int(it.split("-")[1])] for it in artifact.item_ids[artifact.interactions[user_row].indices]]
    target = min(range(CATALOGUE["n_categories"]), key=owned.count)
    targets = [it for it in in_model if category[int(it.split("-")[1])] == target][:8]
    purchases = [
        Event(event_id=f"buy-{n}", user_id=user, item_id=it, event_type="purchase", ts=1_767_225_600_000 + n)
        for n, it in enumerate(targets * 2)
    ]
    replay(((e.key(), e.to_wire()) for e in purchases), settings=s, progress=False)
    run_until_idle(s)

    def share_of_target(vector) -> float:
        top, _ = top_k(np.asarray(vector, np.float32)[None, :], artifact.item_factors, 20)
        return float(np.mean([category[int(artifact.item_ids[j].split("-")[1])] == target for j in top[0]]))

    after = latest_updates(s)[("user", user)].vector
    assert share_of_target(after) > share_of_target(artifact.user_factors[user_row]) + 0.3


def test_a_new_model_mid_stream_is_loaded_and_the_events_after_its_cut_off_replayed(isolated_stack):
    s = isolated_stack
    history = produce(s, seed=3, n=4_000)
    publish_model(s, history, "m20260101T000000000000")
    layer = SpeedLayer(s, "speed-live")
    thread = threading.Thread(target=layer.run, kwargs={"max_idle_s": 30}, daemon=True)
    thread.start()
    first = produce(s, seed=4, n=800)
    _wait_for(lambda: len(latest_updates(s)) > 0)

    model_b = publish_model(s, history + first, "m20260102T000000000000")  # covers everything produced so far
    announce("m20260102T000000000000", model_store.published_dir(s) / "m20260102T000000000000", s)
    _wait_for(lambda: layer.state is not None and layer.state.model_version == "m20260102T000000000000")
    second = produce(s, seed=5, n=800)
    _wait_for(lambda: _published_with(s, "m20260102T000000000000", {e.user_id for e in second[-5:]}))
    time.sleep(2)
    layer.stop()
    thread.join(30)
    assert check_user_vectors(s, model_b, second) > 20


def test_a_named_challenger_gets_ups_of_its_own_folded_in_from_its_own_offsets_and_serving_applies_them(
    isolated_stack,
):
    """An A/B test names an ALS challenger whose data ends before the champion's: a shopper's events produce UPs for
    both versions, the challenger's the challenger model's own fold-in of everything after its own cut-off (the
    events the champion's data holds included), the champion's as without a test; a follower holds each state."""
    s = isolated_stack
    history = produce(s, seed=20, n=3_000)
    version = "m20260102T000000000000"
    challenger = publish_model(s, history, version, rank=8, as_challenger=True)
    between = produce(s, seed=21, n=600)  # in the champion's data, after the challenger's cut-off
    champion = publish_model(s, history + between, "m20260101T000000000000")
    stream = produce(s, seed=22, n=800)
    ab = s.model_copy(update={"ab_challenger_version": version})
    layer = run_until_idle(ab)
    assert layer.challenger is not None and layer.challenger.state.model_version == version

    assert check_user_vectors(s, champion, stream) > 20  # the champion's UPs, under their usual keys
    ups = latest_updates(s, challenger=version)
    expected = expected_user_vectors(challenger, between + stream, s.event_weights)
    assert len(expected) > 20
    for user, vector in expected.items():
        up = ups[("user", user)]
        assert up.model_version == version and up.vector is not None, user
        np.testing.assert_allclose(up.vector, vector, rtol=2e-3, atol=2e-4, err_msg=user)
    shoppers = {e.user_id for e in stream}
    both = [u for u in shoppers if u in expected and ("user", u) in latest_updates(s)]
    assert len(both) > 20  # the same shoppers' events made UPs of both versions

    # Serving: the follower, reading model-updates from the beginning, holds each arm's folded-in state.
    write_catalogue(s)
    follower = ModelFollower(ab)
    follower.start()
    try:
        _wait_for(lambda: follower.ready and follower.challenger is not None)
        assert follower.current is not None and follower.challenger is not None
        assert not follower.mirrored  # an `Updating` challenger: its own UPs, not the champion's
        champion_ups = latest_updates(s)
        for user in both:
            served = follower.challenger.context(user)
            assert served is not None and served.state is not None, user
            np.testing.assert_allclose(served.state, ups[("user", user)].vector, rtol=1e-6, err_msg=user)
            held = follower.current.context(user)
            assert held is not None and held.state is not None, user
            np.testing.assert_allclose(held.state, champion_ups[("user", user)].vector, rtol=1e-6, err_msg=user)
    finally:
        follower.stop()


def test_a_challenger_published_after_the_start_is_picked_up_by_the_retry_and_the_champion_goes_on_meanwhile(
    isolated_stack, monkeypatch
):
    s = isolated_stack
    monkeypatch.setattr(service, "CHALLENGER_RETRY_S", 0.5)
    history = produce(s, seed=23, n=3_000)
    champion = publish_model(s, history, "m20260101T000000000000")
    version = "m20260102T000000000000"
    layer = SpeedLayer(s.model_copy(update={"ab_challenger_version": version}), "speed-ab-late")
    thread = threading.Thread(target=layer.run, kwargs={"max_idle_s": 30}, daemon=True)
    thread.start()
    try:
        first = produce(s, seed=24, n=600)
        _wait_for(lambda: _published_with(s, champion.manifest.model_version, {e.user_id for e in first[-5:]}))
        assert layer.challenger is None  # not in the model store: the champion's users were folded in meanwhile
        challenger = publish_model(s, history + first, version, rank=8, as_challenger=True)
        _wait_for(lambda: layer.challenger is not None)
        second = produce(s, seed=25, n=600)
        _wait_for(lambda: _published_with(s, version, {e.user_id for e in second[-5:]}, challenger=version))
        time.sleep(2)
    finally:
        layer.stop()
        thread.join(30)
    assert check_user_vectors(s, champion, first + second) > 20
    ups = latest_updates(s, challenger=version)
    expected = expected_user_vectors(challenger, second, s.event_weights)
    assert len(expected) > 20
    for user, vector in expected.items():
        np.testing.assert_allclose(ups[("user", user)].vector, vector, rtol=2e-3, atol=2e-4, err_msg=user)


def test_a_request_time_challenger_gets_a_state_only_when_its_data_ends_elsewhere_than_the_champions(isolated_stack):
    """A challenger without a real-time state (item-KNN) whose data ends where the champion's does takes the
    champion's UPs in serving, and an A/A test's challenger is the champion: the speed layer publishes nothing under
    a challenger's keys for either. One whose data ends earlier gets a state of its own: UPs under its version, no
    vector, carrying everything each user did since its own cut-off (the champion's data included), which a follower
    applies to it rather than the champion's."""
    s = isolated_stack
    history = produce(s, seed=26, n=2_000)
    early = "m20260102T000000000000-item_knn"
    publish_model(s, history, early, "item_knn", as_challenger=True)
    between = produce(s, seed=28, n=300)  # in the champion's data, after the early challenger's cut-off
    champion = "m20260101T000000000000"
    publish_model(s, history + between, champion)
    same = "m20260103T000000000000-item_knn"
    publish_model(s, history + between, same, "item_knn", as_challenger=True)
    stream = produce(s, seed=27, n=400)
    for version in (same, champion):
        layer = run_until_idle(s.model_copy(update={"ab_challenger_version": version}), f"speed-{version[-3:]}")
        assert layer.challenger is None and layer.state is not None and layer.state.model_version == champion
    keyed = {parse_key(r.key).version for records in read_to_end(Topics.MODEL_UPDATES, s) for r in records}
    assert keyed == {""}

    ab = s.model_copy(update={"ab_challenger_version": early})
    layer = run_until_idle(ab, "speed-early")
    assert layer.challenger is not None and layer.challenger.state.model_version == early
    since_cut_off: dict[str, dict[str, float]] = {}
    for e in between + stream:
        if e.event_type in s.event_weights:
            mine = since_cut_off.setdefault(e.user_id, {})
            mine[e.item_id] = mine.get(e.item_id, 0.0) + s.event_weights[e.event_type]
    ups = latest_updates(s, challenger=early)
    assert len(since_cut_off) > 50
    for user, strengths in since_cut_off.items():
        up = ups[("user", user)]
        assert up.model_version == early and up.vector is None, user
        assert up.strengths == pytest.approx(strengths), user

    write_catalogue(s)
    follower = ModelFollower(ab)
    follower.start()
    try:
        _wait_for(lambda: follower.ready and follower.challenger is not None)
        assert follower.challenger is not None and not follower.mirrored
        model = follower.challenger
        known = {item for item, j in model.item_index.items() if j < model.n_base}
        checked = 0
        for user, strengths in since_cut_off.items():
            served, batch = model.context(user), model.context(user, with_speed=False)
            added = sum(v for item, v in strengths.items() if item in known)
            assert served is not None, user
            before = 0.0 if batch is None else float(batch.strengths.sum())
            assert float(served.strengths.sum()) == pytest.approx(before + added, rel=1e-5), user
            checked += added > 0
        assert checked > 50
    finally:
        follower.stop()


@pytest.mark.reliability
def test_kill_9_mid_publish_and_a_broker_kill_mid_burst_publish_only_exact_vectors(isolated_stack):
    """Three speed-layer processes in turn, each SIGKILLed while it is still publishing (so between a publish and
    its commit, or mid-batch); the broker is kill -9ed and restarted under the second while it publishes. Every UP
    the crashed instances published, before any final catch-up, is the fold-in of exactly the events up to the
    offset it carries (tests/unit/test_chaos_checks.py shows this check failing on one dropped or doubled event);
    then a fresh instance's newest UPs equal an uninterrupted run's."""
    s = isolated_stack
    artifact = publish_model(s, produce(s, seed=6, n=4_000), "m20260101T000000000000")
    stream = []  # each instance starts with a backlog of its own, so it is still publishing when it is killed
    env = {
        **os.environ,
        "RECSYS_STATE_DIR": str(s.state_dir),
        "RECSYS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "RECSYS_SPEED_METRICS_PORT": "0",
        "RECSYS_SPEED_BATCH_MAX": "100",
    }
    rng = random.Random(11)
    start = updates_end(s)
    published_by = []  # UPs each crashed instance published: (from, to) offsets of model-updates
    publishing_when_killed = 0
    for round_ in range(3):
        stream += produce(s, seed=7 + round_, n=8_000)
        before = updates_end(s)
        proc = subprocess.Popen(
            [sys.executable, "-m", "speed_layer", "--instance-id", "speed-crash"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(lambda before=before: updates_end(s) > before + 300, poll_s=0.02)  # it loaded the model, publishes
        if round_ == 1:
            at_kill = updates_end(s)
            broker_process.kill_node(s, 1)  # in the middle of its burst of UPs
            time.sleep(rng.uniform(0.5, 2.0))
            broker_process.start(s)
            _wait_for(lambda at_kill=at_kill: updates_end(s) > at_kill + 300)  # it rode the outage out and goes on
            assert proc.poll() is None, "the speed layer died while the broker was away"
        # A kill at a random point of the burst, measured in UPs rather than seconds (machines differ in speed).
        kill_at = updates_end(s) + rng.randint(50, 600)
        _wait_for(lambda at=kill_at: updates_end(s) > at, poll_s=0.02)
        still = updates_end(s)
        time.sleep(0.1)
        publishing_when_killed += updates_end(s) > still
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        published_by.append((before, updates_end(s)))
    assert publishing_when_killed >= 2, "the kills did not land while the speed layer was publishing"

    checked = check_ups_follow_their_offsets(s, artifact, start, updates_end(s))
    assert checked.checked > 2_000 and checked.users > 100, checked
    for first, last in published_by:  # each crashed instance, the one that lived through the broker kill included
        assert check_ups_follow_their_offsets(s, artifact, first, last).checked > 300
    run_until_idle(s, "speed-crash")
    assert check_user_vectors(s, artifact, stream) > 100


def test_without_a_model_it_waits_and_says_so(isolated_stack, caplog):
    s = isolated_stack
    history = produce(s, seed=8, n=2_000)
    layer = SpeedLayer(s, "speed-wait")
    with caplog.at_level("INFO", logger="speed_layer"):
        thread = threading.Thread(target=layer.run, kwargs={"max_idle_s": 5}, daemon=True)
        thread.start()
        _wait_for(lambda: "waiting for the first published model" in caplog.text)
        assert layer.state is None
        publish_model(s, history, "m20260101T000000000000")
        announce("m20260101T000000000000", model_store.published_dir(s) / "m20260101T000000000000", s)
        thread.join(60)
    assert layer.state is not None and layer.state.model_version == "m20260101T000000000000"
    layer.close()


def _published_with(s, version: str, users: set[str], challenger: str = "") -> bool:
    updates = latest_updates(s, challenger)
    return all(("user", u) in updates and updates[("user", u)].model_version == version for u in users)


def _wait_for(condition, timeout_s: float = 60.0, poll_s: float = 0.3) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError("condition not met in time")
