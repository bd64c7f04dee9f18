"""`python -m serving [--port 8000]`: the HTTP service, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os

# One OpenMP thread (faiss): the setting is per thread, and searches run on the event loop, not where the
# index is built. Idle OpenMP workers spinning on two cores stalled requests for up to 1.5 s in the bench.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import shutil
import tempfile
from pathlib import Path
from typing import TypedDict

import typer
import uvicorn

from recsys.logs import setup_json_logging
from recsys.settings import get_settings
from serving.api import create_app


class _UvicornOptions(TypedDict):
    host: str
    port: int
    log_level: str
    access_log: bool


def main(
    host: str = typer.Option(None, help="Interface to bind (default RECSYS_SERVING_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default RECSYS_SERVING_PORT)."),
    workers: int = typer.Option(None, help="Worker processes (default RECSYS_SERVING_WORKERS)."),
) -> None:
    """Serve recommendations from the latest published model plus the speed layer's updates."""
    setup_json_logging()
    overrides = {"serving_host": host, "serving_port": port, "serving_workers": workers}
    s = get_settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    where = f"http://{s.serving_host}:{s.serving_port}"
    token = "RECSYS_SERVING_WRITE_TOKEN" if s.serving_write_token else s.secrets_dir / "serving.token"
    print(f"serving on {where} (API docs at /docs, storefront at /storefront); write token: {token}", flush=True)
    common: _UvicornOptions = {
        "host": s.serving_host,
        "port": s.serving_port,
        "log_level": "warning",
        "access_log": False,
    }
    if s.serving_workers == 1:
        uvicorn.run(create_app(s), **common)
        return
    # Several processes on one socket, each a full replica (own model copy, own model-updates reader);
    # factor files are memory-mapped, so their pages are shared. Metrics are summed across workers.
    metrics_dir = Path(tempfile.mkdtemp(prefix="serving-metrics-", dir=s.state_dir))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.update(s.as_env())  # the workers read their settings from the environment
    try:
        uvicorn.run("serving.api:app_from_environment", factory=True, workers=s.serving_workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
