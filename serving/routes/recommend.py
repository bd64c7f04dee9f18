"""The recommendation reads: for a user (one or a batch), like an item, bought with it, why, and what is popular.

A plain, valid `GET /recommend/{user_id}` is answered before it gets here, by `serving.fast.FastRecommend`;
this route answers everything that middleware hands on, and is the source of truth for both.
"""

from collections import Counter
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from recsys.privacy import pseudonymise
from recsys.settings import Settings
from serving import metrics
from serving.dependencies import (
    ERRORS,
    PRIVATE,
    AppSettings,
    Categories,
    Category,
    Excluded,
    ItemId,
    K,
    Model,
    PerCategory,
    UserId,
    check_category,
    check_item,
    k_or,
    pseudonym,
    require_token,
)
from serving.impressions import new_request_id, new_request_ids
from serving.model import Ranked, ServingModel, UnknownId
from serving.schemas import (
    BatchRecommendations,
    BatchRequest,
    Contribution,
    Error,
    Explanation,
    Item,
    Popular,
    Recommendations,
    Similar,
)

router = APIRouter(tags=["recommendations"])


# Registered before /recommend/{user_id}, which would otherwise also match this path (as user "batch") and
# answer an OPTIONS here with its own methods.
@router.post(
    "/recommend/batch",
    response_model=BatchRecommendations,
    responses={**PRIVATE, 400: {"model": Error}},  # 400: a body that is not JSON
    dependencies=[Depends(require_token)],
)
async def recommend_batch(body: BatchRequest, model: Model, request: Request, s: AppSettings) -> Response:
    """`GET /recommend/{user_id}` for many users in one call (e-mails, campaigns): per user, in the request's
    order, exactly the answer the single call gives with the same options, all from one model version;
    scored through the model's batched path (`recommend_many`) in the serving micro-batches. Needs the token:
    it reads many users' personal recommendations at once, and costs as much as that many requests. Every list
    is the champion's, during an A/B test too (a campaign is not part of the test; docs/ab-tests.md)."""
    if len(body.user_ids) > s.serving_max_batch_users:
        raise HTTPException(
            422,
            f"body.user_ids: at most {s.serving_max_batch_users} users per request "
            f"(RECSYS_SERVING_MAX_BATCH_USERS), got {len(body.user_ids)}",
        )
    k = s.serving_default_k if body.k is None else body.k
    if k > s.serving_max_k:
        raise HTTPException(422, f"body.k: Input should be less than or equal to {s.serving_max_k}")
    too_long = next((n for n, u in enumerate(body.user_ids) if len(u) > s.max_id_length), None)
    if too_long is not None:
        raise HTTPException(422, f"body.user_ids[{too_long}] longer than {s.max_id_length} characters")
    check_category(model, body.category)
    state = request.app.state
    pseudonyms = [pseudonymise(u, state.pseudonym_key) for u in body.user_ids]
    queries = [model.prepare(p, k, body.exclude_seen, body.category, body.explain) for p in pseudonyms]
    answers = await state.batcher.submit_many(model, queries)
    request_ids = new_request_ids(len(answers))
    for source, count in Counter(ranked.source for ranked in answers).items():
        metrics.ANSWERS.labels(source).inc(count)
    state.impressions.shown_many(request_ids, pseudonyms, model.version, [ranked.item_ids for ranked in answers])
    # Each answer as the single call's bytes (serving/fast.py's renderer, for the whole batch at once): building
    # and validating a thousand response models would cost more than ranking the users.
    renderer = state.renderer
    version = renderer.dumps(model.version).encode()
    results = renderer.render_many(model, pseudonyms, answers, request_ids)
    return Response(b'{"model_version":' + version + b',"results":[' + results + b"]}", media_type="application/json")


