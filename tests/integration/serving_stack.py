"""A whole local stack for serving tests: its own broker and state, a published model, the speed layer
and the serving process, each a real process talking over TCP."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from published_models import CATALOGUE, produce, publish_model, write_catalogue

from infra import broker as broker_process
from infra import processes
from infra.broker import free_port
from recsys.contracts.events import Event
from recsys.privacy import pseudonymise
from recsys.settings import Settings

TOKEN = "test-write-token-0123456789abcdef"


@dataclass
class Stack:
    s: Settings
    url: str
    events: list[Event]
    procs: dict = field(default_factory=dict)

    def raw_user(self, n: int) -> str:
        return f"user-{n}"  # the synthetic generator's raw ids; the service pseudonymises them

    def pseudonym(self, raw: str) -> str:
        return pseudonymise(raw, self.s.pseudonym_key_bytes())


def start_stack(state: Path, n_events: int = 4_000, model: str = "implicit_als", **overrides) -> Stack:
    port = free_port()
    s = Settings(
        state_dir=state,
        kafka_bootstrap=f"127.0.0.1:{port}",
        pseudonym_key=os.environ["RECSYS_PSEUDONYM_KEY"],
        serving_port=free_port(),
        serving_write_token=TOKEN,
        **{"speed_metrics_port": 0, **overrides},
    )
    broker_process.start(s)
    events = produce(s, seed=1, n=n_events)
    write_catalogue(s)
    publish_model(s, events, "m20260101T000000000000", model)
    stack = Stack(s, processes.serving_url(s), events)
    stack.procs["speed"] = processes.start("speed_layer", s, "--instance-id", "speed-test", log=state / "speed.log")
    stack.procs["serving"] = processes.start("serving", s, log=state / "serving.log")
    processes.wait_ready(s, stack.procs["serving"])
    return stack


def stop_stack(stack: Stack) -> None:
    for proc in stack.procs.values():
        processes.stop(proc)
    broker_process.stop(stack.s)


def call(method: str, url: str, body: object = None, token: str | None = None, raw: bytes | None = None):
    """(status, parsed JSON body) of one HTTP request; never raises for 4xx/5xx."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            payload = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


def get(stack: Stack, path: str):
    return call("GET", stack.url + path)


def wait_for(predicate, timeout_s: float = 15, every_s: float = 0.1):
    """Poll until `predicate()` returns something truthy; return it (or fail with the last value)."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s; last value {value!r}")


__all__ = ["CATALOGUE", "TOKEN", "Stack", "call", "get", "start_stack", "stop_stack", "wait_for"]
