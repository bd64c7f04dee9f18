"""Run the project's Airflow locally: configured from settings, bound to 127.0.0.1, state in `<state>/airflow`.

    python -m infra.airflow check      # DAG import errors (exit 1 if any)
    python -m infra.airflow run-dag    # run the nightly DAG once, now (`airflow dags test`, real Spark)
    python -m infra.airflow ui         # api-server, scheduler, dag-processor as separate processes
    python -m infra.airflow stop

Not `airflow standalone`: it binds its log servers to every interface. The
scheduler runs with --skip-serve-logs and a log server of ours serves the task
logs on 127.0.0.1 instead (Airflow's own app, bound to loopback; tasks record
127.0.0.1 as their host, so the UI fetches a running task's log from there).
The API server binds to 127.0.0.1. The DAG is created paused (Airflow's
default); `ui` unpauses it once the dag-processor has registered it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from infra.daemon import Daemon
from recsys.settings import PROJECT_ROOT, Settings, get_settings

app = typer.Typer(
    help="Local Airflow for the nightly DAG.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
DAG_ID = "recsys_nightly"
SERVICES = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    # Airflow's task-log server app, on loopback only (`airflow serve-logs` would bind every interface).
    "log-server": [
        "-m",
        "uvicorn",
        "airflow.utils.serve_logs.log_server:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
    ],
}
PASSWORDS = "simple_auth_manager_passwords.json.generated"


def loopback_hostname() -> str:
    """Airflow's `hostname_callable`: tasks record 127.0.0.1, where our log server listens, as their host."""
    return "127.0.0.1"


def log_server_port(s: Settings) -> int:
    return s.airflow_port + 713  # 8793 next to the default 8080, Airflow's own default for the log server


def airflow_home(s: Settings) -> Path:
    return s.state_dir / "airflow"


def airflow_env(s: Settings | None = None) -> dict[str, str]:
    """The environment every airflow command of ours runs with (configuration by environment only)."""
    s = s or get_settings()
    home = airflow_home(s)
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",  # spark-submit comes from the venv's pyspark
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(s.airflow_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{s.airflow_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        # The Spark master is a connection, so a cluster is a configuration change, not a code change.
        "AIRFLOW_CONN_SPARK_RECSYS": json.dumps({"conn_type": "spark", "host": s.spark_master}),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "infra.airflow.loopback_hostname",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_server_port(s)),
    }


def airflow(*args: str, s: Settings | None = None, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([_airflow_bin(), *args], env=airflow_env(s), check=check, **kwargs)


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def migrate(s: Settings | None = None) -> None:
    s = s or get_settings()
    airflow_home(s).mkdir(parents=True, exist_ok=True)
    airflow("db", "migrate", s=s, stdout=subprocess.DEVNULL)


@app.command()
def check() -> None:
    """List DAG import errors; exit 1 if there are any."""
    migrate()
    raise typer.Exit(airflow("dags", "list-import-errors", "--local", check=False).returncode)


@app.command("run-dag")
def run_dag(
    conf: str = typer.Option("{}", help='DAG params as JSON, e.g. \'{"overrides": {"spark_als": {"rank": 32}}}\'.'),
) -> None:
    """Run the nightly DAG once, now, without a scheduler (`airflow dags test`)."""
    migrate()
    result = airflow("dags", "test", DAG_ID, "--conf", conf, check=False)
    raise typer.Exit(result.returncode)


def _process(s: Settings, name: str) -> Daemon:
    """One of `ui`'s processes: an airflow process (Airflow renames its own, so matched as text) with its PID
    file in the Airflow home and its log in logs/."""
    home = airflow_home(s)
    return Daemon(name, home / f"{name}.pid", home / "logs" / f"{name}.log", text_marks=("airflow",))


@app.command()
def ui(wait: float = typer.Option(180, help="Seconds to wait for the password file and the DAG to unpause.")) -> None:
    """Start the Airflow UI (api-server), scheduler, dag-processor and log server on 127.0.0.1 in the background;
    then unpause the nightly DAG (it is created paused) and say where the admin password is."""
    s = get_settings()
    migrate(s)
    logs = airflow_home(s) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, args in SERVICES.items():
        command = (
            [sys.executable, *args, "--port", str(log_server_port(s))]
            if name == "log-server"
            else [_airflow_bin(), *args]
        )
        _process(s, name).start_once(command, env=airflow_env(s))
    typer.echo(
        f"Airflow UI: http://127.0.0.1:{s.airflow_port}  (user admin); logs in {logs}; "
        "stop with `python -m infra.airflow stop` or `make stop`"
    )
    passwords = airflow_home(s) / PASSWORDS
    unpaused = False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not (passwords.exists() and unpaused):
        if not unpaused:
            unpaused = airflow("dags", "unpause", DAG_ID, s=s, check=False, capture_output=True).returncode == 0
        time.sleep(2)
    if passwords.exists():
        passwords.chmod(0o600)  # Airflow writes it world-readable
        typer.echo(f"admin password: in {passwords} (mode 600)")
    else:
        typer.echo(f"the admin password file is not written yet; it will be {passwords}")
    if unpaused:
        typer.echo(f"DAG {DAG_ID} unpaused: it runs nightly at 02:00 (trigger it now with `make dag-run`)")
    else:
        typer.echo(
            f"DAG {DAG_ID} is not registered yet, so still paused: unpause it in the UI or with "
            f"`python -m infra.airflow unpause`"
        )


@app.command()
def unpause() -> None:
    """Unpause the nightly DAG (Airflow creates DAGs paused)."""
    raise typer.Exit(airflow("dags", "unpause", DAG_ID, check=False).returncode)


@app.command()
def stop() -> None:
    """Stop the processes `ui` started (by PID file, whole process group)."""
    s = get_settings()
    for name in SERVICES:
        if _process(s, name).stop(10, group=True):  # the group: the scheduler's executor and task processes too
            typer.echo(f"stopped {name}")


if __name__ == "__main__":
    app()
