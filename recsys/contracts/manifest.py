"""The model artifact's manifest: what every model directory says about itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


# --- the model artifact's manifest -----------------------------------------------------
class Objective(BaseModel):
    """Which implicit-ALS objective the factors minimise; the speed layer folds in with exactly this.

    confidence: `one_plus_alpha_r` (Spark MLlib, Hu et al.) is c = 1 + alpha*r;
    `alpha_r` (the `implicit` library) is c = alpha*r.
    reg_scaling: `count` (Spark, ALS-WR) is lambda_u = reg * |I(u)|; `none` is lambda_u = reg.
    """

    confidence: Literal["one_plus_alpha_r", "alpha_r"]
    reg_scaling: Literal["count", "none"]
    alpha: float = Field(gt=0)
    reg: float = Field(ge=0)


class ModelManifest(BaseModel):
    """`manifest.json` in each model directory. Written last, so a directory without it is incomplete."""

    model_version: str
    created_at_ms: int
    engine: Literal["spark_als", "implicit"]
    objective: Objective
    rank: int = Field(gt=0)
    hyperparameters: dict[str, Any]
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


MANIFEST_FILE = "manifest.json"
