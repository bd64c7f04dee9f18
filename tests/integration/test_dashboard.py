"""The operator's dashboard in a real headless Chromium against the whole local stack (broker, speed layer,
serving): the registry's versions with their NDCG and the popularity baseline, the served one, a rejected
candidate's reason; live figures from Prometheus metrics; a user's events and explained recommendations; an item."""

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serving_stack import TOKEN, call, get, start_stack, stop_stack, wait_for
from test_storefront import browser  # noqa: F401  (the fixture)

from jobs.archiver import EVENTS, IMPRESSIONS, Archiver
from jobs.common import record_in_registry

pytestmark = pytest.mark.integration
SERVED = "m20260101T000000000000"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, free_port):
    st = start_stack(tmp_path_factory.mktemp("dashboard"), speed_metrics_port=free_port())
    s = st.s
    # The registry as a night of the DAG leaves it: an older model, then tonight's candidates.
    record_in_registry(
        "m20251231T000000000000",
        "evaluated",
        engine="implicit_als",
        silver_version=1,
        path="x",
        metrics={"model": {"ndcg@10": 0.18}, "popularity": {"ndcg@10": 0.11}},
        settings=s,
    )
    record_in_registry(
        "m20251231T000000000000",
        "published",
        engine="implicit_als",
        silver_version=1,
        path="x",
        metrics={"ndcg@10": 0.18},
        reason="ndcg@10 0.1800 vs popularity 0.1100",
        settings=s,
    )
    for version, engine, ndcg in (
        (SERVED, "implicit_als", 0.21),
        ("m20260101T000000000001-ease", "ease", 0.19),
        ("m20260101T000000000002-bad", "spark_als", 0.09),
    ):
        record_in_registry(
            version,
            "evaluated",
            engine=engine,
            silver_version=2,
            path="x",
            metrics={"model": {"ndcg@10": ndcg}, "popularity": {"ndcg@10": 0.12}},
            settings=s,
        )
    record_in_registry(
        "m20260101T000000000001-ease",
        "not_chosen",
        engine="ease",
        silver_version=2,
        path="x",
        metrics={"ndcg@10": 0.19},
        reason="not chosen: ndcg@10 0.1900 < 0.2100",
        settings=s,
    )
    record_in_registry(
        "m20260101T000000000002-bad",
        "rejected",
        engine="spark_als",
        silver_version=2,
        path="x",
        metrics={"ndcg@10": 0.09},
        reason="ndcg@10 0.0900 < 1.1 x popularity 0.1200",
        settings=s,
    )
    record_in_registry(
        SERVED,
        "published",
        engine="implicit_als",
        silver_version=2,
        path="x",
        metrics={"ndcg@10": 0.21},
        reason="ndcg@10 0.2100 vs popularity 0.1200",
        settings=s,
    )
    yield st
    stop_stack(st)


def test_the_ops_endpoints_read_the_registry_and_the_metrics(stack):
    status, reg = get(stack, "/ops/registry")
    assert status == 200 and reg["served"] == SERVED
    by = {v["model_version"]: v for v in reg["versions"]}
    assert by[SERVED]["status"] == "published" and by[SERVED]["served"]
    assert by[SERVED]["metric"] == 0.21 and by[SERVED]["popularity"] == 0.12
    assert by["m20260101T000000000002-bad"]["status"] == "rejected"
    assert "popularity" in by["m20260101T000000000002-bad"]["reason"]
    assert [h["status"] for h in by[SERVED]["history"]] == ["evaluated", "published"]
    status, live = get(stack, "/ops/live")
    assert status == 200 and live["speed_error"] is None and live["speed"]["lag"] is not None
    assert call("GET", stack.url + "/ops/users/user-1")[0] == 401  # personal data: needs the token


