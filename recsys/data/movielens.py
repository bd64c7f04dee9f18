"""MovieLens-100K, read from the copy that ships inside the installed `recbole` wheel.

The data is never copied into this repository: its licence asks for it not to be
redistributed, and the wheel already puts it on disk. Ratings become implicit
interactions: every rating says the user engaged with the film, and the rating
only sets how strong that engagement was (its event type).
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from recsys.contracts.events import Event
from recsys.privacy import pseudonymise

DATASET = "ml-100k"
N_RATINGS, N_USERS, N_ITEMS = 100_000, 943, 1_682  # the published sizes, for checks and tests

# Every rating is an interaction; a high rating is treated like a stronger e-commerce signal.
RATING_TO_EVENT: Mapping[int, str] = {5: "purchase", 4: "add_to_cart", 3: "view", 2: "view", 1: "view"}


def ml100k_dir() -> Path:
    """The folder holding `ml-100k.inter` and `ml-100k.item` inside the installed recbole package.

    Found through the import machinery without importing recbole: importing it
    imports torch, which this project does not need or install.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "MovieLens-100K is read from the `recbole` wheel, which is not installed: "
            "run `pip install recbole` (only its data files are used; torch is not needed)."
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "dataset_example" / DATASET
        if (folder / f"{DATASET}.inter").is_file():
            return folder
    raise FileNotFoundError(f"recbole is installed but has no dataset_example/{DATASET}/{DATASET}.inter")


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file as strings, columns renamed from `name:type` to `name`.

    Everything is read as text with quoting off, so ids keep leading zeros and
    titles containing quote characters are not mangled.
    """
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
    return frame.rename(columns=lambda c: c.split(":", 1)[0])


def load_ratings() -> pd.DataFrame:
    """All ratings: `user_id`, `item_id` (raw MovieLens ids, str), `rating` (int), `ts_ms` (int64 epoch ms)."""
    raw = _read_atomic(ml100k_dir() / f"{DATASET}.inter")
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str),
            "item_id": raw["item_id"].astype(str),
            "rating": pd.to_numeric(raw["rating"]).astype(int),
            # The file stores epoch seconds as floats ("881250949"); the project uses epoch ms.
            "ts_ms": (pd.to_numeric(raw["timestamp"]) * 1000).round().astype("int64"),
        }
    )


def _year(value: str) -> str | None:
    """Release year, or None where the file says 'unkonwn' (sic) or nothing."""
    return value if value.isdigit() else None


def load_items() -> pd.DataFrame:
    """The catalogue: `item_id`, `title`, `year` (str or None), `genres` (list; the first is the category)."""
    raw = _read_atomic(ml100k_dir() / f"{DATASET}.item")
    return pd.DataFrame(
        {
            "item_id": raw["item_id"].astype(str),
            "title": raw["movie_title"].astype(str),
            "year": [_year(v) for v in raw["release_year"]],
            "genres": [v.split() for v in raw["class"]],
        }
    )


def attributes() -> dict[str, tuple[str | None, str | None, float | None, str]]:
    """item_id -> (category, title, price, tags): the catalogue as content models read it (no prices here)."""
    items = load_items()
    out: dict[str, tuple[str | None, str | None, float | None, str]] = {}
    for item, title, year, genres in items.itertuples(index=False, name=None):
        out[item] = (genres[0] if genres else None, f"{title} ({year})" if year else title, None, "|".join(genres))
    return out


def iter_events(key: bytes | None = None, mapping: Mapping[int, str] = RATING_TO_EVENT) -> Iterator[Event]:
    """Every rating as an `Event`, in time order (ties by user, then item), user ids pseudonymised.

    Event ids are derived from (user, item), which MovieLens rates at most once,
    so replaying the data twice dedups instead of double counting.
    `key` is the pseudonym HMAC key (None: the settings' key).
    """
    ratings = load_ratings().sort_values(["ts_ms", "user_id", "item_id"], kind="stable")
    # One HMAC per user rather than per rating.
    pseudonyms = {u: pseudonymise(u, key) for u in ratings["user_id"].unique()}
    for user, item, rating, ts_ms in ratings.itertuples(index=False, name=None):
        yield Event(
            event_id=f"ml100k-{user}-{item}",
            user_id=pseudonyms[user],
            item_id=item,
            event_type=mapping[int(rating)],
            ts=int(ts_ms),  # epoch ms; the Event parses it to a UTC datetime
        )
