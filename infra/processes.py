"""Start and stop the project's long-running processes (speed layer, serving) with a given configuration.

Used by the demo, the benchmarks and the integration tests, so all three run the
services exactly as an operator would: `python -m <package>` in its own process,
configured only through RECSYS_* environment variables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra.daemon import Daemon
from recsys.settings import PROJECT_ROOT, Settings


def start(
    module: str, s: Settings, *args: str, log: Path | None = None, root: Path | None = None, **env: str
) -> subprocess.Popen:
    """`python -m module args...` with the settings `s` (and `env` on top) in its environment; `root`: run the
    code of that checkout instead of this one (`-m` imports from the working directory first)."""
    with open(log or os.devnull, "ab") as out:  # the child gets its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **s.as_env(), **env},
            cwd=root or PROJECT_ROOT,
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


# --- background services of the demo (speed layer, serving), found again by PID file --------------
SERVICES = {"speed": ("speed_layer", "--instance-id", "speed-demo"), "serving": ("serving",)}


def service(name: str, s: Settings) -> Daemon:
    """The demo's service `name`: PID in <state>/run/<name>.pid, log in <state>/logs/<name>.log, and its
    command line runs its module."""
    return Daemon(
        name, s.state_dir / "run" / f"{name}.pid", s.state_dir / "logs" / f"{name}.log", marks=(SERVICES[name][0],)
    )


def service_pid(name: str, s: Settings) -> int | None:
    """The PID of our running service `name`, checked against its command line (a recycled PID is never ours)."""
    return service(name, s).pid()


def start_service(name: str, s: Settings) -> int:
    """Start a service in the background (logs in <state>/logs/<name>.log); a running one is kept."""
    module, *args = SERVICES[name]
    return service(name, s).start_once(
        [sys.executable, "-m", module, *args], env={**os.environ, **s.as_env()}, cwd=PROJECT_ROOT
    )


def stop_service(name: str, s: Settings, timeout_s: float = 15) -> bool:
    """SIGTERM (then SIGKILL) our service `name`. Returns whether it was running."""
    return service(name, s).stop(timeout_s)


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
