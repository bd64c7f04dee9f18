"""evaluate: score a candidate's recipe on a time-based holdout, next to the popularity baseline.

A model trained on all data cannot be scored on that data, so the job re-fits the
candidate's recommender with its exact hyper-parameters on the per-user time split
of the same silver snapshot (each user's latest 20% of events are held out), then
computes P/R/F1/NDCG/MAP@k, AUC and coverage for it and for item popularity on the
same split. The numbers go into the candidate's manifest and the registry, where
`publish` reads them.

    spark-submit jobs/evaluate.py --model-version m2026...
"""

from __future__ import annotations

import json
import logging
from typing import TypedDict

import pandas as pd
import typer
from pyspark.sql import SparkSession

from jobs.common import record_in_registry, run_cli, setup_logging, spark_session, timed
from recsys import registry
from recsys.contracts.tables import Tables
from recsys.data import catalog
from recsys.evaluation.protocol import evaluate as score_on
from recsys.evaluation.protocol import make_split
from recsys.io import lake, model_store
from recsys.models.popularity import Popularity
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.evaluate")


def silver_events(spark: SparkSession, version: int | None, settings: Settings) -> pd.DataFrame:
    """The snapshot's events as the evaluation protocol wants them: user_id, item_id, ts (epoch ms), weight, type."""
    silver = lake.spark_read(spark, Tables.path(Tables.SILVER_INTERACTIONS, settings), version)
    columns = ["user_id", "item_id", "unix_millis(ts) as ts", "weight", "event_type"]
    if "session_id" in silver.columns:
        columns.append("session_id")
    return silver.selectExpr(*columns).toArrow().to_pandas()


class _Sampling(TypedDict):
    k: int
    max_users: int
    seed: int


def evaluate(spark: SparkSession, model_version: str, settings: Settings | None = None) -> dict[str, dict]:
    s = settings or get_settings()
    path = model_store.candidate(model_version, s)
    manifest = model_store.read_manifest(path)
    items = catalog.attributes(s)
    with timed("time split"):
        split = make_split(
            silver_events(spark, manifest.silver_table_version, s),
            test_share=s.eval_test_share,
            event_types=manifest.event_types,
            items=items or None,
            item_universe=list(items) or None,
        )
    log.info("split: %d train users, %d test events", split.train.n_users, split.n_test_events)
    cls = registry.model_class(manifest.engine)
    model = cls(cls.Params.model_validate(manifest.params))
    with timed(f"re-fit {manifest.engine} on the train part"):
        model.fit(split.train, spark)
    common: _Sampling = {"k": s.eval_k, "max_users": s.eval_max_users, "seed": s.als_seed}
    metrics = score_on(model, split, **common)
    popularity = Popularity()
    popularity.fit(split.train)
    baseline = score_on(popularity, split, **common)

    model_store.update_manifest(path, manifest.model_copy(update={"metrics": metrics, "baseline_metrics": baseline}))
    record_in_registry(
        model_version,
        "evaluated",
        engine=manifest.engine,
        silver_version=manifest.silver_table_version,
        path=str(path),
        metrics={"model": metrics, "popularity": baseline},
        settings=s,
    )
    return {"model": metrics, "popularity": baseline}


def format_metrics(results: dict[str, dict]) -> str:
    names = [k for k in next(iter(results.values())) if k != "n_users"]
    lines = [f"{'':<12}" + "".join(f"{n:>13}" for n in names)]
    for model, m in results.items():
        lines.append(f"{model:<12}" + "".join(f"{m[n]:>13.4f}" for n in names))
    return "\n".join(lines)


def main(model_version: str = typer.Option(..., help="Candidate model version to evaluate.")) -> None:
    """Evaluate a candidate against the popularity baseline on a time-based holdout."""
    setup_logging()
    spark = spark_session("evaluate")
    results = evaluate(spark, model_version)
    print(format_metrics(results))
    print(json.dumps(results))
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
