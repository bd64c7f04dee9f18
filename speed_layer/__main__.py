"""`python -m speed_layer [--instance-id speed-1]`: run one speed-layer instance until SIGTERM."""

from __future__ import annotations

import typer

from recsys.logs import setup_json_logging
from speed_layer.service import serve


def main(
    instance_id: str = typer.Option(None, help="Static group member id (default RECSYS_SPEED_INSTANCE_ID)."),
) -> None:
    """Fold new events into user and item vectors and publish them on `model-updates`."""
    setup_json_logging()
    serve(instance_id=instance_id)


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
