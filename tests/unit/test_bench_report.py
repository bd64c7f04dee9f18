"""bench/results/report.md, the page the README and docs link for every number, is exactly what bench/report.py
renders from bench/results/latest.json."""

import json

from bench import report
from recsys.settings import PROJECT_ROOT


def test_the_committed_report_is_generated_from_the_results_file():
    results = json.loads((PROJECT_ROOT / "bench" / "results" / "latest.json").read_text())
    assert report.REPORT.read_text() == report.HEADER + report.render(results), (
        "run `make bench` (or bench.report.write) to regenerate"
    )


def test_write_renders_the_results_into_report_md(tmp_path):
    results = json.loads((PROJECT_ROOT / "bench" / "results" / "latest.json").read_text())
    path = report.write(results, tmp_path)
    assert path == tmp_path / "report.md" and path.read_text() == report.HEADER + report.render(results)
