"""Helpers shared by the speed-layer and serving tests: events on the real broker, and real published models.

`publish_model` fits a real recommender on real events and publishes the artifact the
way `jobs.train` + `jobs.publish` do (model_store.save, promote), without Spark's
aggregation step, so a test gets a published model in about a second.
"""

from __future__ import annotations

import pandas as pd

from recsys import registry
from recsys.contracts.events import Event, validate_event
from recsys.data import catalog
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.evaluation.protocol import dataset_from_events
from recsys.io import model_store
from recsys.io.kafka import end_offsets
from recsys.protocol import Topics
from recsys.replay import replay

CATALOGUE = {"n_users": 300, "n_items": 150, "n_categories": 5}


def produce(s, seed: int, n: int, malformed: float = 0.0, **catalogue) -> list[Event]:
    """Replay `n` synthetic messages into `events`; returns the valid ones."""
    config = SyntheticConfig(n_events=n, seed=seed, malformed_share=malformed, **{**CATALOGUE, **catalogue})
    messages = list(iter_messages(config, key=s.pseudonym_key_bytes()))
    assert replay(messages, settings=s, progress=False).sent == n
    return [e for _, v in messages if isinstance(e := validate_event(v, s), Event)]


def write_catalogue(s, **catalogue) -> None:
    c = {**CATALOGUE, **catalogue}
    catalog.write(catalog.synthetic(c["n_items"], c["n_categories"]), s)


def publish_model(
    s,
    events: list[Event],
    version: str,
    model: str = "implicit_als",
    spark=None,
    rank: int = 16,
    as_challenger: bool = False,
) -> model_store.ModelArtifact:
    """Fit a recommender on `events` and publish it as covering everything in `events` so far (as an A/B test's
    challenger with `as_challenger`: the champion stays)."""
    weights = s.event_weights
    frame = pd.DataFrame(
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "ts": [e.ts_ms for e in events],
            "weight": [weights[e.event_type] for e in events],
            "event_type": [e.event_type for e in events],
        }
    )
    data, _ = dataset_from_events(frame, event_types=list(weights))
    overrides = {"rank": rank, "iterations": 6, "reg": 1.0 if model == "implicit_als" else 0.1, "alpha": 1.0}
    recommender = registry.create(model, s, overrides if "als" in model else None)
    recommender.fit(data, spark)
    manifest = model_store.build_manifest(recommender, data, version, kafka_offsets=end_offsets(Topics.EVENTS, s))
    artifact = model_store.ModelArtifact(manifest, data, recommender)
    model_store.promote(model_store.save_candidate(artifact, s), s, as_challenger=as_challenger)
    return artifact
