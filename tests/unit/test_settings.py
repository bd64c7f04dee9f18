"""One settings module, one prefix named in the README, and docs/configuration.md documents exactly its fields."""

from pathlib import Path

import pytest

from recsys.settings import CONFIGURATION_DOC, ENV_PREFIX, PROJECT_ROOT, Settings, markdown_table


def test_environment_variables_with_the_prefix_configure_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("RECSYS_EVENT_WEIGHTS", '{"view": 1, "wishlist": 2}')
    monkeypatch.setenv("RECSYS_STATE_DIR", str(tmp_path))
    s = Settings()
    assert s.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert s.event_weights == {"view": 1.0, "wishlist": 2.0}
    assert s.lake_root == str(Path(tmp_path) / "lake")


def test_default_event_weights():
    assert Settings(event_weights=Settings.model_fields["event_weights"].default_factory()).event_weights == {
        "view": 1.0,
        "add_to_cart": 3.0,
        "purchase": 5.0,
    }


@pytest.mark.parametrize("weights", [{}, {"view": 0}, {"view": -1}])
def test_bad_event_weights_are_refused(weights):
    with pytest.raises(ValueError):
        Settings(event_weights=weights)


def test_the_configuration_doc_documents_exactly_the_settings():
    doc = CONFIGURATION_DOC.read_text()
    assert markdown_table() in doc, (
        "regenerate docs/configuration.md's table with `python -m recsys.settings --write-docs`"
    )


def test_the_readme_names_the_prefix_and_its_settings_rows_are_the_generated_ones():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert f"`{ENV_PREFIX}`" in readme and "(docs/configuration.md)" in readme
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    generated = set(markdown_table().splitlines())
    assert rows and [r for r in rows if r not in generated] == [], "copy these rows from docs/configuration.md"


def test_the_lake_is_a_local_folder_or_an_hdfs_uri(tmp_path):
    from recsys.contracts.tables import Tables

    assert Settings(state_dir=tmp_path).lake_root == str(tmp_path / "lake")
    on_hdfs = Settings(state_dir=tmp_path, lake_uri="hdfs://127.0.0.1:8020/recsys/lake/")
    assert Tables.path(Tables.BRONZE_EVENTS, on_hdfs) == "hdfs://127.0.0.1:8020/recsys/lake/bronze_events"
    assert Settings(state_dir=tmp_path, lake_uri="file:///srv/lake").lake_root == "/srv/lake"
    with pytest.raises(ValueError, match="lake_uri must be"):
        Settings(state_dir=tmp_path, lake_uri="s3://bucket/lake")
