"""The suite can be collected in one run: pytest imports test modules by basename (no packages under tests/), so two
files of one name in different folders make the second fail to import."""

from collections import Counter

from recsys.settings import PROJECT_ROOT


def test_every_test_module_has_a_basename_of_its_own():
    names = Counter(p.name for p in (PROJECT_ROOT / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