def test_the_dashboard_shows_models_live_figures_a_user_and_an_item(stack, browser, tmp_path):  # noqa: F811
    raw = "user-3"
    item = stack.events[0].item_id
    assert (
        call("POST", stack.url + "/events", {"user_id": raw, "item_id": item, "event_type": "purchase"}, token=TOKEN)[0]
        == 202
    )
    wait_for(lambda: get(stack, f"/recommend/{raw}")[1]["source"] == "speed")
    answer = get(stack, f"/recommend/{raw}")[1]  # clicked: attributed to its list by its request id
    click = {"user_id": raw, "item_id": answer["items"][0]["item_id"], "event_type": "view"}
    assert call("POST", stack.url + "/events", {**click, "request_id": answer["request_id"]}, token=TOKEN)[0] == 202
    for stream in (EVENTS, IMPRESSIONS):
        archiver = Archiver(stack.s, stream=stream)
        archiver.run(until_caught_up=True)
        archiver.close()

    browser.get(f"{stack.url}/dashboard#token={TOKEN}")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "served-version").text == SERVED)
    # The chart: one point per version with a metric, coloured by status, the served one ringed; the baseline.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart circle.version")) == 4)
    statuses = {
        c.get_attribute("data-version"): c.get_attribute("data-status")
        for c in browser.find_elements(By.CSS_SELECTOR, "#chart circle.version")
    }
    assert statuses[SERVED] == "published" and statuses["m20260101T000000000002-bad"] == "rejected"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart circle.served")) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect.baseline")) == 4
    rejected = browser.find_element(By.CSS_SELECTOR, '#versions tr[data-status="rejected"]')
    assert "popularity" in rejected.text  # why it was rejected
    assert "served" in browser.find_element(By.CSS_SELECTOR, f'#versions tr[data-version="{SERVED}"]').text

    # Answers shown (the impressions table joined with bronze): the one click, under the served version.
    shown = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#attribution-totals tr[data-version="{SERVED}"]'))
    cells = [td.text for td in shown[0].find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "champion" and int(cells[2].replace(",", "")) >= 2 and cells[3] == "1" and "%" in cells[4]
    assert browser.find_elements(By.CSS_SELECTOR, "#attribution-hours tr[data-hour]")

    # Live figures: the speed layer's lag and event counter, answers by source (from /recommend calls above).
    wait.until(lambda d: d.find_element(By.ID, "lag").text not in ("–", ""))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#sources rect[data-source="speed"]'))
    wait.until(lambda d: d.find_element(By.ID, "events-per-min").text not in ("–", ""))  # two readings, 5 s apart
    assert "ms" in browser.find_element(By.ID, "update-delay").text

    # A user: their purchase since the cut-off, and recommendations with source and explanation.
    browser.find_element(By.ID, "user-id").send_keys(raw)
    browser.find_element(By.CSS_SELECTOR, "#user-form button").click()
    wait.until(lambda d: d.find_element(By.ID, "user-source").text == "speed")
    since = browser.find_element(By.ID, "user-since").text
    assert "purchase" in since and item in since
    assert any("because you" in r.text for r in browser.find_elements(By.CSS_SELECTOR, "#user-recs tr.rec"))

    # An item (by clicking one of the user's recommendations): attributes, counts, similar items.
    browser.find_element(By.CSS_SELECTOR, "#user-recs a[data-item-id]").click()
    wait.until(lambda d: d.find_element(By.ID, "item-view").get_attribute("data-item"))
    assert "category" in browser.find_element(By.ID, "item-attributes").text
    assert browser.find_elements(By.CSS_SELECTOR, "#item-similar a[data-item-id]")
    assert (
        "purchase" in browser.find_element(By.ID, "item-counts").text
        or "view" in browser.find_element(By.ID, "item-counts").text
    )
    browser.save_screenshot(str(tmp_path / "dashboard.png"))

    # Self-contained: every resource the page loaded came from the service itself.
    origins = browser.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) <= {stack.url}, origins
    assert browser.find_element(By.ID, "user-error").get_attribute("hidden") is not None


def test_the_docs_pages_render_from_the_service(stack, browser):  # noqa: F811
    browser.get(f"{stack.url}/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    assert browser.execute_script("return typeof SwaggerUIBundle") == "function"
    browser.get(f"{stack.url}/redoc")
    WebDriverWait(browser, 30).until(lambda d: "recommend" in d.find_element(By.TAG_NAME, "body").text.lower())
    origins = browser.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) <= {stack.url}, origins
    time.sleep(0)
