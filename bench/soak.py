"""Soak: the fault test's scenario, longer. SIGKILLs of the archiver and the speed layer at random moments
through a long stream, broker restarts in between; then the same exactly-once and vector checks.

    python -m bench.run --only soak     (or `make bench-soak`)

Correctness is asserted (an AssertionError fails the run); what is reported is the scale the
guarantees held at and how long recovery took, not a speed target.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from bench.speed import build_model
from infra import broker
from infra.chaos import Chaos, catch_up, check_exactly_once, check_user_vectors, stream_with_kills
from recsys.settings import Settings


def run(quick: bool) -> dict:
    n_events, rounds, phases = (100_000, 2, 5) if quick else (300_000, 3, 10)
    n_users, n_items = 3_000, 1_000
    with tempfile.TemporaryDirectory(prefix="recsys-bench-soak-") as tmp:
        port = broker.free_port()
        s = Settings(state_dir=Path(tmp), broker_port=port, kafka_bootstrap=f"127.0.0.1:{port}",
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
                    broker.stop(s)
                    broker.start(s)
            streaming_s = time.monotonic() - started
            recovery_s = catch_up(s, chaos)
            stored = check_exactly_once(s, produced=rounds * (n_events // rounds), produced_valid=len(stream))
            users = check_user_vectors(s, artifact, stream)
            logs = "".join(p.read_text(errors="replace") for p in (s.state_dir / "logs").glob("*.log"))
        finally:
            chaos.stop()
            broker.stop(s)
    return {
        "events": rounds * (n_events // rounds), "valid_events": len(stream), "kills": chaos.kills,
        "broker_restarts": rounds - 1, "processes_died_on_their_own": chaos.restarts_after_crash,
        "bronze_rows": stored["bronze_rows"], "dlq_rows": stored["dlq_rows"],
        "lost": len(stream) - stored["distinct_event_ids"],
        "duplicated": (stored["bronze_rows"] - stored["distinct_event_ids"])
        + (stored["dlq_rows"] - stored["distinct_dlq_keys"]),
        "users_checked": users,
        "send_retries_logged": logs.count("not acknowledged"), "streaming_seconds": round(streaming_s, 1),
        "final_catch_up_seconds": round(recovery_s, 1),
    }  # fmt: skip
