"""The demo storefront in a real headless Chromium against the whole local stack: a click on "buy"
goes through POST /events, Kafka and the speed layer, and comes back as the page's recommendations."""

import re
import time
import uuid

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from serving_stack import TOKEN, get, start_stack, stop_stack

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Headless, and nothing that would reach for the network (the machine has none).
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # The hybrid: what the storefront is for is showing the list react to a click.
    st = start_stack(tmp_path_factory.mktemp("storefront"), model="hybrid")
    yield st
    stop_stack(st)


@pytest.fixture
def browser(tmp_path):
    # Explicit binary and driver paths: Selenium Manager would otherwise try to download a browser.
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def shown_recommendations(driver) -> list[str]:
    return [r.get_attribute("data-item-id") for r in driver.find_elements(By.CSS_SELECTOR, "#recommendations .rec")]


def open_as_new_visitor(driver, url: str) -> str:
    """Open the page, pick "a new visitor", wait for the grid and that visitor's panel; the raw id picked."""
    driver.get(url)
    wait = WebDriverWait(driver, 10)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#products .product")) == 24)
    Select(driver.find_element(By.ID, "user")).select_by_visible_text("a new visitor")
    raw = driver.find_element(By.ID, "user-id").get_attribute("value")
    assert re.fullmatch(r"visitor-[0-9a-f]+", raw)
    wait.until(lambda d: d.find_element(By.ID, "recommendations").get_attribute("data-user") == raw)
    return raw


def test_buying_a_product_turns_the_panel_into_speed_recommendations(stack, browser, tmp_path):
    raw = open_as_new_visitor(browser, f"{stack.url}/storefront#token={TOKEN}")
    assert not browser.find_element(By.ID, "token-box").is_displayed()  # the fragment's token is used
    assert text(browser, "source") == "popular" and text(browser, "model-version") == "m20260101T000000000000"
    assert len(shown_recommendations(browser)) == 8
    cards = browser.find_elements(By.CSS_SELECTOR, "#products .product")
    assert cards[0].find_element(By.CSS_SELECTOR, ".title").text  # titles come from the catalogue
    bought = cards[0].get_attribute("data-item-id")

    cards[0].find_element(By.CSS_SELECTOR, "button[data-event-type=purchase]").click()
    WebDriverWait(browser, 10).until(lambda d: text(d, "source") == "speed")
    browser.save_screenshot(str(tmp_path / "storefront.png"))

    shown = shown_recommendations(browser)
    assert len(shown) == 8 and bought not in shown  # purchases are left out by default
    badges = browser.find_elements(By.CSS_SELECTOR, "#recommendations .rec.speed .badge")
    assert badges and badges[0].text == "new from your clicks"
    assert re.fullmatch(r"updated \d+ ms after your click: \d+ of 8 new", text(browser, "refresh-ms"))
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")

    status, api = get(stack, f"/recommend/{raw}?k=8")
    assert status == 200 and api["source"] == "speed"
    assert shown == [i["item_id"] for i in api["items"]]  # the page shows exactly what the API answers

    # Clicking a recommendation explains it by the visitor's history: the one purchase.
    browser.find_element(By.CSS_SELECTOR, "#recommendations .rec").click()
    WebDriverWait(browser, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#because li"))
    assert [li.get_attribute("data-item-id") for li in browser.find_elements(By.CSS_SELECTOR, "#because li")] == [
        bought
    ]


def test_a_long_history_shoppers_list_visibly_changes_after_one_view(stack, browser):
    browser.get(f"{stack.url}/storefront#token={TOKEN}")
    wait = WebDriverWait(browser, 15)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#products .product")) == 24)
    picker = Select(browser.find_element(By.ID, "user"))
    wait.until(lambda d: picker.options[0].get_attribute("value").startswith("u_"))  # real shoppers, by pseudonym
    shopper = picker.options[0].get_attribute("value")
    wait.until(lambda d: d.find_element(By.ID, "recommendations").get_attribute("data-user") == shopper)
    assert text(browser, "source") == "batch"
    before = shown_recommendations(browser)
    why = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#recommendations .rec .why")]
    assert why and all(w.startswith("because you ") for w in why)  # explanations in words

    # View one product this shopper is not being recommended.
    card = next(
        c
        for c in browser.find_elements(By.CSS_SELECTOR, "#products .product")
        if c.get_attribute("data-item-id") not in before
    )
    viewed = card.get_attribute("data-item-id")
    card.find_element(By.CSS_SELECTOR, "button[data-event-type=view]").click()
    wait.until(lambda d: text(d, "source") == "speed")
    after = shown_recommendations(browser)
    changed = browser.find_elements(By.CSS_SELECTOR, "#recommendations .rec.changed")
    assert viewed not in after  # just viewed: not recommended again for a while
    assert len(set(after) - set(before)) == len(changed) >= 1, (before, after)
    new = int(re.search(r"(\d+) of 8 new", text(browser, "refresh-ms")).group(1))
    assert new == len(changed)
    # Switching shoppers clears the previous one's highlighted cards.
    picker.select_by_index(1)
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#products .product.done"))


def test_without_the_token_a_click_says_so_and_produces_nothing(stack, browser):
    browser.get(f"{stack.url}/storefront")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#products .product"))
    assert browser.find_element(By.ID, "token-box").is_displayed()  # asks for the token
    raw = f"visitor-{uuid.uuid4().hex[:12]}"
    box = browser.find_element(By.ID, "user-id")
    box.clear()
    box.send_keys(raw + Keys.ENTER)
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "recommendations").get_attribute("data-user") == raw
    )
    assert text(browser, "source") == "popular"

    browser.find_element(By.CSS_SELECTOR, "#products .product button[data-event-type=purchase]").click()
    WebDriverWait(browser, 10).until(lambda d: "401" in text(d, "status"))
    assert "token" in text(browser, "status")
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    time.sleep(1.5)  # long enough for the speed layer to have applied an event, had one been produced
    status, api = get(stack, f"/recommend/{raw}?k=8")
    assert status == 200 and api["source"] == "popular"
    assert text(browser, "source") == "popular"
