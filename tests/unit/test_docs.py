"""The README is a short front door, and every relative link in it and in docs/ leads somewhere that exists."""

import re
from pathlib import Path

import pytest

from recsys.settings import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert broken == []


def test_the_readme_is_a_front_door():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for must in ("make demo", "make test", "curl", "## Where to read on", "bench/results/report.md"):
        assert must in readme
    # Each topic page in docs/ is reachable from it.
    linked = {Path(t.partition("#")[0]).name for t in relative_links(PROJECT_ROOT / "README.md")}
    assert {p.name for p in PAGES[1:]} <= linked
