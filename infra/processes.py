"""Start and stop the project's long-running processes (speed layer, serving) with a given configuration.

Used by the demo, the benchmarks and the integration tests, so all three run the
services exactly as an operator would: `python -m <package>` in its own process,
configured only through RECSYS_* environment variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from recsys.settings import PROJECT_ROOT, Settings


def start(module: str, s: Settings, *args: str, log: Path | None = None, **env: str) -> subprocess.Popen:
    """`python -m module args...` with the settings `s` (and `env` on top) in its environment."""
    with open(log or os.devnull, "ab") as out:  # the child gets its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **s.as_env(), **env},
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop the children ourselves
        )


def stop(proc: subprocess.Popen, timeout_s: float = 15) -> int:
    """SIGTERM, then SIGKILL if it has not stopped in time. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def serving_url(s: Settings) -> str:
    return f"http://{s.serving_host}:{s.serving_port}"


def wait_ready(s: Settings, proc: subprocess.Popen | None = None, timeout_s: float = 60) -> dict:
    """Wait until the serving process answers GET /ready with 200; returns its body.

    With several workers each answers for itself and the kernel picks one per connection,
    so readiness must hold for several fresh connections in a row.
    """
    deadline = time.monotonic() + timeout_s
    last, confirmed = "no answer", 0
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the serving process exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{serving_url(s)}/ready", timeout=2) as r:
                body = json.loads(r.read())
            confirmed += 1
            if confirmed >= 1 + 5 * (s.serving_workers - 1):
                return body
            continue
        except urllib.error.HTTPError as e:
            last, confirmed = e.read().decode(errors="replace"), 0
        except OSError as e:
            last, confirmed = str(e), 0
        time.sleep(0.2)
    raise TimeoutError(f"serving at {serving_url(s)} not ready within {timeout_s:.0f}s: {last}")


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


def terminate(pid: int, timeout_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if the process has not gone after `timeout_s`."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


# --- background services of the demo (speed layer, serving), found again by PID file --------------
SERVICES = {"speed": ("speed_layer", "--instance-id", "speed-demo"), "serving": ("serving",)}


def _pid_file(name: str, s: Settings) -> Path:
    return s.state_dir / "run" / f"{name}.pid"


def service_pid(name: str, s: Settings) -> int | None:
    """The PID of our running service `name`, checked against its command line (a recycled PID is never ours)."""
    try:
        pid = int(_pid_file(name, s).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    module = SERVICES[name][0].encode()
    return pid if module in cmdline and alive(pid) else None


def start_service(name: str, s: Settings) -> int:
    """Start a service in the background (logs in <state>/logs/<name>.log); a running one is kept."""
    pid = service_pid(name, s)
    if pid is not None:
        return pid
    logs = s.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    module, *args = SERVICES[name]
    proc = start(module, s, *args, log=logs / f"{name}.log")
    _pid_file(name, s).parent.mkdir(parents=True, exist_ok=True)
    _pid_file(name, s).write_text(str(proc.pid))
    return proc.pid


def stop_service(name: str, s: Settings, timeout_s: float = 15) -> bool:
    """SIGTERM (then SIGKILL) our service `name`. Returns whether it was running."""
    pid = service_pid(name, s)
    _pid_file(name, s).unlink(missing_ok=True)
    if pid is None:
        return False
    terminate(pid, timeout_s)
    return True


if __name__ == "__main__":
    import typer

    from recsys.settings import get_settings

    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

    @cli.callback()
    def services() -> None:
        """The background services `make demo` starts."""

    @cli.command("stop")
    def stop_cmd() -> None:
        """Stop the speed layer and serving processes the demo started."""
        for service in SERVICES:
            if stop_service(service, get_settings()):
                typer.echo(f"{service} stopped")

    cli()
