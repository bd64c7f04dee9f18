"""One settings module, one prefix, and the README documents exactly its fields."""

from pathlib import Path

import pytest

from recsys.settings import PROJECT_ROOT, Settings, markdown_table


def test_environment_variables_with_the_prefix_configure_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("RECSYS_EVENT_WEIGHTS", '{"view": 1, "wishlist": 2}')
    monkeypatch.setenv("RECSYS_STATE_DIR", str(tmp_path))
    s = Settings()
    assert s.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert s.event_weights == {"view": 1.0, "wishlist": 2.0}
    assert s.lake_dir == Path(tmp_path) / "lake"


def test_default_event_weights():
    assert Settings(event_weights=Settings.model_fields["event_weights"].default_factory()).event_weights == {
        "view": 1.0, "add_to_cart": 3.0, "purchase": 5.0,
    }  # fmt: skip


@pytest.mark.parametrize("weights", [{}, {"view": 0}, {"view": -1}])
def test_bad_event_weights_are_refused(weights):
    with pytest.raises(ValueError):
        Settings(event_weights=weights)


def test_readme_configuration_table_matches_the_settings():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the README table with `python -m recsys.settings`"
