"""The operator's reads: the served model, the registry, attribution, live figures, one user or item (the
dashboard's JSON, `serving/static/dashboard.html`), and the shoppers with the longest histories."""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request

from serving import ops
from serving.dependencies import (
    ERRORS,
    PRIVATE,
    AppSettings,
    ItemId,
    K,
    Model,
    UserId,
    check_item,
    k_or,
    pseudonym,
    require_token,
)
from serving.model import UnknownId
from serving.schemas import Error, ModelInfo, Shopper, Shoppers

log = logging.getLogger(__name__)

router = APIRouter()


@router.get(
    "/admin/shoppers",
    response_model=Shoppers,
    tags=["admin"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": Error}, 403: {"model": Error}, 503: {"model": Error}},
)
async def shoppers(model: Model, k: Annotated[int, Depends(k_or(20))]) -> Shoppers:
    """The shoppers with the longest histories in the served model's data, by pseudonym (for the storefront's
    picker and for operators; needs the token: pseudonyms are still personal data)."""
    return Shoppers(model_version=model.version, shoppers=[Shopper(user_id=u, events=n) for u, n in model.shoppers(k)])


@router.get("/models", response_model=ModelInfo, responses=ERRORS, tags=["operations"])
async def models(model: Model, s: AppSettings) -> ModelInfo:
    """The model being served, its evaluation, and how much the speed layer has added to it."""
    m = model.manifest
    return ModelInfo(
        model_version=m.model_version,
        engine=m.engine,
        created_at_ms=m.created_at_ms,
        params=m.params,
        n_users=m.n_users,
        n_items=m.n_items,
        new_items=model.n_items - model.n_base,
        speed_users=model.speed_users,
        speed_updates_applied=model.speed_updates,
        index=s.serving_index,
        metrics=m.metrics,
        baseline_metrics=m.baseline_metrics,
        kafka_offsets=m.kafka_offsets,
    )


@router.get("/ops/registry", tags=["operations"], responses={503: {"model": Error}})
def ops_registry(request: Request, s: AppSettings) -> dict:
    """Every model version in the registry (`model_registry` table): its statuses over time (published,
    rejected, not_chosen, evaluated), NDCG@k next to the popularity baseline's, the reason, which is served."""
    current = request.app.state.follower.current
    try:
        return ops.registry(s, current.version if current else None, f"ndcg@{s.eval_k}")
    except Exception as e:  # an unreadable table is the operator's news, not a crash
        log.warning("could not read the model registry: %s", e)
        raise HTTPException(503, f"the model registry could not be read: {type(e).__name__}") from None


@router.get("/ops/attribution", tags=["operations"], responses={503: {"model": Error}})
def ops_attribution(request: Request) -> dict:
    """CTR and conversion per model version and variant, by hour of the answers shown, over the latest
    RECSYS_OPS_ATTRIBUTION_HOURS: the `impressions` table joined with the bronze events that carry an answer's
    `request_id` (serving/attribution.py); recomputed at most every RECSYS_OPS_ATTRIBUTION_CACHE_S. While an A/B
    test runs (RECSYS_AB_CHALLENGER_VERSION), `ab` compares its arms: answers clicked and converted per arm with
    95 % intervals, the z-test's p-value, which arm is better and whether significantly (serving/ab_report.py)."""
    try:
        view = request.app.state.attribution.view()
    except Exception as e:  # an unreadable table is the operator's news, not a crash
        log.warning("could not compute the attribution: %s", e)
        raise HTTPException(503, f"the impressions or events table could not be read: {type(e).__name__}") from None
    if view.get("ab") is None:
        return view
    challenger = request.app.state.follower.challenger  # whether this process can answer the challenger arm at all
    return {**view, "ab": {**view["ab"], "challenger_loaded": challenger is not None}}


@router.get("/ops/live", tags=["operations"])
def ops_live(s: AppSettings) -> dict:
    """Live figures from Prometheus metrics (this server's and the speed layer's, when
    RECSYS_SPEED_METRICS_PORT is set): lag, event and update counters, dead letters by reason, answers by
    source, update-to-serve delay. Rates come from two readings (the dashboard polls)."""
    return ops.live(s)


@router.get("/ops/users/{user_id}", tags=["operations"], dependencies=[Depends(require_token)], responses=PRIVATE)
async def ops_user(user_id: UserId, model: Model, request: Request, k: K) -> dict:
    """One user: their events since the model's cut-off and in the model's data, and their recommendations
    now with source and explanation (needs the token: this is personal data)."""
    return ops.user_view(model, pseudonym(request, user_id), k)


@router.get("/ops/items/{item_id}", tags=["operations"], responses=ERRORS)
async def ops_item(item_id: ItemId, model: Model, k: K, s: AppSettings) -> dict:
    """One item: attributes, similar items, bought together, and how many users touched it, by event type."""
    check_item(item_id, s)
    try:
        return ops.item_view(model, item_id, k)
    except UnknownId as e:
        raise HTTPException(404, str(e)) from None
