"""The writes: one event into the event log, and a user's erasure. Both need the token."""

import json
import threading
import time
import uuid

from fastapi import APIRouter, Depends, HTTPException, Request
from kafka import KafkaProducer
from kafka.errors import KafkaError

from recsys import erasure
from recsys.contracts.events import Event, validate_event
from recsys.io.kafka import producer
from recsys.protocol import Topics
from recsys.settings import Settings
from serving import metrics
from serving.dependencies import PRIVATE, AppSettings, UserId, pseudonym, require_token
from serving.schemas import EventAccepted, EventIn, ForgetAccepted

# Longest `POST /events` waits for this server's earlier impressions before producing an attributed event.
IMPRESSION_FLUSH_S = 1.0

router = APIRouter(dependencies=[Depends(require_token)])


@router.post("/events", status_code=202, response_model=EventAccepted, responses=PRIVATE, tags=["events"])
def post_event(event: EventIn, request: Request, s: AppSettings) -> EventAccepted:
    """Validate one event, pseudonymise its user id, and produce it to `events`; answers once Kafka has it.
    An event with the `request_id` of an answer is attributed to that list (CTR, conversion: `/ops/attribution`);
    it is produced only once this server's impressions logged before it are (a bounded wait), so an acknowledged
    click never points at a list the impressions log lacks, even if the server is killed right after."""
    body = event.model_dump(exclude_none=True)
    body["user_id"] = pseudonym(request, event.user_id)
    body.setdefault("event_id", uuid.uuid4().hex)
    body.setdefault("ts", int(time.time() * 1000))
    raw = json.dumps(body).encode()
    checked = validate_event(raw, s)
    if not isinstance(checked, Event):
        metrics.EVENTS_REJECTED.labels(checked.reason).inc()
        raise HTTPException(422, f"{checked.reason}: {checked.detail}")
    if checked.request_id is not None:
        request.app.state.impressions.flush(timeout_s=IMPRESSION_FLUSH_S)
    try:
        sent = _producer(request, s).send(Topics.EVENTS, key=checked.key(), value=checked.to_wire()).get(timeout=10)
    except KafkaError as e:
        raise HTTPException(503, f"the event log is unavailable, try again: {type(e).__name__}") from None
    metrics.EVENTS_ACCEPTED.inc()
    return EventAccepted(
        event_id=checked.event_id, user_id=checked.user_id, partition=sent.partition, offset=sent.offset
    )


@router.post(
    "/admin/forget/{user_id}", status_code=202, response_model=ForgetAccepted, responses=PRIVATE, tags=["admin"]
)
def forget(user_id: UserId, request: Request, s: AppSettings) -> ForgetAccepted:
    """Erase a user across all layers (right to erasure). Answers once the request is in the event log
    (a FORGET marker on `events`) and the serving layers are told (a FORGET message on `model-updates`).
    Serving never writes the lake: the archiver, on reaching the marker, records the request and erases the
    user from the lake and the model files (the nightly DAG completes whatever it could not)."""
    user = pseudonym(request, user_id)
    try:
        message = erasure.request(user, s)
    except KafkaError as e:
        raise HTTPException(503, f"the event log is unavailable, try again: {type(e).__name__}") from None
    detail = "speed and serving layers told; the archiver erases the lake and model files"
    return ForgetAccepted(user_id=user, partition=message.partition, offset=message.offset, detail=detail)


def _producer(request: Request, s: Settings) -> KafkaProducer:
    """The app's producer, created on the first event (a server that takes none never connects to Kafka)."""
    state = request.app.state
    lock: threading.Lock = state.producer_lock
    with lock:
        if state.producer is None:
            state.producer = producer(s, linger_ms=0)
        return state.producer
