"""publish: choose the best candidate, put it through the quality gate, then promote and announce it.

A nightly run trains several candidates (one per recommender); the best by NDCG@k
from `evaluate` is put through the gate, the others are recorded as not chosen
(the registry keeps every candidate's metrics). The gate:
  - the candidate must beat popularity by a margin: ndcg >= (1 + min_lift) * popularity's, and
  - must not regress against the current published model: ndcg >= (1 - max_regression) * current's.
A failed gate publishes nothing, records why in the registry, and exits non-zero.

With `--as-challenger` the chosen candidate is published as an A/B test's challenger instead: it must still beat
popularity, but not the champion (how it compares with the champion online is what the test measures); it moves
to the challengers' folder, not the published one, and no MODEL message is sent, so the champion stays served and
the speed layer keeps folding events into the champion. Serving answers the test's challenger arm from it once
RECSYS_AB_CHALLENGER_VERSION names it (docs/ab-tests.md).

Publishing is re-runnable: if a crash came after the promotion but before the
MODEL message, running it again sends the message.

    spark-submit jobs/publish.py --model-version m2026... [--as-challenger]
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Annotated, TypedDict

import typer

from jobs.common import record_in_registry, run_cli, setup_logging
from recsys import erasure, protocol
from recsys.contracts.manifest import ModelManifest
from recsys.io import model_store
from recsys.io.kafka import ensure_topics, producer
from recsys.protocol import ModelMessage, Topics
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.publish")
GATE_FAILED_EXIT = 3


@dataclass
class Decision:
    passed: bool
    reason: str
    path: model_store.Location | None = None


def gate(candidate: ModelManifest, current: ModelManifest | None, s: Settings) -> Decision:
    key = f"ndcg@{s.eval_k}"
    if key not in candidate.metrics or key not in candidate.baseline_metrics:
        return Decision(False, f"candidate {candidate.model_version} has no {key}: run evaluate first")
    new, popular = candidate.metrics[key], candidate.baseline_metrics[key]
    needed = (1 + s.gate_min_lift) * popular
    if new < needed:
        return Decision(False, f"{key} {new:.4f} < {needed:.4f} = (1 + {s.gate_min_lift}) x popularity {popular:.4f}")
    if current is not None and key in current.metrics:
        floor = (1 - s.gate_max_regression) * current.metrics[key]
        if new < floor:
            return Decision(
                False,
                f"{key} {new:.4f} < {floor:.4f} = (1 - {s.gate_max_regression}) x current "
                f"{current.model_version}'s {current.metrics[key]:.4f}",
            )
    vs_current = f", current {current.metrics.get(key, float('nan')):.4f}" if current else ", no current model"
    return Decision(True, f"{key} {new:.4f} vs popularity {popular:.4f}{vs_current}")


def choose(versions: list[str], s: Settings) -> tuple[str, list[tuple[str, str]]]:
    """The candidate with the best NDCG@k, and why each other one was not chosen."""
    key = f"ndcg@{s.eval_k}"
    scored = []
    for version in versions:
        manifest = model_store.read_manifest(model_store.candidate(version, s))
        scored.append((manifest.metrics.get(key, float("-inf")), version, manifest.engine))
    scored.sort(reverse=True)
    best_score, best, best_engine = scored[0]
    others = [(v, f"not chosen: {key} {score:.4f} < {best_score:.4f} of {best_engine}") for score, v, _ in scored[1:]]
    return best, others


class _Candidate(TypedDict):
    engine: str
    silver_version: int | None
    settings: Settings


def publish(model_versions: str | list[str], settings: Settings | None = None, as_challenger: bool = False) -> Decision:
    """Publish the best of the candidates (one version or a nightly run's set) if it passes the gate: as the
    champion (announced), or as an A/B test's challenger (`as_challenger`: not announced, the champion stays)."""
    s = settings or get_settings()
    versions = [model_versions] if isinstance(model_versions, str) else list(model_versions)
    place = model_store.challenger if as_challenger else model_store.published
    already = [v for v in versions if model_store.exists(place(v, s))]
    if already and not model_store.exists(model_store.candidate(already[0], s)):
        if as_challenger:
            return Decision(True, "already published as a challenger", place(already[0], s))
        log.info("%s was already promoted; sending its MODEL message again", already[0])
        announce(already[0], model_store.published(already[0], s), s)
        return Decision(True, "already published; MODEL message re-sent", model_store.published(already[0], s))
    model_version, others = choose(versions, s)
    for version, reason in others:
        manifest = model_store.read_manifest(model_store.candidate(version, s))
        record_in_registry(
            version,
            "not_chosen",
            engine=manifest.engine,
            silver_version=manifest.silver_table_version,
            path=str(model_store.candidate(version, s)),
            reason=reason,
            metrics=manifest.metrics,
            settings=s,
        )
    candidate_path = model_store.candidate(model_version, s)

    candidate = model_store.read_manifest(candidate_path)
    current_path = model_store.latest_published(s)
    current = model_store.read_manifest(current_path) if current_path and not as_challenger else None
    decision = gate(candidate, current, s)
    common: _Candidate = {"engine": candidate.engine, "silver_version": candidate.silver_table_version, "settings": s}
    if not decision.passed:
        record_in_registry(
            model_version,
            "rejected",
            path=str(candidate_path),
            reason=decision.reason,
            metrics=candidate.metrics,
            **common,
        )
        return decision
    # Users forgotten while this model was trained on data from before their request leave it first.
    erasure.erase_from_model(candidate_path, erasure.requests(s), s)
    decision.path = model_store.promote(candidate_path, s, as_challenger=as_challenger)
    status = "challenger" if as_challenger else "published"
    record_in_registry(
        model_version, status, path=str(decision.path), reason=decision.reason, metrics=candidate.metrics, **common
    )
    if not as_challenger:  # a MODEL message would make it the champion everywhere
        announce(model_version, decision.path, s)
    return decision


def announce(model_version: str, path: model_store.Location, s: Settings) -> None:
    """Tell the speed and serving layers where the new model is (never the model itself)."""
    ensure_topics(s)
    prod = producer(s)
    key, value = protocol.encode(ModelMessage(model_version=model_version, path=str(path)))
    prod.send(Topics.MODEL_UPDATES, key=key, value=value).get(timeout=30)
    prod.close()


def main(
    model_version: Annotated[list[str], typer.Option(help="Candidate version(s); the best one goes through the gate.")],
    as_challenger: Annotated[
        bool, typer.Option(help="Publish it as an A/B test's challenger; the champion stays served.")
    ] = False,
) -> None:
    """Publish the best candidate if it passes the quality gate."""
    setup_logging()
    decision = publish(model_version, as_challenger=as_challenger)
    print(json.dumps({"published": decision.passed, "reason": decision.reason, "path": str(decision.path or "")}))
    if not decision.passed:
        log.error("quality gate failed, nothing published: %s", decision.reason)
        sys.exit(GATE_FAILED_EXIT)


if __name__ == "__main__":
    run_cli(main)
