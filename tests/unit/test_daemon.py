"""infra.daemon: the PID-file daemons every local service is configured as (Kafka, HDFS, Spark, Airflow, the demo's).

Real (tiny) processes: what is tested is how PIDs, command lines and signals are read and sent.
"""

import os
import signal
import socket
import sys
import time

from infra import daemon
from infra.daemon import Daemon

SLEEPER = [sys.executable, "-I", "-c", "import time; time.sleep(120)", "recsys-test-sleeper"]
# Ignores SIGTERM, as a daemon stuck in its shutdown would: only SIGKILL ends it.
STUBBORN = [
    sys.executable,
    "-I",
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)",
    "recsys-test-stubborn",
]


def _daemon(tmp_path, *marks: str, text_marks: tuple[str, ...] = ()) -> Daemon:
    return Daemon("t", tmp_path / "run" / "t.pid", tmp_path / "logs" / "t.log", marks=marks, text_marks=text_marks)


def test_a_spawned_daemon_is_found_again_then_stopped_and_forgotten(tmp_path):
    d = _daemon(tmp_path, "recsys-test-sleeper")
    pid = d.spawn(SLEEPER)
    try:
        assert d.pid() == pid and d.pid_file.read_text() == str(pid)
        assert os.getsid(pid) == pid  # its own session: a terminal's Ctrl-C does not reach it
        assert d.start_once(SLEEPER) == pid  # once: a running one is kept, not started twice
        assert d.stop(5) is True
        assert not daemon.alive(pid) and not d.pid_file.exists() and d.pid() is None
        assert d.stop(5) is False  # nothing left to stop
    finally:
        if daemon.alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_pid_file_naming_another_program_is_not_ours(tmp_path):
    # A recycled PID: the file names a live process (this test run) whose command line lacks the marks.
    d = _daemon(tmp_path, "org.apache.hadoop.hdfs.server.namenode.NameNode")
    d.pid_file.parent.mkdir(parents=True)
    d.pid_file.write_text(str(os.getpid()))
    assert d.pid() is None
    assert d.stop(1) is False and daemon.alive(os.getpid())  # and it is never signalled
    # Whole arguments, not parts of one: "ython" is in this run's interpreter path, but no argument is "ython".
    assert _with_pid(_daemon(tmp_path, "ython"), os.getpid()).pid() is None
    assert _with_pid(_daemon(tmp_path, text_marks=("ython",)), os.getpid()).pid() == os.getpid()


def _with_pid(d: Daemon, pid: int) -> Daemon:
    d.pid_file.parent.mkdir(parents=True, exist_ok=True)
    d.pid_file.write_text(str(pid))
    return d


def test_a_daemon_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    d = _daemon(tmp_path, "recsys-test-stubborn")
    pid = d.spawn(STUBBORN)
    try:
        deadline = time.monotonic() + 10
        while "ready" not in d.log.read_text() and time.monotonic() < deadline:  # its SIGTERM handler is set
            time.sleep(0.02)
        started = time.monotonic()
        assert d.stop(0.5) is True
        assert not daemon.alive(pid) and time.monotonic() - started >= 0.5
    finally:
        if daemon.alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert "ready" in d.tail() and d.tail().startswith(f"--- {d.log} ---")


def test_ports_taken_and_freed(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert daemon.port_taken(port) and not daemon.wait_port_free(port, timeout_s=0.2)
    assert not daemon.port_taken(port) and daemon.wait_port_free(port, timeout_s=0.2)
    first = daemon.free_ports(3)
    assert all(daemon.bindable(first + i) for i in range(3))


def test_tail_is_the_end_of_the_log_or_nothing(tmp_path):
    log = tmp_path / "x.log"
    assert daemon.tail(log) == ""
    log.write_text("a" * 100 + "the end")
    assert daemon.tail(log, chars=7) == f"--- {log} ---\nthe end"
    assert daemon.tails([log, tmp_path / "missing.log"], chars=3) == f"--- {log} ---\nend"
