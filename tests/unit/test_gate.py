"""The publish gate's decision, on manifests alone."""

from jobs.publish import gate
from recsys.contracts.manifest import ModelManifest
from recsys.settings import Settings

S = Settings(gate_min_lift=0.1, gate_max_regression=0.05, eval_k=10)


def manifest(ndcg: float | None, popularity: float = 0.1, version: str = "new") -> ModelManifest:
    return ModelManifest(
        model_version=version,
        created_at_ms=0,
        engine="spark_als",
        params={"rank": 8},
        n_users=1,
        n_items=1,
        metrics={} if ndcg is None else {"ndcg@10": ndcg},
        baseline_metrics={"ndcg@10": popularity},
    )


def test_passes_when_it_beats_popularity_and_there_is_no_current_model():
    decision = gate(manifest(0.2), None, S)
    assert decision.passed and "no current model" in decision.reason


def test_fails_when_not_clearly_better_than_popularity():
    decision = gate(manifest(0.105), None, S)
    assert not decision.passed and "popularity" in decision.reason


def test_fails_on_regression_beyond_tolerance_and_passes_within_it():
    current = manifest(0.30, version="old")
    assert not gate(manifest(0.28), current, S).passed
    assert gate(manifest(0.29), current, S).passed


def test_unevaluated_candidate_never_passes():
    decision = gate(manifest(None), None, S)
    assert not decision.passed and "evaluate" in decision.reason
