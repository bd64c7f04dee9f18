"""One batch pipeline run (clean -> train -> evaluate -> publish) in this process, timed per step.

Run by `bench.run` in a child process, so the parent can sample the peak memory of
the whole process tree (Python driver + Spark's JVM) and nothing is shared between runs.
The jobs read and write the lake with delta-spark (recsys.io.lake); `bench.run --baseline REF`
runs the same file of an earlier commit next to it (e.g. the staging-commit path).
Prints one JSON line with the step times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import typer

from jobs.clean import clean
from jobs.common import blas_in_use, run_cli, spark_session
from jobs.evaluate import evaluate
from jobs.publish import publish
from jobs.train import train
from recsys import protocol

T = TypeVar("T")


def main(engine: str = typer.Option(...)) -> None:
    """Clean, train, evaluate and publish once; print the timings as JSON."""
    t0 = time.monotonic()
    spark = spark_session("bench")
    steps: dict[str, float] = {"spark_start": time.monotonic() - t0}
    version = protocol.new_version(model=engine)

    def step(name: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        out = fn()
        steps[name] = time.monotonic() - started
        return out

    report = step("clean", lambda: clean(spark))
    step("train", lambda: train(spark, version, engine))
    metrics = step("evaluate", lambda: evaluate(spark, version))
    decision = step("publish", lambda: publish(version))
    print(
        json.dumps(
            {
                "lake": "delta-spark",
                "steps_s": steps,
                "rows_in": report.rows_in,
                "rows_out": report.rows_out,
                "blas": blas_in_use(spark),
                "ndcg@10": metrics["model"]["ndcg@10"],
                "popularity_ndcg@10": metrics["popularity"]["ndcg@10"],
                "published": decision.passed,
            }
        )
    )
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
