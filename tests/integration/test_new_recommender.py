"""Adding a recommender is one file and one registry line: a toy one, written here, goes through every layer.

train (Spark reads the silver snapshot) → evaluate → publish (gate, MODEL message) →
speed layer (its UPs) → serving (an in-process FastAPI app on the real broker), using
nothing but the recommender interface.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from published_models import produce

import recsys.models
from jobs.archiver import Archiver
from jobs.clean import clean
from jobs.evaluate import evaluate
from jobs.publish import publish
from jobs.train import train
from recsys import protocol, registry
from recsys.contracts.events import Event
from recsys.io import model_store
from recsys.replay import replay
from serving.api import create_app
from speed_layer.service import SpeedLayer

pytestmark = pytest.mark.integration

TOY = '''
"""Popularity, plus: the item right after the one you touched last (by position) comes first."""
from pathlib import Path

import numpy as np

from recsys.models.base import Params, Recommender
from recsys.models.capabilities import with_new_items


class Toy(Recommender):
    name = "toy"
    Params = Params

    def fit(self, data, spark=None):
        self.n_items = data.n_items
        pop = data.popularity()
        self.pop = pop / max(float(pop.max()), 1.0)

    def score(self, users, new=None):
        out = np.tile(self.pop, (len(users), 1)).astype(np.float32)
        for r, user in enumerate(users):
            if len(user.recent):
                out[r, (int(user.recent[-1]) + 1) % self.n_items] += 10.0
        return with_new_items(self, users, out, new)  # items newer than the model: -inf, it cannot rank them

    def save(self, directory: Path):
        np.save(directory / "toy.npy", self.pop)
        return {"toy": "toy.npy"}

    @classmethod
    def load(cls, directory, params, data):
        model = cls(params)
        model.pop, model.n_items = np.load(directory / "toy.npy"), data.n_items
        return model
'''


@pytest.fixture
def toy_registered(tmp_path, monkeypatch):
    (tmp_path / "toy_recommender.py").write_text(TOY)  # the one new file
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.MODELS, "toy", "toy_recommender:Toy")  # the one registry line
    yield
    sys.modules.pop("toy_recommender", None)


def test_a_toy_recommender_goes_through_every_layer(isolated_stack, spark, toy_registered):
    s = isolated_stack.model_copy(update={"gate_min_lift": -1.0})  # the toy need not beat popularity
    produce(s, seed=21, n=2_000)
    archiver = Archiver(s)
    archiver.run(until_caught_up=True)
    archiver.close()
    clean(spark, settings=s)

    version = protocol.new_version(model="toy")
    path = train(spark, version, "toy", settings=s)
    assert model_store.read_manifest(path).engine == "toy"
    results = evaluate(spark, version, settings=s)
    assert results["model"]["n_users"] > 0 and "ndcg@10" in results["model"]
    assert publish(version, s).passed
    artifact = model_store.load(model_store.published_dir(s) / version)
    assert type(artifact.model).__name__ == "Toy"

    # A shopper touches an item: the speed layer publishes their latest events, serving ranks the next item first.
    user = str(artifact.user_ids[0])
    touched = set(artifact.interactions[0].indices.tolist())
    item_pos = next(p for p in range(artifact.data.n_items - 1) if p + 1 not in touched)
    event = Event(
        event_id=uuid.uuid4().hex,
        user_id=user,
        item_id=str(artifact.item_ids[item_pos]),
        event_type="view",
        ts=int(time.time() * 1000),
    )
    replay([(event.key(), event.to_wire())], settings=s, progress=False)
    layer = SpeedLayer(s, "toy-speed")
    try:
        layer.run(max_idle_s=3)
    finally:
        layer.close()

    with TestClient(create_app(s)) as client:
        deadline = time.monotonic() + 30
        answer: dict = {}
        while time.monotonic() < deadline:
            status, answer = (r := client.get(f"/recommend/{user}?k=3")).status_code, r.json()
            if status == 200 and answer["source"] == "speed":
                break
            time.sleep(0.2)
        assert answer["model_version"] == version and answer["source"] == "speed", answer
        assert answer["items"][0]["item_id"] == str(artifact.item_ids[item_pos + 1])
        assert client.get("/models").json()["engine"] == "toy"


def test_the_registry_names_every_model_file():
    """The registry and the files agree: every file in recsys/models that defines a Recommender is registered."""
    folder = Path(recsys.models.__file__).parent
    registered = {spec.split(":")[0].rsplit(".", 1)[1] for spec in registry.MODELS.values()}
    shared = {
        "__init__",
        "base",
        "capabilities",
        "sparse",
        "sparse_product",
        "norm_index",
        "item_to_item",
        "neural",
    }
    packages = {p.parent.name for p in folder.glob("*/__init__.py")}  # a model may be a package (the hybrid)
    assert ({p.stem for p in folder.glob("*.py")} | packages) - shared == registered