@router.get("/recommend/{user_id}", response_model=Recommendations, responses=ERRORS)
async def recommend(
    user_id: UserId,
    model: Model,
    request: Request,
    k: K,
    exclude_seen: bool = True,
    category: Categories = None,
    explain: bool = False,
    exclude: Excluded = None,
    max_per_category: PerCategory = None,
) -> Recommendations:
    """Top-k items for a user from the served recommender's view of them: their history and latest events
    including what the speed layer saw since the batch model, else the batch model's view, else the most
    popular items. `exclude_seen` leaves out items the user had the configured event types on
    (RECSYS_SERVING_EXCLUDE_EVENT_TYPES) and items they just viewed or carted (RECSYS_SERVING_RECENT_EXCLUDE_S);
    `category` keeps the items of one or several catalogue categories (any case); `exclude` leaves out the
    caller's item ids; `max_per_category` caps how many items of one category come back; `explain` adds
    "because you viewed X" per item. Items the shop cannot sell (item updates: sold out, hidden) never do."""
    user = pseudonym(request, user_id)
    arm_model, variant = request.app.state.follower.model_for(user)
    model = arm_model or model  # the shopper's arm of an A/B test (serving.follower)
    check_category(model, category)
    for item in exclude or []:
        check_item(item, request.app.state.settings)
    query = model.prepare(
        user, k, exclude_seen, category, explain, exclude=exclude or [], max_per_category=max_per_category
    )
    ranked = await request.app.state.batcher.submit(model, query)
    metrics.ANSWERS.labels(ranked.source).inc()
    request_id = new_request_id()
    request.app.state.impressions.shown(request_id, user, model.version, ranked.item_ids, "recommend", variant)
    return Recommendations(
        request_id=request_id,
        user_id=user,
        model_version=model.version,
        source=ranked.source,
        as_of_ms=ranked.as_of_ms,
        items=items(model, ranked),
    )


@router.get("/similar/{item_id}", response_model=Similar, responses=ERRORS)
async def similar(item_id: ItemId, model: Model, k: K, s: AppSettings) -> Similar:
    """Items like this one by the served model (co-occurrence, factors or attributes); for an item the model
    knows nothing of, the most popular items of its category (`source` says which)."""
    return _related(model, model.similar, item_id, k, s)


@router.get("/bought-together/{item_id}", response_model=Similar, responses=ERRORS)
async def bought_together(item_id: ItemId, model: Model, k: K, s: AppSettings) -> Similar:
    """Items shoppers carted or bought in the same session as this one; for an item nobody bought with
    anything, the most popular items of its category (`source` says which)."""
    return _related(model, model.bought_together, item_id, k, s)


def _related(model: ServingModel, rank: Callable[[str, int], Ranked], item_id: str, k: int, s: Settings) -> Similar:
    """The answer of an item's route: `rank`'s items for it (404 for an item the model cannot rank at all)."""
    check_item(item_id, s)
    try:
        ranked = rank(item_id, k)
    except UnknownId as e:
        raise HTTPException(404, str(e)) from None
    return Similar(item_id=item_id, model_version=model.version, source=ranked.source, items=items(model, ranked))


@router.get("/because/{user_id}/{item_id}", response_model=Explanation, responses=ERRORS)
async def because(
    user_id: UserId, item_id: ItemId, model: Model, request: Request, k: Annotated[int, Depends(k_or(5))]
) -> Explanation:
    """The user's own items that contribute most to their score of `item_id`, by the model of the user's arm
    of an A/B test (the model that recommended it to them)."""
    user = pseudonym(request, user_id)
    arm_model, _ = request.app.state.follower.model_for(user)
    model = arm_model or model
    check_item(item_id, request.app.state.settings)
    try:
        score, shares = model.because(user, item_id, k)
    except UnknownId as e:
        raise HTTPException(404, str(e)) from None
    contributions = [Contribution(item_id=i, title=model.item_meta(i)[0], contribution=c) for i, c in shares]
    return Explanation(user_id=user, item_id=item_id, model_version=model.version, score=score, because=contributions)


@router.get("/popular", response_model=Popular, responses=ERRORS)
async def popular(model: Model, k: K, category: Category = None) -> Popular:
    """The items most users interacted with in the batch model's data."""
    check_category(model, category)
    category = model.canonical_category(category) if category is not None else None
    return Popular(model_version=model.version, category=category, items=items(model, model.popular(k, category)))


def items(model: ServingModel, ranked: Ranked) -> list[Item]:
    """A ranked list as the answer's items, with each item's title and category."""
    out = []
    reasons = ranked.reasons or [None] * len(ranked.item_ids)
    for item_id, score, fresh, why in zip(ranked.item_ids, ranked.scores, ranked.from_speed, reasons, strict=True):
        title, category = model.item_meta(item_id)
        out.append(Item(item_id=item_id, score=score, title=title, category=category, from_speed=fresh, because=why))
    return out
