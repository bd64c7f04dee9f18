"""`recsys`: the operator's command line (replay data into Kafka, inspect topics, show settings).

Imports are lazy: Kafka, pyarrow, pydantic-settings and the rest load inside the command that
needs them, so `recsys --help` (and a typo) answers at once instead of after seconds of imports.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.console import Console

    from recsys.replay import ReplayReport


class _App(typer.Typer):
    """The CLI; a bad RECSYS_* value is reported in one line per variable, not as a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:
            from pydantic import ValidationError

            if not isinstance(e, ValidationError):
                raise
            for line in settings_errors(e):
                print(f"recsys: {line}", file=sys.stderr)
            sys.exit(2)


app = _App(
    help="Real-time recommender: operator commands.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
replay_app = typer.Typer(help="Replay a data source into the `events` topic.", no_args_is_help=True)
app.add_typer(replay_app, name="replay")


class _LazyConsole:
    """rich's Console, created on first use."""

    _console: Console | None = None

    def __getattr__(self, name: str):
        if _LazyConsole._console is None:
            from rich.console import Console

            _LazyConsole._console = Console()
        return getattr(_LazyConsole._console, name)


console = _LazyConsole()


def settings_errors(error) -> list[str]:
    """One line per invalid setting: the variable, the value it had, and what is wrong."""
    from recsys.settings import ENV_PREFIX

    out = []
    for err in error.errors():
        field = str(err["loc"][0]) if err.get("loc") else "?"
        value = err.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        out.append(f"invalid setting {ENV_PREFIX}{field.upper()}{shown}: {err['msg']}")
    return out


def current_values(s) -> list[tuple[str, str, str, str]]:
    """(variable, current value, default, meaning) per setting; secrets shown as ******** when set."""
    import json
    from pathlib import Path

    from pydantic import SecretStr

    from recsys.settings import ENV_PREFIX, PROJECT_ROOT, Settings

    def shown(value: object) -> str:
        if value is None:
            return "(unset)"
        if isinstance(value, SecretStr):
            return "********"
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict | list | bool):
            return json.dumps(value)
        return str(value)

    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            default = default.resolve() if default.is_absolute() else (PROJECT_ROOT / default).resolve()
        rows.append((f"{ENV_PREFIX}{name.upper()}", shown(getattr(s, name)), shown(default), field.description or ""))
    return rows


def get_settings():
    from recsys.settings import get_settings as settings

    return settings()


def _broker_or_exit() -> None:
    from recsys.io.kafka import BrokerUnavailable, ensure_topics, wait_for_broker

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
    from recsys.replay import replay

    _broker_or_exit()
    messages: Iterator[tuple[bytes, bytes]] = ((e.key(), e.to_wire()) for e in movielens.iter_events())
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
    from recsys.replay import replay

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
    from rich.table import Table

    from recsys.io.kafka import count_messages
    from recsys.protocol import Topics

    _broker_or_exit()
    table = Table("topic", "messages")
    for topic, n in count_messages(Topics.ALL).items():
        table.add_row(topic, f"{n:,}")
    console.print(table)


@app.command("check-events")
def check_events(expect: int = typer.Option(0, help="Exit 1 unless exactly this many valid events arrived.")) -> None:
    """Read the whole `events` topic and validate every message: shows what arrived."""
    from rich.table import Table

    from recsys.protocol import Topics
    from recsys.replay import read_topic

    _broker_or_exit()
    s = read_topic(Topics.EVENTS)
    table = Table("what", "count")
    for label, value in [
        ("messages", s.messages),
        ("control records", s.control),
        ("valid events", s.valid),
        ("distinct users", len(s.users)),
        ("distinct items", len(s.items)),
        ("duplicate event ids", s.duplicate_event_ids),
        *((f"type {k}", v) for k, v in sorted(s.event_types.items())),
        *((f"rejected: {k}", v) for k, v in sorted(s.rejected.items())),
    ]:
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
    console.print(
        f"forget {message.user_id}: marker at events[{message.partition}]@{message.offset}; "
        "speed and serving layers told"
    )
    with console.status("waiting for the archiver to pass the marker, then erasing from the lake and models"):
        done = erasure.wait_and_complete(message, timeout_s=wait)
    if not done:
        console.print(
            f"[yellow]the archiver has not passed the marker within {wait:.0f}s: the request is pending; "
            "`recsys forget --pending` or the nightly DAG completes it[/yellow]"
        )
        raise typer.Exit(2)
    console.print(
        f"erased {message.user_id} from the lake (old files vacuumed after "
        f"{get_settings().vacuum_retention_hours} h) and from every model directory"
    )


@app.command()
def settings() -> None:
    """Print every setting's environment variable, current value (secrets masked) and meaning."""
    s = get_settings()
    rows = current_values(s)
    print("| variable | value | default | meaning |\n| --- | --- | --- | --- |")
    for variable, value, default, meaning in rows:
        print(f"| `{variable}` | `{value}`{' (set)' if value != default else ''} | `{default}` | {meaning} |")
    print(f"\nstate folder in use: {s.state_dir}\nkafka: {s.kafka_bootstrap}")


if __name__ == "__main__":
    app()
