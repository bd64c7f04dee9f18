"""Replaying sources into the real broker: everything arrives, bad events are recognisably bad, the CLI works."""

import subprocess
import sys
import time

import pytest

from recsys.data import movielens
from recsys.data.synthetic import SyntheticConfig, iter_messages, n_valid_events
from recsys.io.kafka import count_messages
from recsys.replay import paced, read_topic, replay

pytestmark = pytest.mark.integration


def test_synthetic_stream_arrives_whole_with_its_malformed_share(unique_topic, broker):
    config = SyntheticConfig(n_events=5_000, n_users=300, n_items=400, malformed_share=0.1, seed=3)
    report = replay(iter_messages(config, key=broker.pseudonym_key_bytes()), topic=unique_topic, progress=False)
    assert (report.sent, report.failed) == (5_000, 0)
    assert len(report.per_partition) == 3

    summary = read_topic(unique_topic, progress=False)
    assert summary.messages == 5_000
    assert summary.valid == n_valid_events(config)
    assert sum(summary.rejected.values()) == 5_000 - n_valid_events(config)
    assert summary.duplicate_event_ids == 0


def test_movielens_replay_is_paced_and_keyed_by_pseudonym(unique_topic, broker):
    events = list(movielens.iter_events())[:600]
    started = time.monotonic()
    report = replay(((e.key(), e.to_wire()) for e in events), rate=3_000, topic=unique_topic, progress=False)
    assert report.sent == 600
    assert time.monotonic() - started >= 600 / 3_000 * 0.9  # pacing holds it back (a lower bound, not a timing)
    summary = read_topic(unique_topic, progress=False)
    assert summary.valid == 600 and not summary.rejected
    assert all(u.startswith("u_") for u in summary.users)


def test_paced_passes_everything_through_in_order():
    assert list(paced(iter(range(50)), rate=10_000)) == list(range(50))
    assert list(paced(iter(range(5)), rate=0)) == list(range(5))


def test_cli_replays_movielens_and_checks_what_arrived(broker):
    before = count_messages(["events"], broker)["events"]
    cli = [sys.executable, "-m", "recsys.cli"]
    replayed = subprocess.run([*cli, "replay", "movielens", "--limit", "1500"], capture_output=True, text=True)
    assert replayed.returncode == 0, replayed.stderr
    assert "sent 1,500 events" in replayed.stdout
    assert count_messages(["events"], broker)["events"] == before + 1500

    checked = subprocess.run([*cli, "check-events", "--expect", str(before + 1500)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    wrong = subprocess.run([*cli, "check-events", "--expect", str(before + 1499)], capture_output=True, text=True)
    assert wrong.returncode == 1
