"""The item catalogue: titles, categories, prices and tags, for display, business filters and content models.

Product data belongs to the shop, not to the event stream, so it is its own Delta
table (`Tables.CATALOG`), overwritten whole by whoever loads it: `recsys catalog
movielens|synthetic` for the data sets this project ships. The serving layer
reads the latest version when it loads a model; an item missing from the
catalogue is still recommended, just without a title or category.
"""

from __future__ import annotations

import pyarrow as pa

from recsys.contracts.tables import CATALOG_SCHEMA, Tables
from recsys.data.movielens import load_items
from recsys.data.synthetic import SyntheticConfig, item_category, item_price
from recsys.io import lake
from recsys.settings import Settings, get_settings


def write(table: pa.Table, settings: Settings | None = None) -> int:
    """Replace the catalogue with `table` (item_id, title, category; price and tags optional). Returns the version."""
    for name in ("price", "tags"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, CATALOG_SCHEMA.field(name).type))
    table = table.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)
    ids = table.column("item_id")
    if ids.null_count:
        raise ValueError("catalogue rows need an item_id")
    if len(set(ids.to_pylist())) != len(ids):
        raise ValueError("catalogue item ids must be unique")
    path = Tables.path(Tables.CATALOG, settings or get_settings())
    return lake.write(path, table, mode="overwrite")


def read(settings: Settings | None = None) -> dict[str, tuple[str | None, str | None]]:
    """item_id -> (title, category) from the latest version; empty if no catalogue was loaded."""
    path = Tables.path(Tables.CATALOG, settings or get_settings())
    if not lake.exists(path):
        return {}
    table = lake.read(path)
    return dict(
        zip(
            table.column("item_id").to_pylist(),
            zip(table.column("title").to_pylist(), table.column("category").to_pylist(), strict=True),
            strict=True,
        )
    )


def attributes(settings: Settings | None = None) -> dict[str, tuple[str | None, str | None, float | None, str]]:
    """item_id -> (category, title, price, tags) from the latest version: what content models read."""
    path = Tables.path(Tables.CATALOG, settings or get_settings())
    if not lake.exists(path):
        return {}
    t = lake.read(path)
    columns = [t.column(c).to_pylist() for c in ("item_id", "category", "title", "price", "tags")]
    return {i: (c, title, p, tags or "") for i, c, title, p, tags in zip(*columns, strict=True)}


def movielens() -> pa.Table:
    """MovieLens-100K's films: title with year, first genre as the category."""
    items = load_items()
    titles = [f"{t} ({y})" if y else t for t, y in zip(items["title"], items["year"], strict=True)]
    categories = [g[0] if g else None for g in items["genres"]]
    tags = ["|".join(g) for g in items["genres"]]
    return pa.table(
        {
            "item_id": items["item_id"].tolist(),
            "title": titles,
            "category": categories,
            "price": pa.nulls(len(titles), pa.float64()),
            "tags": tags,
        }
    )


def synthetic(n_items: int, n_categories: int, seed: int = 0) -> pa.Table:
    """The synthetic stream's items (`item-<j>`) with the categories and prices the generator draws them with."""
    config = SyntheticConfig(n_items=n_items, n_categories=n_categories, seed=seed)
    cats = item_category(config)
    return pa.table(
        {
            "item_id": [f"item-{j}" for j in range(n_items)],
            "title": [f"Product {j}" for j in range(n_items)],
            "category": [f"category-{c}" for c in cats],
            "price": item_price(config),
            "tags": [f"category-{c}" for c in cats],
        }
    )
