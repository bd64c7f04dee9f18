"""Every endpoint of the real server fuzzed from its own OpenAPI schema by `schemathesis run --checks all`: paths,
query strings and bodies generated from the schema and beyond it (negative cases), its boundary values, and
sequences of calls; with the token (and, for the protected endpoints, without: `ignored_auth`). Every check must pass:
no 5xx, answers (422s included) as the schema says, schema-valid requests accepted and schema-violating ones refused
(the document says what the API accepts), and every 4xx carries a readable `detail` sentence (`fuzz_checks.py`). The
server is still up afterwards."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serving_stack import TOKEN, get, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

HERE = Path(__file__).parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = start_stack(tmp_path_factory.mktemp("fuzz"), n_events=2_000)
    yield st
    stop_stack(st)


def test_every_operation_passes_every_schemathesis_check(stack, tmp_path):
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "fuzz_checks",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{stack.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--workers",
            "1",
            "--continue-on-failure",
            "-H",
            f"Authorization: Bearer {TOKEN}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    print(out[-2000:])
    assert run.returncode == 0, out[-12_000:]
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested.group(1)) >= 14 and "failures" not in out.split("SUMMARY")[-1], out[-3000:]


def test_the_server_is_up_after_the_fuzzing(stack):
    assert stack.procs["serving"].poll() is None
    assert get(stack, "/health") == (200, {"status": "ok"})
    status, ready = get(stack, "/ready")
    assert status == 200 and ready["ready"]
    assert get(stack, "/recommend/user-1?k=3")[0] == 200
