"""`make demo`: the main job end to end, step by step, failing loudly on the first step that does not work.

Runs in its own state folder (`.state/demo`, set by the Makefile), which it resets first,
so the demo gives the same result every time and never touches other local state.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra import broker, processes
from recsys.contracts.tables import Tables
from recsys.data import catalog, movielens
from recsys.io import lake, model_store
from recsys.protocol import Topics
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
    for name in processes.SERVICES:
        processes.stop_service(name, s)
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
    version = catalog.write(catalog.movielens())
    console.print(f"catalogue (titles, genres) -> Delta table `catalog` v{version}")
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
    console.print(
        f"bronze table {bronze}: version {lake.version(bronze)}, {stats.archived:,} events archived "
        f"in {stats.commits} commits, {stats.dead_lettered} dead letters"
    )


def run_nightly_dag() -> None:
    log = get_settings().state_dir / "airflow" / "demo-dag-run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    console.print(
        f"airflow dags test recsys_nightly (archive_compact -> clean -> train -> evaluate -> publish); log: {log}"
    )
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
    console.print(f"published model {m.model_version} ({m.engine}, {m.params}) at {path}")
    table = Table("metric (time-split holdout)", m.engine, "popularity", title="quality gate input")
    for key in ("precision@10", "recall@10", "ndcg@10", "map@10", "auc", "coverage@10"):
        table.add_row(key, f"{m.metrics[key]:.4f}", f"{m.baseline_metrics[key]:.4f}")
    console.print(table)


def start_services() -> None:
    s = get_settings()
    for name in processes.SERVICES:
        pid = processes.start_service(name, s)
        console.print(f"{name}: pid {pid}, log {s.state_dir / 'logs' / f'{name}.log'}")
    try:
        ready = processes.wait_ready(s, timeout_s=120)
    except (TimeoutError, RuntimeError) as e:
        log = s.state_dir / "logs" / "serving.log"
        tail = "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else "(no log)"
        raise DemoFailed(f"{e}\nlast lines of {log}:\n{tail}") from None
    console.print(f"serving model {ready['model_version']} on {processes.serving_url(s)}")


SHOWN = 8
DEMO_USERS = ("1", "42", "500")  # MovieLens user ids, as a shop would send them; the service pseudonymises
STREAMED_CATEGORY = "Horror"  # each demo user buys the three most popular horror films: a visible change of taste


def stream_and_compare() -> None:
    """Before/after recommendations of a few users around new events streamed through the whole system."""
    s = get_settings()
    url, token = processes.serving_url(s), s.write_token()
    visitor = f"visitor-{int(time.time())}"
    users = [*DEMO_USERS, visitor]
    before = {u: _get(f"{url}/recommend/{u}?k={SHOWN}&explain=true") for u in users}
    bought = [i["item_id"] for i in _get(f"{url}/popular?k=3&category={STREAMED_CATEGORY}")["items"]]
    sent_at = time.monotonic()
    for user in users:
        for item in bought:
            _post(f"{url}/events", {"user_id": user, "item_id": item, "event_type": "purchase"}, token)
    titles = catalog.read(s)
    console.print(f"each of {len(users)} users bought: " + "; ".join(titles.get(i, (i,))[0] or i for i in bought))
    after = {}
    for user in users:
        after[user] = _wait_for_speed(f"{url}/recommend/{user}?k={SHOWN}&explain=true", deadline=sent_at + 30)
    console.print(
        f"all {len(users)} users answered by the speed layer {time.monotonic() - sent_at:.1f}s after the events"
    )
    table = Table("user (shop id)", "before", "after (+ = new in the list, and why)", show_lines=True)
    for user in users:
        old = {i["item_id"] for i in before[user]["items"]}
        new = sum(i["item_id"] not in old for i in after[user]["items"])
        label = f"{user}\n{new} of {len(after[user]['items'])} changed"
        table.add_row(escape(label), _cell(before[user]), _cell(after[user], old))
    console.print(table)


def _cell(answer: dict, before: set[str] | None = None) -> str:
    """The answer's source and titles; items new since `before` marked with their reason (escaped: not markup)."""
    lines = [f"source: {answer['source']}"]
    for i in answer["items"]:
        fresh = before is not None and i["item_id"] not in before
        why = f"  ({i['because']})" if fresh and i.get("because") else ""
        lines.append(("+ " if fresh else "  ") + (i["title"] or i["item_id"]) + why)
    return escape("\n".join(lines))


def _wait_for_speed(url: str, deadline: float) -> dict:
    while True:
        answer = _get(url)
        if answer["source"] == "speed":
            return answer
        if time.monotonic() > deadline:
            raise DemoFailed(
                f"no speed-layer answer at {url} within 30 s: is the speed layer running? "
                f"see {get_settings().state_dir / 'logs' / 'speed.log'}"
            )
        time.sleep(0.2)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def main() -> int:
    try:
        step("0. check prerequisites", check_prerequisites)
        step("1. reset the demo state", reset_state)
        step("2. start the local broker", start_broker)
        step("3. load MovieLens-100K into Kafka", load_movielens)
        step("4. read it back from the broker", show_arrival)
        step("5. archive the events topic into the bronze Delta table", archive)
        step("6. run the nightly DAG once with real Airflow and Spark", run_nightly_dag)
        step("7. start the speed layer and the serving layer", start_services)
        step("8. stream new events for a few users: recommendations before and after", stream_and_compare)
    except DemoFailed:
        return 1
    s = get_settings()
    url = processes.serving_url(s)
    console.rule("[bold]done")
    console.print(
        f"Running: broker on {s.kafka_bootstrap}, speed layer, serving on {url}.\n"
        f"Storefront: {url}/storefront#token={s.write_token()}  (the token is in {s.secrets_dir / 'serving.token'})\n"
        f"API docs:   {url}/docs     metrics: {url}/metrics\n"
        "Look around: `RECSYS_STATE_DIR=.state/demo .venv/bin/recsys topics`; "
        "the Airflow UI: `RECSYS_STATE_DIR=.state/demo make airflow-ui`\n"
        "Stop everything: `make stop`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
