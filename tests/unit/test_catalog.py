"""The catalogue table: written whole, read as a lookup, refused when ids are missing or repeated."""

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data import catalog
from recsys.data.movielens import N_ITEMS
from recsys.settings import Settings


def test_round_trip_and_overwrite(tmp_path):
    s = Settings(state_dir=tmp_path)
    assert catalog.read(s) == {}
    catalog.write(pa.table({"item_id": ["a", "b"], "title": ["A", None], "category": ["x", "y"]}), s)
    catalog.write(pa.table({"item_id": ["c"], "title": ["C"], "category": [None]}), s)
    assert catalog.read(s) == {"c": ("C", None)}


@pytest.mark.parametrize("ids", [["a", "a"], ["a", None]])
def test_bad_ids_are_refused(tmp_path, ids):
    with pytest.raises(ValueError, match="item"):
        catalog.write(
            pa.table({"item_id": ids, "title": ["A", "B"], "category": ["x", "y"]}), Settings(state_dir=tmp_path)
        )


def test_shipped_catalogues(tmp_path, monkeypatch):
    ml = catalog.movielens()
    assert ml.num_rows == N_ITEMS and ml.column("title")[0].as_py().startswith("Toy Story")
    syn = catalog.synthetic(n_items=50, n_categories=5)
    assert syn.num_rows == 50 and len(set(syn.column("category").to_pylist())) == 5
    monkeypatch.setenv("RECSYS_STATE_DIR", str(tmp_path))
    from recsys.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["catalog", "synthetic", "--items", "30", "--categories", "3"])
        assert result.exit_code == 0, result.output
        assert len(catalog.read(get_settings())) == 30
    finally:
        get_settings.cache_clear()
