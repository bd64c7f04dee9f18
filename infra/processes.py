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

from recsys.settings import PROJECT_ROOT, Settings


def start(module: str, s: Settings, *args: str, log: Path | None = None, **env: str) -> subprocess.Popen:
    """`python -m module args...` with the settings `s` (and `env` on top) in its environment."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it open)
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
    """Wait until the serving process answers GET /ready with 200; returns its body."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the serving process exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{serving_url(s)}/ready", timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            last = e.read().decode(errors="replace")
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    raise TimeoutError(f"serving at {serving_url(s)} not ready within {timeout_s:.0f}s: {last}")
