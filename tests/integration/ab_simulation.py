"""A simulated shopper population for A/B tests on the real stack (tests/integration/test_serving.py).

The shoppers are the stack's synthetic users; what each one *truly* wants is what they do next: the items of their
events in the synthetic stream's continuation (the events after the ones the models were fitted on, never sent to
Kafka). A shopper shown a list clicks the first item they want, if any, with the answer's request id; a model
that predicts the shoppers' next items better gets more answers clicked. The planned rates come from the models
themselves, scored in this process (`planned_rates`), as a pilot would give them before a test.
"""

from __future__ import annotations

from dataclasses import dataclass

from published_models import CATALOGUE
from serving_stack import TOKEN, Stack, call, get

from recsys.contracts.events import Event, validate_event
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.io import model_store
from serving.model import ServingModel

FUTURE_EVENTS = 1_500  # the continuation's length: a few next items per shopper
K = 10


@dataclass
class Shopper:
    raw: str  # the shop's id, as the storefront sends it
    pseudonym: str
    wants: frozenset[str]


def population(stack: Stack) -> list[Shopper]:
    """The stack's users the model knows and who do something next, with the items they do it on."""
    n = len(stack.events)
    config = SyntheticConfig(n_events=n + FUTURE_EVENTS, seed=1, **CATALOGUE)  # the stack's stream, continued
    stream = [
        e
        for _, v in iter_messages(config, key=stack.s.pseudonym_key_bytes())
        if isinstance(e := validate_event(v, stack.s), Event)
    ]
    assert [e.event_id for e in stream[:n]] == [e.event_id for e in stack.events]  # the same stream, longer
    wants: dict[str, set[str]] = {}
    for e in stream[n:]:
        wants.setdefault(e.user_id, set()).add(e.item_id)
    known = {e.user_id for e in stack.events}
    shoppers = []
    for u in range(CATALOGUE["n_users"]):
        raw = stack.raw_user(u)
        pseudonym = stack.pseudonym(raw)
        if pseudonym in known and pseudonym in wants:
            shoppers.append(Shopper(raw, pseudonym, frozenset(wants[pseudonym])))
    return shoppers


def planned_rates(stack: Stack, shoppers: list[Shopper], versions: list[str]) -> list[float]:
    """Each model's share of shoppers whose top K holds an item they want, scored here from the model store."""
    rates = []
    for version in versions:
        served = ServingModel(model_store.load(model_store.find(version, stack.s)), {}, stack.s)
        rates.append(
            sum(bool(set(served.recommend(p.pseudonym, K).item_ids) & p.wants) for p in shoppers) / len(shoppers)
        )
    return rates


def visit(stack: Stack, shopper: Shopper) -> tuple[str, str | None]:
    """One visit: the shopper's answer, and a click on the first item they want (with its request id) if any.
    Returns (the model version that answered, the item clicked or None)."""
    status, answer = get(stack, f"/recommend/{shopper.raw}?k={K}")
    assert status == 200, answer
    wanted = [i["item_id"] for i in answer["items"] if i["item_id"] in shopper.wants]
    if wanted:
        click = {"user_id": shopper.raw, "item_id": wanted[0], "event_type": "view", "request_id": answer["request_id"]}
        assert call("POST", f"{stack.url}/events", click, TOKEN)[0] == 202
    return answer["model_version"], wanted[0] if wanted else None
