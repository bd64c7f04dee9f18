"""The session-aware hybrid: a validation-tuned blend of the other recommenders, then a logistic re-ranker.

blend.py       stage 1: per-user normalisation and the weighted sum (one definition for fit, scores, serving)
reranker.py    stage 2: popularity priors and the logistic re-ranker
candidates.py  two-stage serving: candidates from each component, then stage 1 and 2 over them only
model.py       the `Hybrid` recommender (fit and tuning, real time, files)
"""

from recsys.models.hybrid.model import DEFAULT_WEIGHTS, Hybrid, HybridParams, HybridRealtime

__all__ = ["DEFAULT_WEIGHTS", "Hybrid", "HybridParams", "HybridRealtime"]
