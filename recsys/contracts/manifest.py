"""The model artifact's manifest: what every model directory says about itself."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MANIFEST_FILE = "manifest.json"


class ModelManifest(BaseModel):
    """`manifest.json` in each model directory. Written last, so a directory without it is incomplete."""

    model_version: str
    created_at_ms: int
    engine: str = Field(description="The recommender's name in recsys.registry.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its hyper-parameters (its Params class).")
    details: dict[str, Any] = Field(
        default_factory=dict, description="What else the model says about itself (ALS: the objective it minimised)."
    )
    n_users: int
    n_items: int
    silver_table_version: int | None = Field(None, description="Delta version of the silver table trained on.")
    kafka_offsets: dict[int, int] = Field(
        default_factory=dict,
        description="Next offset per `events` partition not covered by this model; the speed layer replays from here.",
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    baseline_metrics: dict[str, float] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="Logical name -> file name in the model directory.")
    event_types: list[str] = Field(
        default_factory=list,
        description="Bit i of a `seen_types` entry means event type event_types[i] was seen for that (user, item).",
    )
    fit_seconds: float | None = None
