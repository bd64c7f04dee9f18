"""The one list of recommenders: name -> class. Settings, the DAG's parameters and the CLI read it.

Adding an algorithm is one file in `recsys/models/` and one line here. Classes are
imported only when asked for, so reading the names costs nothing (the DAG parses fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recsys.models.base import Recommender
    from recsys.settings import Settings

MODELS: dict[str, str] = {
    "popularity": "recsys.models.popularity:Popularity",
    "spark_als": "recsys.models.als:SparkALS",
    "implicit_als": "recsys.models.als:ImplicitALS",
    "item_knn": "recsys.models.item_knn:ItemKNN",
    "transitions": "recsys.models.transitions:Transitions",
    "transitions_last": "recsys.models.transitions:TransitionsLast",
    "ease": "recsys.models.ease:EASE",
    "slit": "recsys.models.slit:SLIT",
    "session_knn": "recsys.models.session_knn:SessionKNN",
    "user_knn": "recsys.models.user_knn:UserKNN",
    "user_knn_pearson": "recsys.models.user_knn:UserKnnPearson",
    "content": "recsys.models.content:Content",
    "neumf": "recsys.models.neumf:NeuMF",
    "srgnn": "recsys.models.srgnn:SRGNN",
    "hybrid": "recsys.models.hybrid:Hybrid",
}


def names() -> list[str]:
    return list(MODELS)


def model_class(name: str) -> type[Recommender]:
    try:
        module, cls = MODELS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown recommender {name!r}; choose one of {', '.join(MODELS)}") from None
    return getattr(importlib.import_module(module), cls)


def create(name: str, settings: Settings, overrides: dict | None = None) -> Recommender:
    """A fresh model with the hyper-parameters the settings ask for, `overrides` (validated) on top."""
    cls = model_class(name)
    model = cls.from_settings(settings)
    if not overrides:
        return model
    return cls(cls.Params.model_validate({**model.params.model_dump(), **overrides}))
