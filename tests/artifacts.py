"""Hand-made model artifacts for unit tests: an ALS model from given factors, without fitting anything."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.data.inputs import Dataset, EventLog, ItemAttributes
from recsys.io import model_store
from recsys.models.als import ImplicitALS, Objective, SparkALS

EVENT_TYPES = ["view", "add_to_cart", "purchase"]


def als_artifact(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    interactions: sp.csr_matrix,
    objective: Objective,
    version: str = "m20260101T000000000000",
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
    seen_types: sp.csr_matrix | None = None,
    events: EventLog | None = None,
    items: ItemAttributes | None = None,
    kafka_offsets: dict[int, int] | None = None,
) -> model_store.ModelArtifact:
    """An ALS artifact whose factors are the given ones, under `objective` (which picks the engine)."""
    n_users, n_items = interactions.shape
    data = Dataset(
        np.array(user_ids or [f"u{i}" for i in range(n_users)]),
        np.array(item_ids or [f"i{j}" for j in range(n_items)]),
        sp.csr_matrix(interactions, dtype=np.float32),
        EVENT_TYPES,
        events or EventLog.empty(),
        seen_types,
        items,
    )
    cls = ImplicitALS if objective.confidence == "alpha_r" else SparkALS
    model = cls(cls.Params(rank=item_factors.shape[1], reg=objective.reg, alpha=objective.alpha))
    model.user_factors = np.asarray(user_factors, dtype=np.float32)
    model.item_factors = np.asarray(item_factors, dtype=np.float32)
    model.n_items = n_items
    manifest = model_store.build_manifest(model, data, version, kafka_offsets=kafka_offsets or {})
    return model_store.ModelArtifact(manifest, data, model)
