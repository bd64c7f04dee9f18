"""Start and stop the local Kafka-protocol broker (the pinned `noida-db` wheel, Kafka only).

    python -m infra.broker start   # background, waits until it answers, creates the topics
    python -m infra.broker status
    python -m infra.broker stop

The process is tracked by the PID file in `<state_dir>/broker/`; it is never looked
up or killed by name. It binds to 127.0.0.1 only. With `RECSYS_KAFKA_BOOTSTRAP`
pointing at a real Kafka cluster, skip this script: nothing else changes.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import typer

from infra.processes import terminate
from recsys.io.kafka import BrokerUnavailable, ensure_topics, wait_for_broker
from recsys.settings import Settings, get_settings

app = typer.Typer(
    help="The local Kafka-protocol broker.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)


@dataclass(frozen=True)
class BrokerPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "broker.log"


def broker_binary() -> Path:
    """The broker executable inside the installed wheel (run directly, so its PID is the broker's)."""
    binary = Path(str(files("noida_db").joinpath("noida-db")))
    if not binary.is_file():
        raise FileNotFoundError(f"noida-db binary not found at {binary}; run `make venv`")
    binary.chmod(0o755)
    return binary


def running_pid(paths: BrokerPaths) -> int | None:
    """PID of our broker if the PID file names a live process that is that broker, else None."""
    try:
        pid = int(paths.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    # A recycled PID belongs to another program: check it is this broker on this data folder.
    if str(paths.data).encode() in cmdline and any(c.endswith(b"noida-db") for c in cmdline):
        return pid
    return None


def start(settings: Settings | None = None, timeout_s: float = 30.0) -> int:
    """Start the broker in the background unless it runs; wait for it; create topics. Returns its PID."""
    s = settings or get_settings()
    paths = BrokerPaths(s.broker_dir)
    pid = running_pid(paths)
    if pid is None:
        pid = _spawn(paths, s.broker_port)
    try:
        wait_for_broker(s, timeout_s)
    except BrokerUnavailable as e:
        tail = paths.log_file.read_text()[-2000:] if paths.log_file.exists() else ""
        raise BrokerUnavailable(f"{e}\n--- {paths.log_file} ---\n{tail}") from None
    ensure_topics(s)
    return pid


def _spawn(paths: BrokerPaths, port: int) -> int:
    deadline = time.monotonic() + 5  # a broker that just stopped may take a moment to let go of its port
    while _port_taken(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _port_taken(port):
        raise BrokerUnavailable(
            f"port {port} on 127.0.0.1 is taken by another program; stop it or set RECSYS_BROKER_PORT "
            f"and RECSYS_KAFKA_BOOTSTRAP to a free port"
        )
    paths.data.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(broker_binary()), "start", "--only", "kafka", "--host", "127.0.0.1",
        "--kafka-port", str(port), "--data-dir", str(paths.data),
    ]  # fmt: skip
    with paths.log_file.open("ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    paths.pid_file.write_text(str(proc.pid))
    return proc.pid


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for tests and benchmarks that start their own broker).

    Chosen below the kernel's ephemeral range: a client reconnecting in a loop to a
    stopped server on an ephemeral port can be handed that very port as its source
    and connect to itself, which then holds the port and keeps the server from restarting.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, low) if low > 11_000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port found on 127.0.0.1")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def stop(settings: Settings | None = None, timeout_s: float = 300.0) -> bool:
    """Stop our broker (SIGTERM, then SIGKILL after `timeout_s`). Returns whether one was running.

    The timeout is long on purpose: noida-db writes everything it holds to one file on SIGTERM
    (13 s for 300 MB here, more under load), and a SIGKILL before it is done loses what it took
    since its last write, acknowledged or not.
    """
    paths = BrokerPaths((settings or get_settings()).broker_dir)
    pid = running_pid(paths)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return False
    terminate(pid, timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    return True


@app.command("start")
def start_cmd() -> None:
    """Start the broker on 127.0.0.1 and create the topics."""
    s = get_settings()
    try:
        pid = start(s)
    except (BrokerUnavailable, FileNotFoundError) as e:
        typer.secho(f"broker did not start: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"broker up: pid {pid}, bootstrap {s.kafka_bootstrap}, data in {BrokerPaths(s.broker_dir).data}")


@app.command("stop")
def stop_cmd() -> None:
    """Stop the broker started by `start` (data is kept)."""
    typer.echo("broker stopped" if stop() else "broker was not running")


@app.command("status")
def status_cmd() -> None:
    """Say whether our broker runs."""
    pid = running_pid(BrokerPaths(get_settings().broker_dir))
    typer.echo(f"broker running: pid {pid}" if pid else "broker not running")
    raise typer.Exit(0 if pid else 3)


if __name__ == "__main__":
    app()
