"""Every endpoint of the real server fuzzed from its own OpenAPI schema (schemathesis): paths, query strings and
bodies generated from the schema and beyond it (negative cases), with and without the token. No answer is a 5xx,
every 4xx carries a readable `detail` sentence, and the server is still up afterwards."""

import contextlib
import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from serving_stack import TOKEN, get, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

# POST /admin/forget really erases (a FORGET marker, then a background wait for the archiver): a few with the token.
FORGETS_WITH_TOKEN = itertools.count()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = start_stack(tmp_path_factory.mktemp("fuzz"), n_events=2_000)
    yield st
    stop_stack(st)


@pytest.fixture(scope="module")
def api_schema(stack):
    return schemathesis.openapi.from_url(f"{stack.url}/openapi.json")


def check_answer(response, case) -> None:
    status = response.status_code
    where = f"{case.method} {case.formatted_path} {case.query or ''} -> {status}: {response.text[:300]}"
    assert status < 500, where
    if 400 <= status < 500:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
        assert isinstance(detail, str) and len(detail.strip()) >= 5, where  # a sentence, not a list of dicts
        assert "\\x00" not in detail and "Traceback" not in detail, where


def fuzzer(stack, strategy, label: str, calls: dict[str, int]):
    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case) -> None:
        with_token = case.path != "/admin/forget/{user_id}" or next(FORGETS_WITH_TOKEN) < 3
        for headers in ({"Authorization": f"Bearer {TOKEN}"} if with_token else {}, {}):
            check_answer(case.call(base_url=stack.url, headers=headers, timeout=30), case)
            calls[label] = calls.get(label, 0) + 1

    return fuzz


def test_every_operation_answers_without_a_5xx_and_with_a_readable_reason(stack, api_schema):
    # (schemathesis' own pytest plugin does not run under this pytest; its strategies drive hypothesis directly)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 14, [op.label for op in operations]
    calls: dict[str, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Unsatisfiable: no invalid input can be built for this operation (e.g. it has no parameters).
            with contextlib.suppress(Unsatisfiable):
                fuzzer(stack, operation.as_strategy(generation_mode=mode), operation.label, calls)()
    print("fuzzed calls per operation:", calls)
    assert all(calls.get(op.label, 0) >= 2 for op in operations), calls


def test_the_server_is_up_after_the_fuzzing(stack):
    assert stack.procs["serving"].poll() is None
    assert get(stack, "/health") == (200, {"status": "ok"})
    status, ready = get(stack, "/ready")
    assert status == 200 and ready["ready"]
    assert get(stack, "/recommend/user-1?k=3")[0] == 200
