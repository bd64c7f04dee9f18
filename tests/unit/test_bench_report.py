"""The README's Results section is exactly what bench/report.py renders from bench/results/latest.json."""

import json

from bench import report
from recsys.settings import PROJECT_ROOT


def test_readme_results_are_generated_from_the_results_file():
    results = json.loads((PROJECT_ROOT / "bench" / "results" / "latest.json").read_text())
    assert report.readme_block() == report.render(results), "run `make bench` (or bench.report.write) to regenerate"


def test_replacing_the_block_keeps_the_rest(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- results: generated -->\nold\n<!-- /results -->\nafter\n")
    report.replace_readme_block("new\n", readme)
    assert readme.read_text() == "# x\n\nbefore\n<!-- results: generated -->\nnew\n<!-- /results -->\nafter\n"
