"""Soak: the fault test's scenario, longer. SIGKILLs of the archiver and the speed layer at random moments
through a long stream, broker restarts in between; then the same exactly-once and vector checks.

    python -m bench.run --only soak     (or `make bench-soak`)

What is reported is what was stored against what was produced (lost and duplicated events and
dead letters; a broken guarantee is a result, not a crash), whether every touched user's vector
equals an uninterrupted run's (asserted), and how long recovery took: not a speed target.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from bench.speed import build_model
from infra import broker
from infra.chaos import Chaos, catch_up, check_user_vectors, stored_counts, stream_with_kills, wait_archived
from recsys.settings import Settings


def run(quick: bool) -> dict:
    n_events, rounds, phases = (100_000, 2, 5) if quick else (300_000, 3, 10)
    n_users, n_items = 3_000, 1_000
    with tempfile.TemporaryDirectory(prefix="recsys-bench-soak-") as tmp:
        port = broker.free_port()
        s = Settings(state_dir=Path(tmp), kafka_bootstrap=f"127.0.0.1:{port}",
                     pseudonym_key="bench-only-key-" + "0" * 32, speed_metrics_port=0)  # fmt: skip
        broker.start(s)
        chaos = Chaos(s, random.Random(7))
        started = time.monotonic()
        try:
            artifact = build_model(s, n_users, n_items, rank=32, history_events=50_000, zipf_exponent=1.0)
            chaos.start("archiver")
            chaos.start("speed")
            stream = []
            for r in range(rounds):
                per_round = n_events // rounds
                stream += stream_with_kills(s, chaos, per_round, phases, seed=100 + r, n_users=n_users,
                                            n_items=n_items)  # fmt: skip
                if r < rounds - 1:
                    wait_archived(s)  # the local broker loses writes acknowledged during its shutdown
                    broker.stop(s)
                    broker.start(s)
            streaming_s = time.monotonic() - started
            recovery_s = catch_up(s, chaos)
            stored = stored_counts(s)  # reported, not asserted: a broken guarantee is a result too
            users = check_user_vectors(s, artifact, stream)
            logs = "".join(p.read_text(errors="replace") for p in (s.state_dir / "logs").glob("*.log"))
        finally:
            chaos.stop()
            broker.stop(s)
    return {
        "events": rounds * (n_events // rounds), "valid_events": len(stream), "kills": chaos.kills,
        "broker_restarts": rounds - 1, "processes_died_on_their_own": chaos.restarts_after_crash,
        "bronze_rows": stored["bronze_rows"], "dlq_rows": stored["dlq_rows"],
        "lost_events": len(stream) - stored["distinct_event_ids"],
        "lost_dead_letters": (rounds * (n_events // rounds) - len(stream)) - stored["distinct_dlq_keys"],
        "duplicated": (stored["bronze_rows"] - stored["distinct_event_ids"])
        + (stored["dlq_rows"] - stored["distinct_dlq_keys"]),
        "users_checked": users,
        "send_retries_logged": logs.count("not acknowledged"), "streaming_seconds": round(streaming_s, 1),
        "final_catch_up_seconds": round(recovery_s, 1),
    }  # fmt: skip
