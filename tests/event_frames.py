"""Small random event frames for evaluation tests (the columns recsys.evaluation.protocol expects)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def random_events(seed: int, n: int, users: int, items: int, times: int) -> pd.DataFrame:
    """`n` events over `users` x `items`, at `times` coarse instants (so many ties inside a user)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, users, n).astype(str),
            "item_id": rng.integers(0, items, n).astype(str),
            "ts": rng.integers(0, times, n) * 1000,
            "weight": rng.choice([1.0, 3.0, 5.0], n),
        }
    )
