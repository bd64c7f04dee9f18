"""Content-based recommendations from item attributes: what a cold item is like before anyone clicks it.

Each catalogue item becomes a TF-IDF vector over its attributes (the category, the
tags, the title's words, the decade of a year in the title, the price band), scaled to
unit length. A user's profile is the recency-weighted sum of their latest items'
vectors; an item's score is its cosine with that profile:

    score(u, j) = Σ_t decay^(age_t) · f_{i_t} · f_j

Every catalogue item has a vector from the moment it is in the catalogue, so a new
visitor's first click on an item nobody has touched already has neighbours, and
`similar_items` of a cold item answers from its attributes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recsys.data.inputs import Dataset, ItemAttributes, NewItems, UserContext
from recsys.models.base import AnyParams, Params, Reason, Recommender
from recsys.models.capabilities import SimilarSource, with_new_items
from recsys.models.item_to_item import largest
from recsys.models.sparse import recent_weights, top_n_per_row

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_WORD = re.compile(r"[a-z0-9]+")
_YEAR = re.compile(r"\((\d{4})\)")
STOPWORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "of",
        "and",
        "in",
        "on",
        "to",
        "for",
        "with",
        "at",
        "by",
        "from",
        "la",
        "le",
        "les",
        "de",
        "des",
        "el",
        "los",
        "das",
        "der",
        "die",
        "und",
    ]
)


class ContentParams(Params):
    last: int = Field(20, ge=1, description="The user's latest events that make up their profile.")
    decay: float = Field(0.9, gt=0, le=1)
    tie_ms: int = Field(1000, ge=0, description="Events within one window ts // tie_ms share an age (0: by row).")
    title_weight: float = Field(0.5, ge=0, description="Weight of title words against category and tags.")
    neighbours: int = Field(100, ge=1, description="Items kept per item for `similar_items`.")


class Content(Recommender):
    name = "content"
    Params = ContentParams

    def __init__(self, params: ContentParams | None = None) -> None:
        super().__init__(params)
        self.params: ContentParams
        self.features = sp.csr_matrix((0, 0), dtype=np.float32)  # unit rows: items × attribute tokens
        self.vocabulary: list[str] = []

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        self.n_items = data.n_items
        self.features, self.vocabulary = item_features(data.attributes, self.params.title_weight)

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        # F · (profile F)ᵀ with the profile dense (it lives on the few attribute tokens): one pass over F, where the
        # sparse × sparse product would build a row as long as the catalogue (every item shares some token).
        profile = (self._weights(users) @ self.features).toarray().astype(np.float32)
        scores = np.ascontiguousarray(np.asarray(self.features @ profile.T, dtype=np.float32).T)
        return with_new_items(self, users, scores, new)

    def _weights(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        p = self.params
        return recent_weights(users, self.n_items, p.last, p.decay, tie_ms=p.tie_ms)

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        row = (self.features[item] @ self.features.T).toarray().ravel()
        row[item] = -np.inf
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        keep = row[order] > 0
        return order[keep].astype(np.int64), row[order][keep].astype(np.float32)

    def similar_source(self, item: int) -> SimilarSource:
        return "content"

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        w = self._weights([user])
        cos = (self.features @ self.features[item].T).toarray().ravel()
        return largest(w.multiply(cos[None, :]).tocsr(), n)

    def item_neighbours(self) -> sp.csr_matrix:
        """Each item's `neighbours` most similar items by attributes (for blending with behaviour)."""
        return top_n_per_row(self.features @ self.features.T, self.params.neighbours)

    def save(self, directory: Path) -> dict[str, str]:
        sp.save_npz(directory / "item_features.npz", self.features)
        (directory / "vocabulary.txt").write_text("\n".join(self.vocabulary))
        return {"item_features": "item_features.npz", "vocabulary": "vocabulary.txt"}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> Content:
        model = cls(cast(ContentParams, params))
        model.features = sp.load_npz(directory / "item_features.npz").tocsr()
        model.vocabulary = (directory / "vocabulary.txt").read_text().split("\n")
        model.n_items = data.n_items
        return model


def tokens(category: str | None, tags: str, title: str | None, price: float, title_weight: float) -> dict[str, float]:
    """An item's attribute tokens and their weights (before IDF)."""
    out: dict[str, float] = {}
    if category:
        out[f"category:{category.lower()}"] = 1.0
    for tag in filter(None, (tags or "").split("|")):
        out[f"tag:{tag.lower()}"] = 1.0
    if title:
        year = _YEAR.search(title)
        if year:
            out[f"decade:{int(year.group(1)) // 10 * 10}"] = 1.0
        for word in _WORD.findall(_YEAR.sub(" ", title.lower())):
            if len(word) > 2 and word not in STOPWORDS and not word.isdigit():
                out[f"word:{word}"] = title_weight
    if price is not None and math.isfinite(price) and price > 0:
        out[f"price:{math.floor(math.log2(price))}"] = 1.0  # bands double in price
    return out


def item_features(attributes: ItemAttributes, title_weight: float) -> tuple[sp.csr_matrix, list[str]]:
    """Unit-length TF-IDF rows over the attribute tokens; an item without attributes gets a zero row."""
    per_item = [
        tokens(c, t, ti, p, title_weight)
        for c, t, ti, p in zip(attributes.category, attributes.tags, attributes.title, attributes.price, strict=True)
    ]
    vocabulary = sorted({tok for toks in per_item for tok in toks})
    index = {tok: j for j, tok in enumerate(vocabulary)}
    rows, cols, vals = [], [], []
    for r, toks in enumerate(per_item):
        for tok, w in toks.items():
            rows.append(r)
            cols.append(index[tok])
            vals.append(w)
    n = len(per_item)
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(vocabulary)), dtype=np.float64)
    df = np.bincount(matrix.indices, minlength=len(vocabulary))
    idf = np.log((1 + n) / (1 + df)) + 1.0
    matrix = matrix @ sp.diags(idf)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    matrix = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix
    return matrix.astype(np.float32).tocsr(), vocabulary
