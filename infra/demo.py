"""`make demo`: the main job end to end, step by step, failing loudly on the first step that does not work.

Runs in its own state folder (`.state/demo`, set by the Makefile), which it resets first,
so the demo gives the same result every time and never touches other local state.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from infra import broker
from recsys.contracts import Topics
from recsys.data import movielens
from recsys.replay import read_topic, replay
from recsys.settings import get_settings

console = Console()


class DemoFailed(RuntimeError):
    pass


def step(title: str, fn: Callable[[], object]) -> object:
    console.rule(f"[bold]{title}")
    started = time.monotonic()
    try:
        result = fn()
    except Exception as e:
        console.print(f"[bold red]FAILED: {title}[/bold red]\n{type(e).__name__}: {e}")
        raise DemoFailed(title) from e
    console.print(f"[green]ok[/green] ({time.monotonic() - started:.1f}s)")
    return result


def reset_state() -> None:
    s = get_settings()
    broker.stop(s)
    if s.state_dir.exists():
        shutil.rmtree(s.state_dir)
    console.print(f"fresh demo state in {s.state_dir}")


def start_broker() -> None:
    s = get_settings()
    pid = broker.start(s)
    console.print(f"Kafka-protocol broker: pid {pid} on {s.kafka_bootstrap} (topics {', '.join(Topics.ALL)})")


def load_movielens() -> None:
    events = ((e.key(), e.to_wire()) for e in movielens.iter_events())
    report = replay(events, total=movielens.N_RATINGS)
    console.print(f"produced {report.sent:,} events in {report.seconds:.1f}s ({report.rate:,.0f}/s)")
    if report.failed:
        raise DemoFailed(f"{report.failed} events were not acknowledged: {dict(report.errors)}")


def show_arrival() -> None:
    summary = read_topic(Topics.EVENTS)
    table = Table("in the `events` topic", "count", title="MovieLens-100K, as events")
    table.add_row("messages", f"{summary.messages:,}")
    table.add_row("valid events", f"{summary.valid:,}")
    table.add_row("distinct users (pseudonymised)", f"{len(summary.users):,}")
    table.add_row("distinct items", f"{len(summary.items):,}")
    for event_type, n in sorted(summary.event_types.items()):
        table.add_row(f"  {event_type}", f"{n:,}")
    console.print(table)
    if summary.valid != movielens.N_RATINGS or summary.rejected:
        raise DemoFailed(f"expected {movielens.N_RATINGS:,} valid events, found {summary.valid:,} {summary.rejected}")


def main() -> int:
    try:
        step("1. reset the demo state", reset_state)
        step("2. start the local broker", start_broker)
        step("3. load MovieLens-100K into Kafka", load_movielens)
        step("4. read it back from the broker", show_arrival)
    except DemoFailed:
        return 1
    console.rule("[bold]done")
    console.print(
        f"The broker keeps running on {get_settings().kafka_bootstrap}.\n"
        "Look around: `RECSYS_STATE_DIR=.state/demo .venv/bin/recsys topics`\n"
        "Stop everything: `make stop`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
