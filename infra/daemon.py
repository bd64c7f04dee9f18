"""Background processes we start and find again by PID file: Kafka nodes, HDFS daemons, Spark's master and
workers, Airflow's processes, the demo's services.

A `Daemon` is configuration: its PID file, its log, and what its command line must hold. A PID file alone
proves nothing (PIDs are recycled), so a PID is ours only if `/proc/<pid>/cmdline` holds every mark and
the process is alive; nothing is ever looked up or killed by name. The rest is what every such daemon
needs: spawn it once, stop it (SIGTERM, SIGKILL after a timeout), check its ports, show its log's tail.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


# --- processes ---------------------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """Whether any thread of the process still runs.

    A process whose main thread has exited shows as a zombie while its other threads (a JVM's,
    a broker's I/O threads) still hold its sockets, so a zombie leader with live tasks is alive.
    """
    # Reap it if it is our child (tests start it in-process); harmless otherwise.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return any(_task_state(task) not in ("Z", "X") for task in Path(f"/proc/{pid}/task").glob("*"))


def _task_state(task: Path) -> str:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until none of `pids` is alive, at most `timeout_s`; returns those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def terminate_all(pids: Iterable[int], timeout_s: float, *, group: bool = False, kill_wait_s: float = 30) -> None:
    """SIGTERM every process at once (each shuts down in parallel), then SIGKILL those still there after
    `timeout_s`. With `group`, the signals go to each one's whole process group (it leads its session)."""
    pids = list(pids)
    send = os.killpg if group else os.kill
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGTERM)
    left = wait_gone(pids, timeout_s)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGKILL)
    wait_gone(left, kill_wait_s)


def terminate(pid: int, timeout_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if the process has not gone after `timeout_s`."""
    os.kill(pid, signal.SIGTERM)
    if wait_gone([pid], timeout_s):
        os.kill(pid, signal.SIGKILL)


def cmdline(pid: int, retries: int = 20) -> list[bytes]:
    """The process's arguments. They read empty for a moment while it execs (spark-class `exec`s java): look
    again before taking it for someone else. Raises OSError if there is no such process."""
    raw = b""
    for _ in range(retries):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        if raw:
            break
        time.sleep(0.05)
    return raw.split(b"\0")


# --- one daemon ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Daemon:
    """A background process of ours: where its PID and output go, and what tells it from any other process.

    `marks`: arguments its command line must hold, each as a whole argument (a main class, a config file
    this state folder owns). `text_marks`: strings the command line must merely contain (for programs that
    may rename their arguments, as Airflow's processes do).
    """

    name: str
    pid_file: Path
    log: Path
    marks: tuple[str, ...] = ()
    text_marks: tuple[str, ...] = ()

    def pid(self) -> int | None:
        """Its PID if the PID file names a live process with our marks, else None (a recycled PID is never ours)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            if not alive(pid):
                return None
            args = cmdline(pid)
        except (OSError, ValueError):
            return None
        text = b"\0".join(args)
        ours = all(m.encode() in args for m in self.marks) and all(m.encode() in text for m in self.text_marks)
        return pid if ours else None

    def spawned_alive(self) -> bool:
        """Whether the process we just spawned is still there (by PID file alone: too young to be recycled, and
        right after exec the kernel may not show its new command line yet)."""
        try:
            return alive(int(self.pid_file.read_text().strip()))
        except (OSError, ValueError):
            return False

    def spawn(self, cmd: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        """Start `cmd` in its own session (Ctrl-C in a terminal goes to us, not to it), output to the log,
        and record its PID. Returns the PID."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:  # the child gets its own copy of the descriptor
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def start_once(self, cmd: list[str], **kwargs) -> int:
        """Spawn it unless it runs already; returns the PID either way."""
        pid = self.pid()
        return pid if pid is not None else self.spawn(cmd, **kwargs)

    def stop(self, timeout_s: float = 15, *, group: bool = False) -> bool:
        """SIGTERM (then SIGKILL after `timeout_s`) if it runs; forget its PID file. Returns whether it ran."""
        return stop_all([self], timeout_s, group=group)

    def tail(self, chars: int = 1500) -> str:
        return tail(self.log, chars)


def stop_all(daemons: Iterable[Daemon], timeout_s: float, *, group: bool = False) -> bool:
    """Stop every running one of `daemons` in parallel (see `terminate_all`) and remove their PID files.
    Returns whether any was running."""
    daemons = list(daemons)
    pids = [pid for d in daemons if (pid := d.pid()) is not None]
    terminate_all(pids, timeout_s, group=group)
    for d in daemons:
        d.pid_file.unlink(missing_ok=True)
    return bool(pids)


def tail(path: Path, chars: int = 1500) -> str:
    """The end of a log file under a header naming it, or "" if there is no such file."""
    if not path.exists():
        return ""
    return f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}"


def tails(paths: Iterable[Path], chars: int = 1500) -> str:
    return "\n".join(t for p in paths if (t := tail(p, chars)))


# --- ports ---------------------------------------------------------------------------------------------------
def port_taken(port: int, host: str = HOST) -> bool:
    """Whether something accepts connections on the port."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def wait_port_free(port: int, timeout_s: float = 5) -> bool:
    """Whether the port is free, waiting up to `timeout_s` (a daemon that just stopped may still hold it)."""
    deadline = time.monotonic() + timeout_s
    while port_taken(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not port_taken(port)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago, as was the one after it (for tests and benchmarks that
    start their own Kafka, whose controller takes the next port by default).

    Chosen below the kernel's ephemeral range: a client reconnecting in a loop to a
    stopped server on an ephemeral port can be handed that very port as its source
    and connect to itself, which then holds the port and keeps the server from restarting.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, low) if low > 11_000 else 0
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            port = sock.getsockname()[1]
        if bindable(port + 1):
            return port
    raise OSError("no free port found on 127.0.0.1")


def free_ports(n: int) -> int:
    """The first of `n` consecutive ports on 127.0.0.1 that were free a moment ago (a local cluster's)."""
    for _ in range(100):
        first = free_port()
        if all(bindable(first + i) for i in range(2, n + 1)):
            return first
    raise OSError(f"no {n} consecutive free ports found on 127.0.0.1")


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
