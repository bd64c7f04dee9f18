"""What a supervisor polls: liveness, readiness, Prometheus metrics."""

from fastapi import APIRouter, Request, Response

from serving import metrics
from serving.follower import ModelFollower
from serving.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up (it may not have a model yet: see /ready)."""
    return Health()


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(request: Request, response: Response) -> Readiness:
    """Ready once a model is loaded and the updates published before start are applied."""
    follower: ModelFollower = request.app.state.follower
    if not follower.ready:
        response.status_code = 503
    current = follower.current
    return Readiness(
        ready=follower.ready,
        model_version=current.version if current else None,
        caught_up=follower.caught_up.is_set(),
        error=follower.error,
    )


@router.get("/metrics", response_class=Response)
def prometheus() -> Response:
    """Prometheus metrics."""
    body, media_type = metrics.exposition()
    return Response(body, media_type=media_type)
