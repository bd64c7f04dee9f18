"""`recsys`: the operator's command line (replay data into Kafka, inspect topics, show settings)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from recsys.io.kafka import BrokerUnavailable, count_messages, ensure_topics, wait_for_broker
from recsys.protocol import Topics
from recsys.replay import ReplayReport, read_topic, replay
from recsys.settings import get_settings, markdown_table

app = typer.Typer(help="Real-time recommender: operator commands.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)  # fmt: skip
replay_app = typer.Typer(help="Replay a data source into the `events` topic.", no_args_is_help=True)
app.add_typer(replay_app, name="replay")
console = Console()


def _broker_or_exit() -> None:
    try:
        wait_for_broker(timeout_s=10)
    except BrokerUnavailable as e:
        console.print(f"[red]{e}[/red]\nStart the local broker with `make broker` or set RECSYS_KAFKA_BOOTSTRAP.")
        raise typer.Exit(1) from None
    ensure_topics()


def _print_report(report: ReplayReport) -> None:
    console.print(
        f"sent {report.sent:,} events in {report.seconds:.1f}s ({report.rate:,.0f}/s), failed {report.failed:,}; "
        f"per partition {dict(sorted(report.per_partition.items()))}"
    )
    if report.failed:
        console.print(f"[red]errors: {dict(report.errors)}[/red]")
        raise typer.Exit(1)


@replay_app.command("movielens")
def replay_movielens(
    rate: float = typer.Option(0.0, help="Events per second; 0 = as fast as the broker takes them."),
    limit: int = typer.Option(0, help="Stop after this many events; 0 = all 100,000."),
) -> None:
    """Replay MovieLens-100K (from the installed recbole wheel) as events, oldest first."""
    from itertools import islice

    from recsys.data import movielens

    _broker_or_exit()
    messages = ((e.key(), e.to_wire()) for e in movielens.iter_events())
    if limit:
        messages = islice(messages, limit)
    _print_report(replay(messages, rate=rate, total=limit or movielens.N_RATINGS))


@replay_app.command("synthetic")
def replay_synthetic(
    events: int = typer.Option(100_000, help="Number of messages."),
    seed: int = typer.Option(0),
    users: int = typer.Option(10_000),
    items: int = typer.Option(5_000),
    malformed_share: float = typer.Option(0.0, help="Share of deliberately malformed messages (they go to the DLQ)."),
    rate: float = typer.Option(0.0, help="Events per second; 0 = as fast as possible."),
) -> None:
    """Replay the seeded synthetic e-commerce stream."""
    from recsys.data.synthetic import SyntheticConfig, iter_messages

    config = SyntheticConfig(n_events=events, seed=seed, n_users=users, n_items=items, malformed_share=malformed_share)
    _broker_or_exit()
    _print_report(replay(iter_messages(config), rate=rate, total=events))


catalog_app = typer.Typer(help="Load item titles and categories into the `catalog` table.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("movielens")
def catalog_movielens() -> None:
    """MovieLens-100K's films (title and year; first genre as the category)."""
    from recsys.data import catalog

    table = catalog.movielens()
    console.print(f"catalog version {catalog.write(table)}: {table.num_rows:,} items")


@catalog_app.command("synthetic")
def catalog_synthetic(
    items: int = typer.Option(5_000), categories: int = typer.Option(20), seed: int = typer.Option(0)
) -> None:
    """The synthetic stream's items and the categories the generator draws them from."""
    from recsys.data import catalog

    table = catalog.synthetic(items, categories, seed)
    console.print(f"catalog version {catalog.write(table)}: {table.num_rows:,} items")


@app.command()
def topics() -> None:
    """Messages held per topic."""
    _broker_or_exit()
    table = Table("topic", "messages")
    for topic, n in count_messages(Topics.ALL).items():
        table.add_row(topic, f"{n:,}")
    console.print(table)


@app.command("check-events")
def check_events(expect: int = typer.Option(0, help="Exit 1 unless exactly this many valid events arrived.")) -> None:
    """Read the whole `events` topic and validate every message: shows what arrived."""
    _broker_or_exit()
    s = read_topic(Topics.EVENTS)
    table = Table("what", "count")
    for label, value in [
        ("messages", s.messages), ("control records", s.control), ("valid events", s.valid),
        ("distinct users", len(s.users)),
        ("distinct items", len(s.items)), ("duplicate event ids", s.duplicate_event_ids),
        *((f"type {k}", v) for k, v in sorted(s.event_types.items())),
        *((f"rejected: {k}", v) for k, v in sorted(s.rejected.items())),
    ]:  # fmt: skip
        table.add_row(label, f"{value:,}")
    console.print(table)
    if expect and s.valid != expect:
        console.print(f"[red]expected {expect:,} valid events, found {s.valid:,}[/red]")
        raise typer.Exit(1)


@app.command()
def forget(
    user_id: str = typer.Argument(None, help="The shop's user id, or its pseudonym. Omit with --pending."),
    wait: float = typer.Option(
        120,
        help="Seconds to wait for the archiver to pass the request before leaving it "
        "pending (the nightly DAG completes pending requests).",
    ),
    pending: bool = typer.Option(False, "--pending", help="Complete the pending requests the archiver has passed."),
) -> None:
    """Erase a user across all layers (right to erasure): lake, model files, speed and serving layers."""
    from recsys import erasure

    _broker_or_exit()
    if pending:
        console.print(erasure.complete_pending())
        return
    if not user_id:
        raise typer.BadParameter("give a user id, or --pending")
    message = erasure.request(user_id)
    console.print(f"forget {message.user_id}: marker at events[{message.partition}]@{message.offset}; "
                  "speed and serving layers told")  # fmt: skip
    with console.status("waiting for the archiver to pass the marker, then erasing from the lake and models"):
        done = erasure.wait_and_complete(message, timeout_s=wait)
    if not done:
        console.print(f"[yellow]the archiver has not passed the marker within {wait:.0f}s: the request is pending; "
                      "`recsys forget --pending` or the nightly DAG completes it[/yellow]")  # fmt: skip
        raise typer.Exit(2)
    console.print(f"erased {message.user_id} from the lake (old files vacuumed after "
                  f"{get_settings().vacuum_retention_hours} h) and from every model directory")  # fmt: skip


@app.command()
def settings() -> None:
    """Print every setting with its environment variable and current value."""
    current = get_settings()
    console.print(markdown_table())
    console.print(f"\nstate folder in use: {current.state_dir}\nkafka: {current.kafka_bootstrap}")


if __name__ == "__main__":
    app()
