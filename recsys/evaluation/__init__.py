"""The offline evaluation protocol: time splits, metrics, and scoring a recommender on them."""
