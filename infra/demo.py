"""`make demo`: the main job end to end, step by step, failing loudly on the first step that does not work.

Runs in its own state folder (`.state/demo`, set by the Makefile), which it resets first,
so the demo gives the same result every time and never touches other local state.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from infra import broker
from recsys import lake, model_store
from recsys.contracts import Tables, Topics
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
        console.print(f"[bold red]FAILED: {title}[/bold red]\n{e if isinstance(e, DemoFailed) else repr(e)}")
        raise DemoFailed(title) from e
    console.print(f"[green]ok[/green] ({time.monotonic() - started:.1f}s)")
    return result


def check_prerequisites() -> None:
    java = shutil.which("java")
    if java is None:
        raise DemoFailed("Java is missing: Spark needs a Java 17+ runtime (apt-get install openjdk-17-jre-headless)")
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    console.print(f"java: {version}")


def reset_state() -> None:
    from infra import airflow

    s = get_settings()
    airflow.stop()
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


def archive() -> None:
    from jobs.archiver import Archiver

    archiver = Archiver()
    try:
        stats = archiver.run(until_caught_up=True)
    finally:
        archiver.close()
    bronze = Tables.path(Tables.BRONZE_EVENTS)
    console.print(f"bronze table {bronze}: version {lake.version(bronze)}, {stats.archived:,} events archived "
                  f"in {stats.commits} commits, {stats.dead_lettered} dead letters")  # fmt: skip


def run_nightly_dag() -> None:
    log = get_settings().state_dir / "airflow" / "demo-dag-run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"airflow dags test recsys_nightly (archive_compact -> clean -> train -> evaluate -> publish); "
                  f"log: {log}")  # fmt: skip
    with log.open("w") as out:
        code = subprocess.run([sys.executable, "-m", "infra.airflow", "run-dag"], stdout=out, stderr=subprocess.STDOUT)
    if code.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise DemoFailed(f"the DAG run failed (exit {code.returncode}); last lines of {log}:\n{tail}")
    show_published_model()


def show_published_model() -> None:
    path = model_store.latest_published()
    if path is None:
        raise DemoFailed("the DAG finished but no model was published")
    m = model_store.read_manifest(path)
    console.print(f"published model {m.model_version} ({m.engine}, rank {m.rank}) at {path}")
    table = Table("metric (time-split holdout)", "ALS", "popularity", title="quality gate input")
    for key in ("precision@10", "recall@10", "ndcg@10", "map@10", "auc", "coverage@10"):
        table.add_row(key, f"{m.metrics[key]:.4f}", f"{m.baseline_metrics[key]:.4f}")
    console.print(table)


def main() -> int:
    try:
        step("0. check prerequisites", check_prerequisites)
        step("1. reset the demo state", reset_state)
        step("2. start the local broker", start_broker)
        step("3. load MovieLens-100K into Kafka", load_movielens)
        step("4. read it back from the broker", show_arrival)
        step("5. archive the events topic into the bronze Delta table", archive)
        step("6. run the nightly DAG once with real Airflow and Spark", run_nightly_dag)
    except DemoFailed:
        return 1
    console.rule("[bold]done")
    console.print(
        f"The broker keeps running on {get_settings().kafka_bootstrap}.\n"
        "Look around: `RECSYS_STATE_DIR=.state/demo .venv/bin/recsys topics`; "
        "the Airflow UI: `RECSYS_STATE_DIR=.state/demo make airflow-ui`\n"
        "Stop everything: `make stop`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
