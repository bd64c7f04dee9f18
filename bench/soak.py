"""Soak: the fault test's scenario, longer. SIGKILLs of the archiver and the speed layer at random moments
through a long stream, and the Kafka broker killed with kill -9 or stopped with SIGTERM in the middle of write
bursts (events being produced, dead letters and UPs being written) and restarted; then the same checks.

    python -m bench.run --only soak     (or `make bench-soak`)

What is reported is what was stored against what was produced (lost and duplicated events and
dead letters; a broken guarantee is a result, not a crash), how many of the UPs the crashed speed
layers published during the chaos are not the fold-in of exactly the events up to their source offset
(`infra.chaos.ups_against_offsets`), whether every touched user's final vector equals an uninterrupted
run's (asserted), and how long recovery took: not a speed target.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from bench.speed import build_model
from infra import broker
from infra.chaos import (
    Chaos,
    catch_up,
    check_user_vectors,
    stored_counts,
    stream_with_kills,
    updates_end,
    ups_against_offsets,
    user_events_after_cutoff,
    user_updates,
)
from recsys.settings import Settings


def run(quick: bool) -> dict:
    n_events, rounds, phases = (100_000, 2, 5) if quick else (300_000, 3, 10)
    n_users, n_items = 3_000, 1_000
    with tempfile.TemporaryDirectory(prefix="recsys-bench-soak-") as tmp:
        s = Settings(
            state_dir=Path(tmp),
            kafka_bootstrap=f"127.0.0.1:{broker.free_port()}",
            pseudonym_key="bench-only-key-" + "0" * 32,
            speed_metrics_port=0,
        )
        broker.start(s)
        chaos = Chaos(s, random.Random(7))
        started = time.monotonic()
        try:
            artifact = build_model(s, n_users, n_items, rank=32, history_events=50_000, zipf_exponent=1.0)
            chaos.start("archiver")
            chaos.start("speed")
            chaos_start = updates_end(s)
            stream = []
            for r in range(rounds):
                per_round = n_events // rounds
                # Two broker restarts per round, in the middle of producing a phase: kill -9 in even rounds,
                # SIGTERM (controlled shutdown) in odd ones.
                stream += stream_with_kills(
                    s,
                    chaos,
                    per_round,
                    phases,
                    seed=100 + r,
                    n_users=n_users,
                    n_items=n_items,
                    broker_restarts=2,
                    broker_how="SIGKILL" if r % 2 == 0 else "SIGTERM",
                )
            streaming_s = time.monotonic() - started
            chaos.stop()
            chaos_end = updates_end(s)
            ups = ups_against_offsets(
                artifact,
                user_events_after_cutoff(s, artifact),
                user_updates(s, chaos_start, chaos_end),
                s.event_weights,
            )
            recovery_s = catch_up(s, chaos)
            stored = stored_counts(s)  # reported, not asserted: a broken guarantee is a result too
            users = check_user_vectors(s, artifact, stream)
            logs = "".join(p.read_text(errors="replace") for p in (s.state_dir / "logs").glob("*.log"))
        finally:
            chaos.stop()
            broker.stop(s)
    produced = rounds * (n_events // rounds)
    return {
        "events": produced,
        "valid_events": len(stream),
        "kills": chaos.kills,
        "kills_while_working": chaos.kills_while_working,
        "broker_kill_9": chaos.broker_kills,
        "broker_sigterm": chaos.broker_stops,
        "broker_restarts_mid_burst": chaos.broker_restarts_mid_burst,
        "processes_died_on_their_own": chaos.restarts_after_crash,
        "bronze_rows": stored["bronze_rows"],
        "dlq_rows": stored["dlq_rows"],
        "lost_events": len(stream) - stored["distinct_event_ids"],
        "lost_dead_letters": (produced - len(stream)) - stored["distinct_dlq_keys"],
        "duplicated": (stored["bronze_rows"] - stored["distinct_event_ids"])
        + (stored["dlq_rows"] - stored["distinct_dlq_keys"]),
        "chaos_ups_checked": ups.checked,
        "chaos_ups_not_matching_their_offset": len(ups.mismatched),
        "chaos_ups_skipped_new_items": ups.skipped_new_items,
        "users_checked": users,
        "send_retries_logged": logs.count("not acknowledged"),
        "streaming_seconds": round(streaming_s, 1),
        "final_catch_up_seconds": round(recovery_s, 1),
    }
