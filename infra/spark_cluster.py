"""A Spark standalone cluster on this machine, from the installed PySpark: one master and N workers on 127.0.0.1.

    python -m infra.spark_cluster start [--cores N]   # ports, workers, memory: RECSYS_SPARK_CLUSTER_* settings
    python -m infra.spark_cluster status
    python -m infra.spark_cluster stop

Then `RECSYS_SPARK_MASTER=spark://127.0.0.1:7077` (or `spark-submit --master spark://127.0.0.1:7077`)
runs the same jobs on it; the nightly DAG's `spark_recsys` connection is built from that
setting. Executors share this machine's filesystem, so the local lake paths work unchanged.
The workers need no Delta jars of their own: a job's driver has the delta-spark jars (as
`spark.jars`, from recsys.io.spark.delta_conf: by the session builder, or on spark-submit's
command line) and its executors fetch them from the driver.

The daemons are `spark-class org.apache.spark.deploy.{master.Master,worker.Worker}`
(pip's PySpark ships no sbin/start-*.sh), each a background JVM whose PID is in
`<state>/run/spark-*.pid` and log in `<state>/logs/spark-*.log`; they are never
looked up or killed by name. Everything binds to 127.0.0.1, and the master's REST
submission server (unauthenticated, only needed for `--deploy-mode cluster`) is off.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from infra.daemon import Daemon, alive, port_taken, tail, terminate
from recsys.settings import Settings, get_settings

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
DEFAULT_MASTER_PORT = 7077
DEFAULT_WEBUI_PORT = 8090  # Spark's default 8080 is the Airflow UI's

app = typer.Typer(
    help="A local Spark standalone cluster.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)


class ClusterError(RuntimeError):
    """The cluster did not start, or is not in the state asked for."""


@dataclass(frozen=True)
class ClusterSpec:
    """What `start` launches; kept in `<state>/run/spark-cluster.json` so `status`/`stop` need no arguments."""

    master_port: int = DEFAULT_MASTER_PORT
    webui_port: int = DEFAULT_WEBUI_PORT
    workers: int = 1
    worker_cores: int = 1
    worker_memory: str = "2g"

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.master_port}"

    @property
    def webui_url(self) -> str:
        return f"http://{HOST}:{self.webui_port}"


@dataclass(frozen=True)
class ClusterPaths:
    state_dir: Path

    @property
    def run(self) -> Path:
        return self.state_dir / "run"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def spec_file(self) -> Path:
        return self.run / "spark-cluster.json"

    @property
    def properties_file(self) -> Path:
        # Its path is on every daemon's command line: it tells our daemons apart from any other Spark's.
        return self.state_dir / "spark" / "spark-cluster.conf"

    @property
    def work(self) -> Path:
        return self.state_dir / "spark" / "work"

    @property
    def local_dirs(self) -> Path:
        return self.state_dir / "spark" / "tmp"

    def pid_file(self, daemon: str) -> Path:
        return self.run / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.logs / f"{daemon}.log"


def spark_home() -> Path:
    """The Spark distribution inside the installed PySpark (its bin/spark-class and jars/)."""
    from pyspark.find_spark_home import _find_spark_home

    home = Path(_find_spark_home())
    if not (home / "bin" / "spark-class").is_file():
        raise FileNotFoundError(f"no bin/spark-class under SPARK_HOME {home}; run `make venv`")
    return home


def daemon_names(spec: ClusterSpec) -> list[str]:
    return ["spark-master", *(f"spark-worker-{n}" for n in range(1, spec.workers + 1))]


def spark_daemon(paths: ClusterPaths, daemon: str) -> Daemon:
    """A master or worker of this state dir: its class with this cluster's properties file on its command line
    (a recycled PID belongs to another program)."""
    cls = MASTER_CLASS if daemon == "spark-master" else WORKER_CLASS
    return Daemon(daemon, paths.pid_file(daemon), paths.log_file(daemon), marks=(cls, str(paths.properties_file)))


def running_pid(paths: ClusterPaths, daemon: str) -> int | None:
    """PID of our daemon if its PID file names a live process that is that daemon of this state dir."""
    return spark_daemon(paths, daemon).pid()


def read_spec(paths: ClusterPaths) -> ClusterSpec | None:
    try:
        return ClusterSpec(**json.loads(paths.spec_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def master_state(spec: ClusterSpec, timeout_s: float = 2.0) -> dict:
    """The master's own account of the cluster (its web UI's JSON): workers, cores, applications."""
    with urllib.request.urlopen(f"{spec.webui_url}/json/", timeout=timeout_s) as r:
        return json.loads(r.read())


def start(
    settings: Settings | None = None,
    *,
    master_port: int = DEFAULT_MASTER_PORT,
    webui_port: int = DEFAULT_WEBUI_PORT,
    workers: int = 1,
    worker_cores: int | None = None,
    worker_memory: str = "2g",
    timeout_s: float = 90.0,
) -> ClusterSpec:
    """Start the master and `workers` workers unless they run; wait until all workers registered.

    `worker_cores` defaults to this machine's CPUs shared among the workers: as many task slots
    as local[*] has, so jobs split their work the same way on both (Spark ALS's blocks, for one).
    A cluster of this state dir that is already running is kept as it is (its spec is returned).
    """
    if worker_cores is None:
        worker_cores = max(1, len(os.sched_getaffinity(0)) // max(workers, 1))
    if workers < 1 or worker_cores < 1:
        raise ValueError("a cluster needs at least one worker with at least one core")
    paths = ClusterPaths((settings or get_settings()).state_dir)
    running = read_spec(paths)
    if running is not None and running_pid(paths, "spark-master") is not None:
        wait_for_workers(running, paths, timeout_s)
        return running

    spec = ClusterSpec(master_port, webui_port, workers, worker_cores, worker_memory)
    for port in (spec.master_port, spec.webui_port):
        if port_taken(port, HOST):
            raise ClusterError(f"port {port} on {HOST} is taken by another program; choose other ports")
    for d in (paths.run, paths.logs, paths.work, paths.local_dirs, paths.properties_file.parent):
        d.mkdir(parents=True, exist_ok=True)
    paths.properties_file.write_text(
        # The REST server accepts unauthenticated submissions; client-mode spark-submit does not need it.
        "spark.master.rest.enabled false\n"
        # Finished applications' folders (jars, logs) would otherwise pile up in the work dir.
        "spark.worker.cleanup.enabled true\n"
        "spark.worker.cleanup.appDataTtl 86400\n"
    )
    paths.spec_file.write_text(json.dumps(asdict(spec)))
    try:
        _spawn(
            paths,
            "spark-master",
            MASTER_CLASS,
            ["--host", HOST, "--port", str(spec.master_port), "--webui-port", str(spec.webui_port)],
        )
        for n in range(1, spec.workers + 1):
            _spawn(
                paths,
                f"spark-worker-{n}",
                WORKER_CLASS,
                [
                    spec.master_url,
                    "--host",
                    HOST,
                    "--port",
                    "0",
                    "--webui-port",
                    "0",  # 0: any free port
                    "--cores",
                    str(spec.worker_cores),
                    "--memory",
                    spec.worker_memory,
                    "--work-dir",
                    str(paths.work / f"worker-{n}"),
                ],
            )
        wait_for_workers(spec, paths, timeout_s)
    except BaseException:
        stop(settings)  # no half-started cluster left behind
        raise
    return spec


def _spawn(paths: ClusterPaths, daemon: str, cls: str, args: list[str]) -> int:
    home = spark_home()
    env = {
        **os.environ,
        "SPARK_HOME": str(home),  # else spark-class asks the system python, which has no pyspark
        "SPARK_LOCAL_IP": HOST,  # RPC and web UIs bind here, and executors inherit it
        "SPARK_LOCAL_DIRS": str(paths.local_dirs),  # executors' shuffle and spill files
        "SPARK_DAEMON_MEMORY": "512m",  # master and workers only keep bookkeeping
        # Executors' Python workers run this interpreter, so they import this virtualenv's packages.
        "PYSPARK_PYTHON": sys.executable,
        # Executors run ALS's BLAS calls inside task threads; OpenBLAS's own threads would oversubscribe.
        "OPENBLAS_NUM_THREADS": "1",
    }
    for leaked in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_CONF_DIR"):
        env.pop(leaked, None)  # a daemon started from inside a Spark driver must not talk to that driver
    cmd = [str(home / "bin" / "spark-class"), cls, *args, "--properties-file", str(paths.properties_file)]
    # spark-class ends with `exec java`, so this PID becomes the daemon's JVM.
    return spark_daemon(paths, daemon).spawn(cmd, env=env)


def wait_for_workers(spec: ClusterSpec, paths: ClusterPaths, timeout_s: float = 90.0) -> dict:
    """Wait until the master reports `spec.workers` ALIVE workers; returns the master's state."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        dead = [d for d in daemon_names(spec) if not spark_daemon(paths, d).spawned_alive()]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited during start-up\n{_log_tails(paths, dead)}")
        try:
            state = master_state(spec)
        except (OSError, ValueError, http.client.HTTPException) as e:  # the UI may answer half-started
            last = f"{type(e).__name__}: {e}"
        else:
            if state.get("status") == "ALIVE" and state.get("aliveworkers", 0) >= spec.workers:
                return state
            last = f"master {state.get('status')}, {state.get('aliveworkers', 0)}/{spec.workers} workers alive"
        time.sleep(0.5)
    raise ClusterError(
        f"the Spark cluster at {spec.master_url} was not ready within {timeout_s:.0f}s ({last})\n"
        f"{_log_tails(paths, daemon_names(spec))}"
    )


def _log_tails(paths: ClusterPaths, daemons: list[str], chars: int = 1500) -> str:
    return "\n".join(
        tail(log, chars) if log.exists() else f"--- {log} ---\n(no log)" for log in map(paths.log_file, daemons)
    )


def _descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (a worker's executors and their Python workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _wait_all_threads_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until every thread of `pid` has exited, so its sockets are closed and its ports free again.

    `alive` is False as soon as the main thread is a zombie, but a JVM's other threads may still
    be exiting then, holding the process's listening sockets for a moment.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not alive(pid) and len(os.listdir(f"/proc/{pid}/task")) <= 1:
                return
        except FileNotFoundError:  # reaped: nothing of it is left
            return
        time.sleep(0.05)


def stop(settings: Settings | None = None, timeout_s: float = 20.0) -> list[str]:
    """Stop our workers (and their executors), then the master. Returns the daemons that were running."""
    paths = ClusterPaths((settings or get_settings()).state_dir)
    spec = read_spec(paths) or ClusterSpec()
    names = sorted({*daemon_names(spec), *(p.stem for p in paths.run.glob("spark-*.pid"))}, reverse=True)
    stopped = []
    for daemon in names:  # workers before the master ("spark-worker-*" sorts after "spark-master")
        pid = running_pid(paths, daemon)
        if pid is not None:
            children = _descendants(pid)
            terminate(pid, timeout_s)
            # A worker kills its executors on SIGTERM, but not if it had to be SIGKILLed.
            for child in children:
                if alive(child):
                    terminate(child, 5)
            for p in (pid, *children):
                _wait_all_threads_gone(p)
            stopped.append(daemon)
        paths.pid_file(daemon).unlink(missing_ok=True)
    paths.spec_file.unlink(missing_ok=True)
    return stopped


def status(settings: Settings | None = None) -> dict:
    """Which of our daemons run, and the master's view of the workers (empty if it does not answer)."""
    paths = ClusterPaths((settings or get_settings()).state_dir)
    spec = read_spec(paths)
    if spec is None:
        return {"running": False, "daemons": {}}
    daemons = {d: running_pid(paths, d) for d in daemon_names(spec)}
    try:
        state = master_state(spec)
    except (OSError, ValueError, http.client.HTTPException):
        state = {}
    return {
        "running": daemons["spark-master"] is not None,
        "master_url": spec.master_url,
        "webui_url": spec.webui_url,
        "daemons": daemons,
        "alive_workers": state.get("aliveworkers", 0),
        "cores": state.get("cores", 0),
        "active_apps": [a.get("name") for a in state.get("activeapps", [])],
    }


@app.command("start")
def start_cmd(
    cores: int = typer.Option(None, min=1, help="Cores each worker offers [default: this machine's, shared]."),
) -> None:
    """Start a master and workers on 127.0.0.1 and wait until the workers registered.

    Ports, worker count and memory: RECSYS_SPARK_CLUSTER_PORT, _WEBUI_PORT, _WORKERS, RECSYS_SPARK_WORKER_MEMORY.
    """
    s = get_settings()
    try:
        spec = start(
            s,
            master_port=s.spark_cluster_port,
            webui_port=s.spark_cluster_webui_port,
            workers=s.spark_cluster_workers,
            worker_cores=cores,
            worker_memory=s.spark_worker_memory,
        )
    except (ClusterError, FileNotFoundError) as e:
        typer.secho(f"Spark cluster did not start: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"Spark cluster up: {spec.master_url} ({spec.workers} x {spec.worker_cores} cores), "
        f"UI {spec.webui_url}\nrun the jobs on it: export RECSYS_SPARK_MASTER={spec.master_url}"
    )


@app.command("stop")
def stop_cmd() -> None:
    """Stop the workers and the master `start` launched."""
    stopped = stop()
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "Spark cluster was not running")


@app.command("status")
def status_cmd() -> None:
    """Say whether our cluster runs and how many workers the master sees (exit 3 if not running)."""
    st = status()
    if not st["running"]:
        typer.echo("Spark cluster not running")
        raise typer.Exit(3)
    typer.echo(
        f"Spark cluster running: {st['master_url']}, {st['alive_workers']} workers alive, "
        f"{st['cores']} cores, UI {st['webui_url']}, active apps {st['active_apps']}"
    )


if __name__ == "__main__":
    app()
